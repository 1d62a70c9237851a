"""A hard query budget around any oracle, and the log of every answer it let through.

Attacks (:meth:`~modelheist.attacks.base.ExtractionAttack.run`) and verifiers
(:meth:`~modelheist.ownership.base.OwnershipScheme.verify`) both spend queries through a
:class:`BudgetedOracle`: it refuses a batch that would exceed its limit before sending it, and
keeps every input sent with the answer it got (:class:`QueryLog`), so that what was bought is
never lost when the API stops answering.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelheist.errors import BudgetExceededError, ModelheistError
from modelheist.oracle.answer import Answer, concatenate
from modelheist.oracle.base import ForwardingOracle, Oracle


@dataclass
class QueryLog:
    """Every input sent and the answer it got, in order."""

    inputs: list[np.ndarray] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    def record(self, x: np.ndarray, answer: Answer) -> None:
        text = x.dtype == object  # a text model's strings
        self.inputs.append(np.array(x, dtype=object if text else np.float32, copy=True))
        self.answers.append(answer)

    def __len__(self) -> int:
        return sum(len(x) for x in self.inputs)

    def joined(self) -> tuple[np.ndarray, Answer]:
        if not self.inputs:
            raise ModelheistError("the query log is empty")
        return np.concatenate(self.inputs), concatenate(self.answers)

    def save(self, path: Path) -> Path:
        """Write the log as an ``.npz`` of plain arrays (inputs, a text model's as unicode
        strings; labels and, where the API returned them, probabilities, top_k,
        top_k_probabilities, leaves, images); no pickles."""
        x, answer = self.joined()
        if x.dtype == object:  # strings as a fixed-width unicode array: no pickle
            x = np.array([str(t) for t in x], dtype=str)
        arrays = {"inputs": x, "labels": answer.labels}
        for name in ("probabilities", "top_k", "top_k_probabilities", "leaves", "images"):
            value = getattr(answer, name)
            if value is not None:
                arrays[name] = np.asarray(value)
        np.savez_compressed(path, **arrays)
        return path


class BudgetedOracle(ForwardingOracle):
    """Wraps an oracle so that its user can never spend more than ``limit`` queries; every
    answer is kept in :attr:`log` unless ``keep_log`` is False (a verifier's many queries)."""

    def __init__(self, inner: Oracle, limit: int, keep_log: bool = True):
        super().__init__(inner)
        self.limit = limit
        self.spent = 0
        self.keep_log = keep_log
        self.log = QueryLog()

    @property
    def budget(self) -> int:
        return self.limit

    @property
    def remaining(self) -> int:
        """Queries left: the tighter of this limit and the wrapped oracle's own budget."""
        inner_left = self.inner.remaining
        own_left = self.limit - self.spent
        return own_left if inner_left is None else min(own_left, inner_left)

    @property
    def queries_used(self) -> int:
        return self.spent

    def _query_batch(self, x: np.ndarray) -> Answer:
        if self.spent + len(x) > self.limit:
            raise BudgetExceededError(
                f"budget of {self.limit} queries would be exceeded "
                f"({self.spent} spent, {len(x)} asked)"
            )
        answer = self.inner._query_batch(x)
        self.spent += len(x)
        if self.keep_log:
            self.log.record(x, answer)
        return answer
