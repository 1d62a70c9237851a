"""Run scenario files into benchmarks/results/<scenario>.jsonl, peers (IBM ART) included.

The same runner as `modelheist experiment run`, with the peers of benchmarks/peers.py added to
the attacks a scenario may name. Victims are cached in benchmarks/results/victims/ (not kept in
git); rows are skipped when already stored, so an interrupted run resumes.

    python benchmarks/run_scenarios.py examples/knockoff-fashion-mnist.toml [...] [--seeds 3]

``--jobs N`` runs the grid in N processes at once, a unit being one scenario's runs of one
seed, variant, transfer set and output (its budgets in turn), each process with its share of
the CPU threads, after training every victim once in this process; units start in the order
of the files given. For a machine with many cores or a GPU (``MODELHEIST_DEVICE=cuda``). Never on a 2-core machine: torch jobs side by side slow
each other down far more than they gain.
"""

from __future__ import annotations

import argparse
import itertools
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


def unit_of(scenario: Scenario, variant: str, transfer: str | None, output: str) -> Scenario:
    """``scenario`` cut down to one variant, transfer set and output (each run's identity, and
    so its place in the store, is unchanged)."""
    attack = scenario.attack.model_copy(
        update={"variants": {variant: scenario.attack.variants[variant]}}
    )
    return scenario.model_copy(
        update={
            "attack": attack,
            "outputs": [output],
            "transfer_sets": [transfer] if transfer is not None else [],
        }
    )


def only_variants(scenario: Scenario, names: list[str]) -> Scenario:
    """``scenario`` with only the attack variants ``names`` (each run keeps its identity)."""
    unknown = sorted(set(names) - set(scenario.attack.variants))
    if unknown:
        raise ModelheistError(f"{scenario.name} has no variant {', '.join(unknown)}")
    variants = {name: scenario.attack.variants[name] for name in names}
    return scenario.model_copy(
        update={"attack": scenario.attack.model_copy(update={"variants": variants})}
    )


def fashion_mnist_victim(seed: int):
    """The data split and victim of examples/knockoff-fashion-mnist.toml for ``seed`` (cached,
    trained on first use): the victim the detection and deterrence benchmarks share."""
    scenario = Scenario.load(RESULTS.parent.parent / "examples" / "knockoff-fashion-mnist.toml")
    return runner_for(scenario).victim(scenario, seed)


def run_one(path: Path, seed: int, cut: tuple[str, str | None, str], threads: int) -> int:
    """A worker process: one unit's runs; the number of rows added."""
    import torch

    torch.set_num_threads(threads)
    scenario = unit_of(Scenario.load(path), *cut)
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
            for variant, transfer, output in itertools.product(
                scenario.attack.variants, scenario.transfer_sets or [None], scenario.outputs
            ):
                units.append((path, seed, (variant, transfer, output)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_one, *unit, threads): unit for unit in units}
        failed = 0
        for future in as_completed(futures):
            path, seed, cut = futures[future]
            where = f"{path.stem} seed {seed} {' '.join(str(c) for c in cut)}"
            try:
                console.print(f"{where}: {future.result()} runs added", highlight=False)
            except Exception as exc:  # one unit's failure must not stop the others
                failed += 1
                console.print(f"{where}: failed: {exc!r}", highlight=False)
    if failed:
        raise ModelheistError(f"{failed} of {len(units)} units failed (see above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, help="run seeds 0 .. N-1 instead of the file's")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="units run at once (a unit: one seed, variant, transfer set and output)",
    )
    parser.add_argument(
        "--variants", help="comma-separated: run only these attack variants (the rest later)"
    )
    args = parser.parse_args()
    console = Console(stderr=True)
    seeds = None if args.seeds is None else list(range(args.seeds))
    try:
        if args.jobs > 1:
            run_parallel(args.scenarios, seeds, args.jobs, console)
            return
        scenarios = [Scenario.load(path) for path in args.scenarios]
        if args.variants:
            scenarios = [only_variants(s, args.variants.split(",")) for s in scenarios]
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
