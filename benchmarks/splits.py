"""The size of every registry dataset's splits: the owner's training data, the validation split,
the attacker's pool and the evaluation (test) split, as `load_dataset` cuts them by default.

The docs quote these sizes where a result depends on them (mnist5k's owner trains on its
training split; Knockoff's in-distribution stream is the attacker's pool); this script puts a
row behind each. Splitting is deterministic, and the sizes do not depend on the split seed
(seed 0 is recorded). Datasets not installed on the machine are skipped and named. Each run
appends one row per dataset to benchmarks/results/splits.jsonl.

    python benchmarks/splits.py [--datasets mnist5k,fashion-mnist,...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from modelheist.data import dataset_available, dataset_names, load_dataset
from modelheist.experiments.results import ResultsStore

STORE = Path(__file__).resolve().parent / "results" / "splits.jsonl"


def split_sizes(name: str, seed: int = 0) -> dict[str, int]:
    """The number of examples in each split of dataset ``name`` (default fractions)."""
    data = load_dataset(name, seed=seed)
    validation = data.validation
    return {
        "train": len(data.train.y),
        "validation": 0 if validation is None else len(validation.y),
        "pool": len(data.pool.y),
        "test": len(data.test.y),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    registered = [n for n in dataset_names() if ":" not in n]  # not "idx:<folder>" templates
    parser.add_argument("--datasets", default=",".join(registered))
    args = parser.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    if unknown := sorted(set(names) - set(registered)):
        raise SystemExit(f"unknown datasets: {', '.join(unknown)} (known: {', '.join(registered)})")
    console = Console(stderr=True)
    store = ResultsStore(STORE)
    store.freeze_environment()
    for name in names:
        if not dataset_available(name):
            console.print(f"{name}: not installed here, skipped")
            continue
        sizes = split_sizes(name)
        store.append(
            {"benchmark": "splits", "dataset": name, "queries_counted": 0, "metrics": sizes},
            seed=0,
        )
        console.print(f"{name}: {sizes}", highlight=False)


if __name__ == "__main__":
    main()
