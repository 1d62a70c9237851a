"""Verifying a DAWN watermark (Szyller et al., ACM MM '21, §4.3): does a suspect answer a
client's watermarked inputs with the wrong labels the API gave that client?

The API answered each watermarked input x with a label y_w = y + 1 + (h mod (C - 1)) (mod C),
h being 128 bits of HMAC(key, x) (:mod:`modelheist.defenses.dawn`). For any model that never
saw those answers, h is independent of what it predicts, so it matches y_w with probability
P(suspect != y) / (C - 1) <= 1 / (C - 1), whatever its accuracy: the number of matches among n
distinct watermarked inputs is stochastically at most Binomial(n, 1 / (C - 1)). The p-value is
that law's exact upper tail at the observed count (:func:`scipy.stats.binomtest`): a bound
proven from the construction rather than a chance rate assumed (1 / C would be too small) or
estimated. ``benchmarks/`` checks it against independently trained models.

Deviation from the paper, which declares a surrogate stolen when its watermark accuracy
exceeds a threshold chosen from the same binomial argument (confidence 1 - 2^-64): the p-value
itself is reported, and the decision is taken at the significance the verifier names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from rich.progress import Progress
from scipy.stats import binomtest

from modelheist.errors import ModelheistError
from modelheist.oracle import Oracle
from modelheist.ownership.base import (
    CannotVerify,
    Decision,
    Evidence,
    Finding,
    OwnershipScheme,
    check_suspect_fits,
)

#: Inputs sent to the suspect per request.
CHUNK = 1024


def tarone_screen(smallest_p_values: list[float], significance: float) -> tuple[int, list[bool]]:
    """Tarone's (1990) refinement of Bonferroni for tests that cannot all reach significance
    (a client with a handful of watermarks never can): the smallest m such that at most m
    tests could reach ``significance`` / m; those are tested at that level, the others are not
    run (they could not decide and would only dilute the correction). Returns (m, testable)."""
    for m in range(1, len(smallest_p_values) + 1):
        testable = [p <= significance / m for p in smallest_p_values]
        if sum(testable) <= m:
            return m, testable
    return len(smallest_p_values), [True] * len(smallest_p_values)


@dataclass
class DawnScheme(OwnershipScheme):
    """Test a suspect against one client's DAWN watermark set (distinct inputs, wrong labels)."""

    name: ClassVar[str] = "dawn"

    inputs: np.ndarray
    labels: np.ndarray
    num_classes: int
    client: str = ""

    @property
    def smallest_p_value(self) -> float:
        """The p-value if the suspect matched every watermark (the best this set can do)."""
        return (1.0 / max(self.num_classes - 1, 1)) ** len(self.labels)

    def _test(self, suspect: Oracle, progress: Progress | None) -> Finding:
        n = len(self.labels)
        if n == 0:
            raise CannotVerify(f"client {self.client!r} has no watermarked query to test with")
        if self.num_classes < 2:
            raise CannotVerify("a watermark needs at least 2 classes")
        check_suspect_fits(suspect, self.inputs.shape[1:], self.num_classes, "the watermark set's")
        low, high = suspect.input_range or (-np.inf, np.inf)
        inputs = np.clip(self.inputs, low, high).astype(np.float32)
        task = progress.add_task("dawn: query the suspect", total=n) if progress else None
        answered = []
        for start in range(0, n, CHUNK):
            answered.append(suspect.query(inputs[start : start + CHUNK]).labels)
            if progress is not None and task is not None:
                progress.advance(task, len(answered[-1]))
        matches = int((np.concatenate(answered) == self.labels).sum())
        chance = 1.0 / (self.num_classes - 1)
        test = binomtest(matches, n, chance, alternative="greater")
        return Finding(
            "watermark accuracy",
            matches / n,
            float(test.pvalue),
            {"client": self.client, "matches": matches, "watermarks": n, "chance_bound": chance},
            smallest_p_value=self.smallest_p_value,
        )


@dataclass(frozen=True)
class DawnVerdict:
    """A suspect tested against several clients' watermark sets: each testable set at
    ``significance`` / m (:func:`tarone_screen`), the suspect stolen when any set matches."""

    decision: Decision
    significance: float
    tests: int  # m: the Bonferroni divisor
    clients: dict[str, Evidence]
    not_tested: list[str]

    @property
    def per_set_significance(self) -> float:
        return self.significance / self.tests

    @property
    def matching(self) -> list[str]:
        """The clients whose watermark set the suspect matched."""
        return [name for name, e in self.clients.items() if e.decision == "stolen"]

    @property
    def queries(self) -> int:
        return sum(evidence.queries for evidence in self.clients.values())

    @property
    def p_value(self) -> float | None:
        """The smallest per-set p-value times m (capped at 1), None when no set was tested to
        the end: at most the significance exactly when some set matched. Tarone's m depends on
        the significance, so this adjusted value decides at that level only; it is not a
        p-value to read against other levels."""
        values = [e.p_value for e in self.clients.values() if e.p_value is not None]
        return min(1.0, self.tests * min(values)) if values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": DawnScheme.name,
            "decision": self.decision,
            "significance": self.significance,
            "per_client_significance": self.per_set_significance,
            "p_value": self.p_value,
            "matching_sets": self.matching,
            "not_tested": self.not_tested,
            "clients": {name: evidence.to_json() for name, evidence in self.clients.items()},
        }


def verify_sets(
    schemes: Sequence[DawnScheme],
    suspect: Oracle,
    significance: float = 0.01,
    budget: int | None = None,
    judged: Callable[[DawnScheme], OwnershipScheme] | None = None,
) -> DawnVerdict:
    """Test ``suspect`` against every client's set in ``schemes`` (see :class:`DawnVerdict`);
    sets too small ever to reach significance / m are not run. ``judged`` wraps each scheme
    (e.g. behind the judge's screen); ``budget`` is per set."""
    if not schemes:
        raise ModelheistError("no DAWN watermark set to test against")
    m, testable = tarone_screen([scheme.smallest_p_value for scheme in schemes], significance)
    clients, too_few = {}, []
    for scheme, tested in zip(schemes, testable, strict=True):
        if not tested:  # could never reach the corrected level: not run, not counted
            too_few.append(scheme.client)
            continue
        judge = judged(scheme) if judged is not None else scheme
        clients[scheme.client] = judge.verify(suspect, significance / m, budget)
    decisions = {evidence.decision for evidence in clients.values()}
    overall: Decision = (
        "stolen"
        if "stolen" in decisions
        else "cannot verify"
        if "cannot verify" in decisions or not clients
        else "not stolen"
    )
    return DawnVerdict(overall, significance, m, clients, too_few)
