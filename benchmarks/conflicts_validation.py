"""Choosing the conflicts table's optimiser and learning rate on the validation split (issue
13; the choice then goes into benchmarks/conflicts.py's OPTIMISER, by hand, with this table
behind it).

The study trained every cell with SGD and momentum (one learning rate for all); the larger
clipping-norm relaxation only means larger steps under SGD (Adam divides the scale out). Per
setting (AdamW at the Trainer's default rate, SGD with momentum 0.9 at several rates): the
unprotected model and the DP-SGD model (epsilon 3, delta 1e-3, clipping 1.0) of
benchmarks/conflicts.py's training settings, each one's accuracy on the validation split (never
the test split). The choice: the largest mean of the two. Rows go to
benchmarks/results/conflicts-validation.jsonl.

    python benchmarks/conflicts_validation.py [--seeds 1] [--dataset fashion-mnist]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from modelheist.experiments.conflicts import ConflictsConfig, default_trigger_source, owner_data
from modelheist.experiments.results import ResultsStore
from modelheist.models.classifier import accuracy
from modelheist.models.privacy import DpSgd
from modelheist.models.training import train_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conflicts import RESULTS, SETTINGS  # noqa: E402

STORE = RESULTS / "conflicts-validation.jsonl"
#: (optimiser, learning rate, weight decay): AdamW as the Trainer's default; SGD with the
#: study's momentum 0.9 and weight decay 5e-4.
GRID = [("adamw", 2e-3, 1e-4)] + [("sgd", lr, 5e-4) for lr in (0.01, 0.03, 0.1, 0.3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--dataset", default="fashion-mnist")
    args = parser.parse_args()
    console = Console(stderr=True)
    store = ResultsStore(STORE)
    store.freeze_environment()
    done = {
        (r["seed"], r["optimizer"], r["lr"], r["weight_decay"])
        for r in store.rows()
        if r["dataset"] == args.dataset and r["training"] == SETTINGS
    }
    base = ConflictsConfig(
        dataset=args.dataset, trigger_source=default_trigger_source(args.dataset), **SETTINGS
    )
    for seed in range(args.seeds):
        for optimizer, lr, weight_decay in GRID:
            if (seed, optimizer, lr, weight_decay) in done:
                continue
            config = replace(base, seed=seed, optimizer=optimizer, lr=lr, weight_decay=weight_decay)
            data = owner_data(config)
            metrics = {}
            for cell, protections in (
                ("none", []),
                ("dp", [DpSgd(config.dp_epsilon, config.dp_delta, config.dp_clip)]),
            ):
                model = train_model(
                    data, config.architecture, config.train_config(seed), None, protections
                )
                metrics[f"{cell}_validation_accuracy"] = accuracy(
                    model, data.validation.x, data.validation.y
                )
            metrics["mean_validation_accuracy"] = (
                metrics["none_validation_accuracy"] + metrics["dp_validation_accuracy"]
            ) / 2
            store.append(
                {
                    "benchmark": "conflicts-validation",
                    "dataset": args.dataset,
                    "optimizer": optimizer,
                    "lr": lr,
                    "weight_decay": weight_decay,
                    "training": SETTINGS,
                    "queries_counted": 0,
                    "metrics": metrics,
                },
                seed=seed,
            )
            console.print(f"seed {seed} {optimizer} lr {lr:g}: {metrics}")


if __name__ == "__main__":
    main()
