"""The ownership matrix on Fashion-MNIST (issue 12's target: every registered scheme against
the same suspects, with 20 independent models, in <= 60 minutes on 2 CPU cores).

For each seed: ``modelheist experiment ownership --dataset fashion-mnist --seed S`` with its
defaults (:class:`modelheist.experiments.ownership_matrix.MatrixConfig`), run in
benchmarks/results/ownership-matrix-runs/seed-S (resumed if interrupted). Rows go to
benchmarks/results/ownership_matrix.jsonl: one per cell (suspect x scheme: p-value, decision,
queries the suspect's oracle counted), one per scheme (ROC AUC, detections, false
accusations), one for the run (its wall time, valid only when it ran uninterrupted), and one
for where the seed's time went (``phases``: read from the run folder's own records, also for a
seed run before these rows existed).

    python benchmarks/ownership_matrix.py [--seeds 1] [--dataset fashion-mnist] [--jobs 1]

``--jobs N`` (N > 1) makes the models made apart in N worker processes that share the cores
(``modelheist experiment ownership --jobs N``); such a run has its own folder
(``...-seed-S-jobsN``) and its own store (``ownership_matrix-jobsN.jsonl``), so that its time
and decisions stand beside the one-process runs' without mixing into their tables.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from modelheist.errors import ModelheistError
from modelheist.experiments.executors import LocalExecutor
from modelheist.experiments.matrix_report import write_matrix_report
from modelheist.experiments.ownership_matrix import CELLS, SUSPECTS, MatrixConfig, MatrixRun
from modelheist.experiments.results import ResultsStore
from modelheist.experiments.run_folder import read_lines

RESULTS = Path(__file__).resolve().parent / "results"
STORE = RESULTS / "ownership_matrix.jsonl"


def phase_seconds(folder: Path) -> dict:
    """Where a seed's time went, from its run folder: seconds per phase (``timings.jsonl``; a
    phase resumed after an interruption adds its sittings), per suspect family (making the
    suspects) and per scheme (deciding the cells)."""
    phases: dict[str, float] = defaultdict(float)
    sittings: dict[str, int] = defaultdict(int)
    for row in read_lines(folder / "timings.jsonl"):
        phases[row["phase"]] += row["seconds"]
        sittings[row["phase"]] += 1
    families: dict[str, float] = defaultdict(float)
    for row in read_lines(folder / SUSPECTS):
        families[row["family"]] += row.get("seconds_to_make", 0.0)
    schemes: dict[str, float] = defaultdict(float)
    for row in read_lines(folder / CELLS):
        schemes[row["scheme"]] += row.get("seconds", 0.0)
    return {
        "phases": dict(phases),
        "sittings": dict(sittings),
        "suspect_families": dict(families),
        "cell_schemes": dict(schemes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    try:
        executor = LocalExecutor(args.jobs)
    except ModelheistError as exc:
        raise SystemExit(str(exc)) from None
    console = Console(stderr=True)
    parallel = f"-jobs{args.jobs}" if args.jobs > 1 else ""
    store = ResultsStore(STORE.with_name(f"{STORE.stem}{parallel}{STORE.suffix}"))
    store.freeze_environment()
    rows = store.rows()
    for row in rows:
        if (
            row["measure"] == "run"
            and row["config"] != MatrixConfig(dataset=row["dataset"], seed=row["seed"]).as_json()
        ):
            raise SystemExit(  # its table would mix two configurations
                f"{store.path} holds a run of another configuration (seed {row['seed']}, "
                f"{row['dataset']}, commit {row['commit']}); move it aside first"
            )
    done = {(r["seed"], r["dataset"]) for r in rows if r["measure"] == "run"}
    begun = {(r["seed"], r["dataset"]) for r in rows}
    phased = {(r["seed"], r["dataset"]) for r in rows if r["measure"] == "phases"}
    common = {"benchmark": "ownership-matrix", "dataset": args.dataset, "jobs": args.jobs}

    def record_phases(seed: int, folder: Path) -> None:
        if (seed, args.dataset) not in phased and (folder / "timings.jsonl").is_file():
            store.append(
                {**common, "measure": "phases", "queries_counted": 0,
                 "metrics": phase_seconds(folder)},
                seed=seed,
            )  # fmt: skip

    for seed in range(args.seeds):
        folder = RESULTS / "ownership-matrix-runs" / f"{args.dataset}-seed-{seed}{parallel}"
        if (seed, args.dataset) in done:
            record_phases(seed, folder)
            continue
        if (seed, args.dataset) in begun:  # a crash while its rows were written
            raise SystemExit(
                f"{store.path} holds some rows of seed {seed} but not its run row; "
                "remove them first"
            )
        config = MatrixConfig(dataset=args.dataset, seed=seed)
        fresh = not (folder / "config.json").is_file()
        start = time.perf_counter()
        with Progress(console=console) as progress:
            document = MatrixRun(config, folder, progress, executor).run(
                on_cell=lambda c, seed=seed: progress.console.print(
                    f"seed {seed} {c['suspect']:>18} {c['scheme']:>22}: {c['decision']} "
                    f"(p {c['p_value']})",
                    highlight=False,
                )
            )
        minutes = (time.perf_counter() - start) / 60
        write_matrix_report(document, folder)
        suspects = {s["suspect"]: s for s in document["suspects"]}
        for cell in document["cells"]:
            made = suspects[cell["suspect"]]
            store.append(
                {
                    **common,
                    "measure": "cell",
                    "suspect": cell["suspect"],
                    "kind": cell["kind"],
                    "family": cell["family"],
                    "scheme": cell["scheme"],
                    "queries_counted": cell["queries"],
                    "metrics": {
                        "p_value": cell["p_value"],
                        "decision": cell["decision"],
                        "statistic_name": cell["statistic_name"],
                        "statistic": cell["statistic"],
                        "reason": cell["reason"],
                        "suspect_test_accuracy": made["test_accuracy"],
                        "agreement_with_owner": made["agreement_with_owner"],
                        "extraction_queries": made.get("extraction_queries"),
                    },
                },
                seed=seed,
            )
        for scheme, summary in document["summary"].items():
            store.append(
                {
                    **common,
                    "measure": "scheme",
                    "scheme": scheme,
                    "queries_counted": round(
                        summary["mean_queries"] * (summary["stolen"] + summary["independent"])
                    ),
                    "metrics": summary,
                },
                seed=seed,
            )
        store.append(
            {
                **common,
                "measure": "run",
                "config": document["config"],
                "queries_counted": sum(c["queries"] for c in document["cells"]),
                "metrics": {
                    "minutes": minutes,
                    "uninterrupted": fresh,
                    "owner": document["owner"],
                    "suspects": len(document["suspects"]),
                    "independents": sum(s["kind"] == "independent" for s in document["suspects"]),
                },
            },
            seed=seed,
        )
        record_phases(seed, folder)
        console.print(f"seed {seed}: {minutes:.1f} minutes ({'fresh' if fresh else 'resumed'})")


if __name__ == "__main__":
    main()
