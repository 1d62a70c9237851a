"""Run scenario files into benchmarks/results/<scenario>.jsonl, peers (IBM ART) included.

The same runner as `modelheist experiment run`, with the peers of benchmarks/peers.py added to
the attacks a scenario may name. Victims are cached in benchmarks/results/victims/ (not kept in
git); rows are skipped when already stored, so an interrupted run resumes.

    python benchmarks/run_scenarios.py examples/knockoff-fashion-mnist.toml [...] [--seeds 3]

``--jobs N`` runs (scenario, seed) pairs in N processes at once, each with its share of the
CPU threads, after training every victim once in this process; for a machine with many cores
or a GPU (``MODELHEIST_DEVICE=cuda``). Never on a 2-core machine: torch jobs side by side slow
each other down far more than they gain.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from modelheist.errors import ModelheistError
from modelheist.experiments.results import ResultsStore
from modelheist.experiments.runner import ScenarioRunner
from modelheist.experiments.scenario import Scenario

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PEERS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def describe(name: str, row: dict[str, Any]) -> str:
    m = row["metrics"]
    return (
        f"{name} seed {row['seed']} {row['variant']} {row['transfer_set']} {row['output']} "
        f"{row['budget']}: fidelity val {m.get('fidelity_validation', float('nan')):.4f} "
        f"test {m['fidelity_test']:.4f} ({m['seconds']:.0f} s)"
    )


def runner_for(scenario: Scenario, progress: Progress | None = None) -> ScenarioRunner:
    store = ResultsStore(RESULTS / f"{scenario.name}.jsonl")
    return ScenarioRunner(store, RESULTS / "victims", PEERS, progress)


def run_one(path: Path, seed: int, threads: int) -> int:
    """A worker process: one scenario's runs of one seed; the number of rows added."""
    import torch

    torch.set_num_threads(threads)
    scenario = Scenario.load(path)
    rows = runner_for(scenario).run(
        scenario,
        [seed],
        on_row=lambda row: print(describe(scenario.name, row), file=sys.stderr, flush=True),
    )
    return len(rows)


def run_parallel(paths: list[Path], seeds: list[int] | None, jobs: int, console: Console) -> None:
    units = []
    for path in paths:
        scenario = Scenario.load(path)
        runner = runner_for(scenario)
        runner.check(scenario)
        for seed in seeds if seeds is not None else scenario.seeds:
            runner.victim(scenario, seed)  # trained once here, loaded by the workers
            units.append((path, seed))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_one, path, seed, threads): (path, seed) for path, seed in units}
        for future in as_completed(futures):
            path, seed = futures[future]
            console.print(f"{path.stem} seed {seed}: {future.result()} runs added", highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, help="run seeds 0 .. N-1 instead of the file's")
    parser.add_argument("--jobs", type=int, default=1, help="(scenario, seed) pairs at once")
    args = parser.parse_args()
    console = Console(stderr=True)
    seeds = None if args.seeds is None else list(range(args.seeds))
    try:
        if args.jobs > 1:
            run_parallel(args.scenarios, seeds, args.jobs, console)
            return
        scenarios = [Scenario.load(path) for path in args.scenarios]
        with Progress(console=console, transient=True) as progress:
            for scenario in scenarios:
                runner_for(scenario, progress).run(
                    scenario,
                    seeds,
                    on_row=lambda row, name=scenario.name: progress.console.print(
                        describe(name, row), highlight=False
                    ),
                )
    except ModelheistError as exc:
        console.print(f"error: {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
