"""PRADA's cost per query with a long history (issue 10's target: median added latency at most
1 ms per query with 100,000 queries in one client's history; memory per client stated).

A Fashion-MNIST CNN victim (the cached victim of examples/knockoff-fashion-mnist.toml, seed
given). One client's PRADA state is grown to each history size with natural images (every
Fashion-MNIST image, then the same images with seeded Gaussian noise, sigma 0.05, once those
run out), 500 per request; then 300 single-image requests are timed through the in-process
service, with PRADA and without it (same inputs, interleaved), and the median difference is
PRADA's added latency. Memory per client: the bytes of its PRADA state (growing sets,
distances) at that size. Rows go to benchmarks/results/prada_latency.jsonl.

    python benchmarks/prada_latency.py [--sizes 1000,10000,100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from modelheist.api.service import PredictionService
from modelheist.defenses.prada import Prada
from modelheist.experiments.results import ResultsStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_scenarios import fashion_mnist_victim  # noqa: E402

ROOT = Path(__file__).resolve().parent
STORE = ROOT / "results" / "prada_latency.jsonl"
TIMED = 300


def natural_stream(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    copies = [images[rng.permutation(len(images))]]
    while sum(len(c) for c in copies) < n + TIMED:
        noisy = images + rng.normal(0, 0.05, images.shape).astype(np.float32)
        copies.append(np.clip(noisy, 0, 1)[rng.permutation(len(images))])
    return np.concatenate(copies)[: n + TIMED]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console(stderr=True)
    store = ResultsStore(STORE)
    store.freeze_environment()
    data, victim = fashion_mnist_victim(args.seed)
    images = np.concatenate([data.train.x, data.validation.x, data.test.x, data.pool.x])
    for size in [int(s) for s in args.sizes.split(",")]:
        stream = natural_stream(images, size, args.seed)
        defended = PredictionService(victim, [Prada(delta=0.95)])
        plain = PredictionService(victim, [])
        for service in (defended, plain):
            service.register_client("c")
        start = time.perf_counter()
        for i in range(0, size, 500):
            defended.query("c", stream[i : min(i + 500, size)])
        grow_seconds = time.perf_counter() - start
        added = []
        for x in stream[size:]:
            one = x[None]
            t0 = time.perf_counter()
            defended.query("c", one)
            t1 = time.perf_counter()
            plain.query("c", one)
            t2 = time.perf_counter()
            added.append((t1 - t0) - (t2 - t1))
        state = defended.client("c").stages[0]
        memory = sum(state.array(name).nbytes for name in state.arrays())
        members = sum(state.rows(name) for name in state.arrays() if name.startswith("set"))
        metrics = {
            "history": size,
            "median_added_ms": 1000 * statistics.median(added),
            "p90_added_ms": 1000 * float(np.quantile(added, 0.9)),
            "state_bytes": memory,
            "growing_set_members": members,
            "grow_seconds_per_query": grow_seconds / size,
        }
        store.append(
            {
                "benchmark": "prada-latency",
                "victim": "fashion-mnist-cnn",
                "queries_counted": size + TIMED,
                "metrics": metrics,
            },
            seed=args.seed,
        )
        console.print(f"history {size}: {metrics}", highlight=False)


if __name__ == "__main__":
    main()
