"""The talk's conflict table (Szyller & Asokan, arXiv 2207.01991; issue 13's targets: each
value within 0.05 of the talk or the difference explained; the full Fashion-MNIST pair table,
one seed, within 60 minutes on 2 CPU cores; three seeds reported).

For each seed: ``modelheist experiment conflicts --dataset D`` with the settings below, run in
benchmarks/results/conflicts-runs/D (resumed if interrupted; seed S in seed-S). Rows go to
benchmarks/results/conflicts.jsonl: one per cell (its metrics), one per seed for the run (its
wall time, valid only when it ran uninterrupted, and the configuration).

    python benchmarks/conflicts.py [--seeds 1] [--dataset fashion-mnist] [--jobs 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from modelheist.errors import ModelheistError
from modelheist.experiments.conflicts import (
    ConflictsConfig,
    cells,
    default_trigger_source,
    owner_data,
    run_conflicts,
)
from modelheist.experiments.executors import LocalExecutor
from modelheist.experiments.results import ResultsStore

RESULTS = Path(__file__).resolve().parent / "results"
STORE = RESULTS / "conflicts.jsonl"
#: What the benchmark trains (the rest: ConflictsConfig's defaults, the study's settings).
SETTINGS = {"epochs": 10, "train_size": 10_000, "batch_size": 256, "trigger_clip": 1.0}
#: Where a dataset trains otherwise: mnist5k's owner holds 1,800 training images, which
#: batches of 256 cut into 8 steps an epoch; it trains in the study's batches of 64 (its code:
#: 64), 29 steps an epoch (Fashion-MNIST keeps 256 for the time target).
DATASET_SETTINGS = {"mnist5k": {"batch_size": 64}}
#: The optimiser, chosen on the validation split by benchmarks/conflicts_validation.py (docs
#: table `conflicts_validation`, whose second table applies its rule: among the settings whose
#: watermark reaches 0.9, the best mean validation accuracy of the unprotected, DP-SGD and
#: watermarked models): the study's SGD with momentum 0.9 and weight decay 5e-4 at rate 0.1,
#: with one pass of trigger steps after each epoch, each non-private step's gradient norm
#: clipped at 1.0 (SETTINGS' trigger_clip; three seeds: watermark 0.95, mean 0.8624).
OPTIMISER = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4}
#: What a dataset's splits force: mnist5k's owner holds 1,800 training and 400 validation
#: (public) images, so dataset inference's regressor (with the 50 revealed samples) and the
#: notebooks' construction draw at most 400 public samples (Fashion-MNIST: 500 and 1,000).
SPLIT_LIMITS = {"mnist5k": {"regressor_samples": 300, "notebook_samples": 400}}
#: Where a dataset's validation chose otherwise (the same script; its rows in the same table):
#: mnist5k at batch 64 (``--dataset mnist5k --seeds 3 --sgd-only``, then ``--lrs 0.03 0.1
#: --rounds 2 10 --clips 1.0 --cover``): SGD at 0.03 with ten clipped passes, the watermark
#: 1.00 at a mean validation accuracy of 0.9322, and DP-SGD's noise covering the trigger
#: steps (epsilon 2.99 with them; on top of the budget they spent 5.41, more than the rule's
#: quarter over 2.99; two passes, 3.56, embed 0.88 and one 0.65).
VALIDATED = {"mnist5k": {"lr": 0.03, "trigger_rounds": 10, "dp_covers_triggers": True}}
#: Datasets whose table waits for a new choice on validation (name: why): the benchmark
#: refuses them. None now.
UNSETTLED: dict[str, str] = {}


def table_settings(dataset: str) -> dict:
    """The training settings the table and its validation use for ``dataset``."""
    return {**SETTINGS, **DATASET_SETTINGS.get(dataset, {})}


def table_config(dataset: str) -> ConflictsConfig:
    """The configuration the table is measured at for ``dataset`` (seed 0)."""
    return ConflictsConfig(
        dataset=dataset,
        trigger_source=default_trigger_source(dataset),
        **{
            **table_settings(dataset),
            **OPTIMISER,
            **SPLIT_LIMITS.get(dataset, {}),
            **VALIDATED.get(dataset, {}),
        },
    )


def folder_of(dataset: str) -> Path:
    """Where the table's run folders for ``dataset`` are kept (one per seed)."""
    return RESULTS / "conflicts-runs" / dataset


def cell_study_arguments(description: str) -> argparse.Namespace:
    """The arguments of a script that studies one of the table's cells on validation
    (``--seeds``, default 3; ``--dataset``), a dataset whose settings are unsettled refused."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, default=3, choices=range(1, 11), metavar="1..10")
    parser.add_argument("--dataset", default="fashion-mnist")
    args = parser.parse_args()
    if args.dataset in UNSETTLED:  # its table's settings are not chosen yet
        raise SystemExit(UNSETTLED[args.dataset])
    try:
        owner_data(table_config(args.dataset))  # an unknown or unfit dataset: one line
    except ModelheistError as error:
        raise SystemExit(str(error)) from None
    return args


def study_settings(benchmark: str, dataset: str) -> dict:
    """What every row of a cell study records of the table it studies (rows of other
    settings are not its own)."""
    config = table_config(dataset)
    return {
        "benchmark": benchmark,
        "dataset": dataset,
        "training": table_settings(dataset),
        "optimiser": {
            "optimizer": config.optimizer,
            "lr": config.lr,
            "weight_decay": config.weight_decay,
            "trigger_rounds": config.trigger_rounds,
        },
        "queries_counted": 0,  # the owner trains and measures its own models
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    if args.dataset in UNSETTLED:
        raise SystemExit(UNSETTLED[args.dataset])
    console = Console(stderr=True)
    store = ResultsStore(STORE)
    store.freeze_environment()
    config = table_config(args.dataset)
    rows = [r for r in store.rows() if r["dataset"] == args.dataset]
    runs = [r for r in rows if r["measure"] == "run"]
    mine = config.as_json()
    if other := [r for r in runs if r["config"] != mine]:
        differ = sorted({k for r in other for k in {*r["config"], *mine} if
                         r["config"].get(k) != mine.get(k)})  # fmt: skip
        raise SystemExit(  # the run folder would refuse it too; say so before any work
            f"{STORE} holds {args.dataset} runs of another configuration ({', '.join(differ)} "
            f"differ); move its {args.dataset} rows and {folder_of(args.dataset)} aside first"
        )
    done = {r["seed"] for r in runs}
    begun = {r["seed"] for r in rows}
    folder = folder_of(args.dataset)
    for seed in range(args.seeds):
        if seed in done:
            continue
        if seed in begun:
            raise SystemExit(f"{STORE} holds cells of seed {seed} but not its run row")
        fresh = not (folder / f"seed-{seed}" / "config.json").is_file()
        start = time.perf_counter()
        with Progress(console=console) as progress:
            doc = run_conflicts(
                config, [seed], folder, LocalExecutor(args.jobs), progress,
                lambda row: progress.console.print(
                    f"seed {row['seed']} {row['cell']:>28}: {row['metrics']}", highlight=False
                ),
            )  # fmt: skip
        minutes = (time.perf_counter() - start) / 60
        common = {"benchmark": "conflicts", "dataset": args.dataset}
        for row in doc["rows"]:
            store.append(
                {
                    **common,
                    "measure": "cell",
                    "cell": row["cell"],
                    "mechanisms": row["mechanisms"],
                    "variant": row["variant"],
                    "queries_counted": 0,  # the owner trains and measures its own models
                    "metrics": {**row["metrics"], "seconds": row["seconds"]},
                },
                seed=seed,
            )
        store.append(
            {
                **common,
                "measure": "run",
                "config": doc["config"],
                "cells": [c.name for c in cells(config)],
                "queries_counted": 0,
                "metrics": {"minutes": minutes, "uninterrupted": fresh},
            },
            seed=seed,
        )
        console.print(f"seed {seed}: {minutes:.1f} minutes ({'fresh' if fresh else 'resumed'})")
    measured = sorted(
        r["seed"] for r in store.rows() if r["measure"] == "run" and r["dataset"] == args.dataset
    )
    # The report over every seed measured whose run folder is here (a fresh checkout has only
    # the store's rows: a seed without its folder would be trained again, so it is left out;
    # docs/benchmarks.md's tables read the store).
    present = [s for s in measured if (folder / f"seed-{s}" / "config.json").is_file()]
    if present:
        run_conflicts(config, present, folder)
        console.print(f"report: {folder / 'conflicts.md'}")
    if len(present) < len(measured):
        console.print(f"seeds {sorted(set(measured) - set(present))} lack their run folders here")


if __name__ == "__main__":
    main()
