"""Per-client defense state that grows with a client's history: is a commit O(new data)?

A `history` stage keeps one float32 vector per answered query (the 64 pixels of a digits
image) for one client. The client's history is grown to 1,000 and then to 100,000 vectors; at
each size the benchmark sends `--requests` single-input requests and records the median time of
the ledger commit (usage, stage state and audit record in one SQLite transaction) and of the
whole answer (validation, forward pass, stage, commit). Issue 9's target: the median commit time
at 100,000 stored vectors is within 2x of that at 1,000.

For contrast, the same history kept the way schema 1 kept all state, as a JSON document
rewritten at every commit (`json-values`), measured at 1,000 and 10,000 vectors.

Each run appends rows to benchmarks/results/state_scaling.jsonl (docs/benchmarks.md's table is
generated from them).

    python benchmarks/state_scaling.py [--requests 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from modelheist.api.ledger import Ledger
from modelheist.api.service import PredictionService
from modelheist.data.registry import load_dataset
from modelheist.defenses import Capabilities, Defense, InputHistory, register_defense
from modelheist.experiments.results import ResultsStore
from modelheist.models.training import TrainConfig, train_model

STORE = Path(__file__).resolve().parent / "results" / "state_scaling.jsonl"


class JsonHistory(Defense):
    """The contrast: every input kept in the JSON values, rewritten whole at each commit."""

    name: ClassVar[str] = "json-history"
    capabilities: ClassVar[Capabilities] = Capabilities(stateful=True)

    def initial_values(self) -> dict[str, object]:
        return {"inputs": []}

    def apply(self, context, inputs, answer, state):  # noqa: ANN001, ANN201
        state.values["inputs"].extend(
            np.asarray(inputs, np.float32).reshape(len(inputs), -1).tolist()
        )
        return answer

    def spec(self) -> str:
        return self.name


class TimedLedger(Ledger):
    """The real ledger, timing each commit."""

    commit_seconds: list[float] = []  # replaced by each measurement

    def commit(self, updates, records):  # noqa: ANN001, ANN201
        start = time.perf_counter()
        stale = super().commit(updates, records)
        self.commit_seconds.append(time.perf_counter() - start)
        return stale


def grow(service: PredictionService, x: np.ndarray, to: int, batch: int = 1000) -> None:
    """Answer the client's queries until its history holds ``to`` vectors (one per query)."""
    have = service.client("c").queries_used
    rng = np.random.default_rng(have)
    while have < to:
        n = min(batch, to - have)
        service.query("c", x[rng.integers(0, len(x), n)])
        have += n


def measure(
    service: PredictionService, ledger: TimedLedger, x: np.ndarray, requests: int, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    ledger.commit_seconds = []
    answers = []
    for _ in range(requests):
        start = time.perf_counter()
        service.query("c", x[rng.integers(0, len(x), 1)])
        answers.append(time.perf_counter() - start)
    return {
        "median_commit_ms": 1000 * statistics.median(ledger.commit_seconds),
        "median_answer_ms": 1000 * statistics.median(answers),
        "p90_commit_ms": 1000 * float(np.quantile(ledger.commit_seconds, 0.9)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    register_defense(JsonHistory)
    data = load_dataset("digits", seed=args.seed)
    model = train_model(data, "logreg", TrainConfig(seed=args.seed))
    x = np.concatenate([data.train.x, data.test.x, data.pool.x])
    store = ResultsStore(STORE)
    store.freeze_environment()
    plans = [("history", InputHistory(limit=10_000_000), (1_000, 100_000)),
             ("json-values", JsonHistory(), (1_000, 10_000))]  # fmt: skip
    for variant, stage, sizes in plans:
        with tempfile.TemporaryDirectory() as folder:
            ledger = TimedLedger.open(Path(folder))
            service = PredictionService(model, [stage], ledger=ledger)
            service.register_client("c")
            for size in sizes:
                grow(service, x, size)
                figures = measure(service, ledger, x, args.requests, args.seed)
                row = store.append(
                    {
                        "benchmark": "state_scaling",
                        "variant": variant,
                        "stored_vectors": size,
                        "vector_floats": int(np.prod(data.input_shape)),
                        "requests": args.requests,
                        "metrics": figures,
                        "queries_counted": service.client("c").queries_used,
                    },
                    seed=args.seed,
                )
                print(
                    f"{variant:>12} {size:>7} stored: commit {figures['median_commit_ms']:.3f} ms "
                    f"(p90 {figures['p90_commit_ms']:.3f}), answer "
                    f"{figures['median_answer_ms']:.3f} ms; queries {row['queries_counted']}"
                )
            ledger.close()


if __name__ == "__main__":
    main()
