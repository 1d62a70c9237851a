"""Detectors against query streams: when does a detector first raise an alarm about a client?

A stream is the ordered inputs one client sends: a benign one (natural images of the task, in
order, shuffled, sorted by class) or an attack's, recorded while the attack ran against the
undefended model (:func:`record_attack`, through the ``history`` stage, so the attack sees the
answers it would see anyway). :func:`replay` sends a stream through a service whose pipeline
holds the detectors, ``batch`` inputs per request, and reports the number of queries answered
when the first alarm came (None: never) and the detector's statistic along the way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService, Receipt
from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack
from modelheist.defenses.base import Defense
from modelheist.defenses.history import InputHistory
from modelheist.errors import ModelheistError
from modelheist.models.classifier import Classifier


@dataclass
class StreamResult:
    """One stream replayed through one pipeline: the queries sent, the query count at the first
    alarm (None: no alarm), each alarm's stage and statistic, and the statistic a stage left in
    its state (``values["statistic"]``) after each request, as (queries, statistic) pairs."""

    queries: int
    first_alarm: int | None
    alarms: list[dict[str, Any]] = field(default_factory=list)
    trace: list[tuple[int, float]] = field(default_factory=list)


def replay(
    model: Classifier,
    detectors: Sequence[Defense],
    stream: np.ndarray,
    batch: int = 1,
    client: str = "stream",
) -> StreamResult:
    """Send ``stream`` through a fresh in-memory service with ``detectors``, ``batch`` inputs
    per request; see the module docstring."""
    if batch < 1:
        raise ModelheistError(f"batch must be >= 1, got {batch}")
    if len(stream) == 0:
        raise ModelheistError("an empty stream has nothing to replay")
    service = PredictionService(model, list(detectors))
    service.register_client(client)
    result = StreamResult(queries=0, first_alarm=None)
    for start in range(0, len(stream), batch):
        chunk = service.validate(stream[start : start + batch])
        receipt = service.answer_many([(client, chunk)])[0]
        if isinstance(receipt, Exception):
            raise receipt
        assert isinstance(receipt, Receipt)
        result.queries = receipt.queries_used
        for alarm in receipt.alarms:
            if result.first_alarm is None:
                result.first_alarm = receipt.queries_used
            result.alarms.append({"query": receipt.queries_used, **alarm.to_json()})
        statistic = _statistic(service, client)
        if statistic is not None:
            result.trace.append((receipt.queries_used, statistic))
    return result


def _statistic(service: PredictionService, client: str) -> float | None:
    for state in service.client(client).stages:
        value = state.values.get("statistic")
        if isinstance(value, int | float):
            return float(value)
    return None


def record_attack(
    model: Classifier,
    attack: ExtractionAttack,
    knowledge: AttackerKnowledge,
    stages: Sequence[Defense] = (),
) -> np.ndarray:
    """The inputs ``attack`` sends, in order, when it runs against ``model`` behind ``stages``
    (e.g. an output granularity), within ``knowledge.budget`` queries."""
    history = InputHistory()
    service = PredictionService(model, [history, *stages])
    oracle = LocalOracle.for_new_client(service, knowledge.budget)
    attack.run(oracle, knowledge)
    recorded = service.client(oracle.client_id).stages[0].array("inputs")
    if recorded is None:
        raise ModelheistError(f"{attack.name} sent no query")
    return np.array(recorded)


def benign_streams(
    x: np.ndarray, labels: np.ndarray, seed: int
) -> dict[str, Callable[[], np.ndarray]]:
    """Natural streams from ``x``: in the order given, shuffled, and sorted by class (a slowly
    drifting client, the hardest benign case for a distance test)."""
    rng = np.random.default_rng(seed)
    return {
        "in order": lambda: x,
        "shuffled": lambda: x[rng.permutation(len(x))],
        "sorted by class": lambda: x[np.argsort(labels, kind="stable")],
    }
