"""Detectors against query streams: when does a detector first raise an alarm about a client?

A stream is the ordered inputs one client sends: a benign one (natural images of the task, in
order, shuffled, sorted by class) or an attack's, recorded while the attack ran against the
undefended model (:func:`record_attack`, from the attack's own query log), or read from the
``query_log.npz`` a real attack run wrote (:func:`load_query_log`). :func:`replay` sends a stream through a service whose pipeline
holds the detectors, ``batch`` inputs per request, and reports the number of queries answered
when the first alarm came (None: never) and the detector's statistic along the way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService, Receipt
from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack
from modelheist.defenses.base import Defense
from modelheist.errors import BlockedError, ModelheistError
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
        if isinstance(receipt, BlockedError):
            break  # a detector with policy=block refused the client: the stream ends here
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


def alarms_below(trace: Sequence[tuple[int, float]], delta: float) -> tuple[int | None, int]:
    """For a statistic that alarms below ``delta`` (PRADA's W): the query count of the first
    alarm (None: never) and the number of crossings below ``delta``, read from a replay's
    ``trace``. Under the flag policy PRADA's state does not depend on delta, so one replay
    answers for every delta; exact for a replay of one query per request (the trace is read
    after each request, so a larger batch could hide a test between two readings)."""
    first, crossings, below = None, 0, False
    for queries, statistic in trace:
        now = statistic < delta
        if now and not below:
            crossings += 1
            first = queries if first is None else first
        below = now
    return first, crossings


def _statistic(service: PredictionService, client: str) -> float | None:
    """The statistic of the pipeline's first detector that keeps one (PRADA's W, an OOD
    detector's flagged share); None while it has none."""
    for stage, state in zip(service.defenses, service.client(client).stages, strict=False):
        if "statistic" in stage.initial_values():
            value = state.values.get("statistic")
            return float(value) if isinstance(value, int | float) else None
    return None


def record_attack(
    model: Classifier,
    attack: ExtractionAttack,
    knowledge: AttackerKnowledge,
    stages: Sequence[Defense] = (),
) -> np.ndarray:
    """The inputs ``attack`` sends, in order, when it runs against ``model`` behind ``stages``
    (e.g. an output granularity), within ``knowledge.budget`` queries."""
    service = PredictionService(model, list(stages))
    oracle = LocalOracle.for_new_client(service, knowledge.budget)
    result = attack.run(oracle, knowledge)
    if result.log is None or not len(result.log):
        raise ModelheistError(f"{attack.name} sent no query")
    return result.log.joined()[0]


def load_query_log(path: str | Path) -> np.ndarray:
    """The inputs of a query log written by ``modelheist attack --out`` (``query_log.npz``,
    plain arrays, read without pickles)."""
    try:
        with np.load(path, allow_pickle=False) as log:
            if log["inputs"].dtype.kind == "U":
                raise ModelheistError(f"{path} holds a text model's queries; detectors take arrays")
            inputs = np.asarray(log["inputs"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelheistError(f"{path} is not a query log with inputs: {exc}") from None
    if len(inputs) == 0:
        raise ModelheistError(f"{path} holds no queries")
    return inputs


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


def interleaved(attack: np.ndarray, natural: np.ndarray, natural_per_attack: int = 1) -> np.ndarray:
    """An evasive stream: each attack query followed by ``natural_per_attack`` natural ones (as
    long as both last), to pull the client's statistics towards a regular user's."""
    rows, j = [], 0
    for x in attack:
        rows.append(x)
        for _ in range(natural_per_attack):
            if j < len(natural):
                rows.append(natural[j])
                j += 1
    return np.stack(rows)


def replay_accounts(
    model: Classifier,
    detectors_for: Callable[[], Sequence[Defense]],
    stream: np.ndarray,
    accounts: int,
    batch: int = 1,
) -> tuple[int | None, list[int | None]]:
    """An attacker spreading ``stream`` round-robin over ``accounts`` clients, each watched on
    its own (per-client detection cannot see more): the attack's query count when the first
    account is flagged (None: never), and each account's own first alarm."""
    firsts = []
    for i in range(accounts):
        result = replay(model, detectors_for(), stream[i::accounts], batch, client=f"account{i}")
        firsts.append(result.first_alarm)
    overall = [(q - 1) * accounts + i + 1 for i, q in enumerate(firsts) if q is not None]
    return (min(overall) if overall else None), firsts


#: Attack streams ``detect-eval`` can record by name (each within the given budget).
ATTACK_STREAMS = ("jbda", "t-rnd", "n-ifgsm", "uniform", "knockoff")
#: Benign streams ``detect-eval`` builds from the victim's own data splits.
BENIGN_STREAMS = ("evaluation", "evaluation-shuffled", "evaluation-sorted", "validation")


def named_stream(name: str, victim: Classifier, data: Any, budget: int, seed: int) -> np.ndarray:
    """The stream ``name`` (one of :data:`BENIGN_STREAMS` or :data:`ATTACK_STREAMS`) against
    ``victim`` trained on ``data``. Attack streams draw from the attacker's pool (``data.pool``):
    JBDA, T-RND and N I-FGSM run for real (PRADA's settings, 10 seeds per class);
    ``uniform`` is Tramèr et al.'s uniformly random inputs; ``knockoff`` is what a random
    Knockoff Nets client sends, a uniform draw without replacement from the pool."""
    rng = np.random.default_rng(seed)
    test, validation = data.test, data.validation
    benign = {
        "evaluation": lambda: test.x,
        "evaluation-shuffled": lambda: test.x[rng.permutation(len(test.x))],
        "evaluation-sorted": lambda: test.x[np.argsort(test.y, kind="stable")],
        "validation": lambda: validation.x if validation is not None else None,
    }
    if name in benign:
        stream = benign[name]()
        if stream is None or len(stream) == 0:
            raise ModelheistError(f"stream {name!r}: {data.name} has no such split")
        return stream
    if name == "uniform":
        low, high = victim.card.input_range or (float(data.pool.x.min()), float(data.pool.x.max()))
        return rng.uniform(low, high, (budget, *data.input_shape)).astype(np.float32)
    if name == "knockoff":
        pool = data.pool.x
        return pool[rng.choice(len(pool), min(budget, len(pool)), replace=False)]
    from modelheist.attacks.synthetic import (
        JacobianAugmentation,
        NonTargetedIfgsm,
        TargetedRandom,
    )

    synthetic = {
        "jbda": lambda: JacobianAugmentation(members=1),
        "t-rnd": lambda: TargetedRandom(members=1),
        "n-ifgsm": lambda: NonTargetedIfgsm(members=1),
    }
    if name not in synthetic:
        known = ", ".join((*BENIGN_STREAMS, *ATTACK_STREAMS))
        raise ModelheistError(f"unknown stream {name!r}; known: {known}")
    return record_attack(
        victim, synthetic[name](), AttackerKnowledge(data.pool.x, budget, seed=seed)
    )


def detection_markdown(document: dict[str, Any]) -> str:
    """The detect-eval table: one row per stream, the first alarm (query) or none."""
    lines = [
        f"# Detectors against query streams: {document['victim']}",
        "",
        f"Pipeline: `{' '.join(document['detectors'])}`; {document['batch']} queries per request.",
        "",
        "| stream | kind | queries | first alarm (query) | alarms | last statistic |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in document["streams"]:
        last = row["trace"][-1][1] if row["trace"] else None
        lines.append(
            f"| {row['stream']} | {row['kind']} | {row['queries']:,} "
            f"| {row['first_alarm'] if row['first_alarm'] is not None else 'none'} "
            f"| {len(row['alarms'])} | {'-' if last is None else f'{last:.4f}'} |"
        )
    return "\n".join(lines) + "\n"


def plot_statistics(document: dict[str, Any], path: Path) -> Path:
    """Each stream's detector statistic over its queries, benign solid, attacks dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in document["streams"]:
        if row["trace"]:
            queries, values = zip(*row["trace"], strict=True)
            style = "-" if row["kind"] == "benign" else "--"
            ax.plot(queries, values, style, label=row["stream"])
    ax.set_xlabel("queries")
    ax.set_ylabel("detector statistic")
    ax.set_xscale("log")
    ax.legend(fontsize=7)
    ax.set_title(" ".join(document["detectors"]), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
