"""``PredictionService``: a model behind an inference API (DESIGN.md, "The seams").

The service validates each query batch, enforces the client's budget, computes the model's
probabilities and passes them through the ordered defense pipeline (output granularity and any
other stages). It keeps per-client state (queries used, budget, each stage's state). The
in-process :class:`~modelheist.api.oracle.LocalOracle` and the HTTP server are both thin
transports over it, so a defense behaves the same everywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelheist.api.answer import Answer, OutputKind
from modelheist.defenses.base import Defense
from modelheist.errors import BudgetExceededError, InvalidQueryError, ModelheistError
from modelheist.models.classifier import Classifier


@dataclass
class ClientState:
    """What the service remembers about one client."""

    client_id: str
    budget: int | None
    queries_used: int = 0
    defense_state: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries_used


class PredictionService:
    """Model + defense pipeline + per-client state and budgets."""

    def __init__(
        self,
        model: Classifier,
        defenses: Sequence[Defense] = (),
        max_batch: int = 4096,
    ):
        self.model = model
        self.defenses = list(defenses)
        self.max_batch = max_batch
        self._clients: dict[str, ClientState] = {}
        self._lock = threading.Lock()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.model.card.input_shape)

    @property
    def classes(self) -> list[str]:
        return list(self.model.card.classes)

    @property
    def output_kind(self) -> OutputKind:
        """The granularity that leaves the pipeline (the last stage that sets one wins)."""
        kind: OutputKind = "probabilities"
        for stage in self.defenses:
            kind = stage.output_kind or kind
        return kind

    def register_client(self, client_id: str, budget: int | None = None) -> ClientState:
        """Create (or reset) a client with a query budget (None: unlimited)."""
        if budget is not None and budget < 1:
            raise ModelheistError(f"a client's budget must be at least 1 query, got {budget}")
        state = ClientState(
            client_id, budget, defense_state=[d.initial_state() for d in self.defenses]
        )
        with self._lock:
            self._clients[client_id] = state
        return state

    def client(self, client_id: str) -> ClientState:
        with self._lock:
            if client_id not in self._clients:
                raise ModelheistError(f"unknown client {client_id!r}")
            return self._clients[client_id]

    def validate(self, inputs: object) -> np.ndarray:
        """Return ``inputs`` as a float32 batch of the model's input shape, or raise."""
        try:
            x = np.asarray(inputs)
        except (ValueError, TypeError) as exc:
            raise InvalidQueryError(f"inputs are not a numeric array: {exc}") from None
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise InvalidQueryError(f"inputs must be numbers, got dtype {x.dtype}")
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise InvalidQueryError(
                f"inputs must have shape (n, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if len(x) == 0:
            raise InvalidQueryError("empty batch: send at least one input")
        if len(x) > self.max_batch:
            raise InvalidQueryError(
                f"batch of {len(x)} inputs exceeds the limit of {self.max_batch}"
            )
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise InvalidQueryError("inputs contain NaN or infinite values")
        return x

    def query(self, client_id: str, inputs: object) -> Answer:
        """Answer a batch for ``client_id``; a batch beyond the budget is refused whole."""
        x = self.validate(inputs)
        with self._lock:
            state = self._clients.get(client_id)
            if state is None:
                raise ModelheistError(f"unknown client {client_id!r}")
            remaining = state.remaining
            if remaining is not None and len(x) > remaining:
                raise BudgetExceededError(
                    f"query budget exhausted: {len(x)} queries asked, {remaining} of "
                    f"{state.budget} remaining"
                )
            state.queries_used += len(x)  # reserved before answering; refunded on failure
        try:
            probs = np.asarray(self.model.predict_proba(x), np.float64)
            answer = Answer(probs.argmax(axis=1), probs)
            for stage, stage_state in zip(self.defenses, state.defense_state, strict=True):
                answer = stage.apply(x, answer, stage_state)
        except BaseException:
            with self._lock:
                state.queries_used -= len(x)
            raise
        state.alarms.extend(f for f in answer.flags if f.startswith("alarm:"))
        return answer
