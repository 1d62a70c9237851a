"""Run scenario files into benchmarks/results/<scenario>.jsonl, peers (IBM ART) included.

The same runner as `modelheist experiment run`, with the peers of benchmarks/peers.py added to
the attacks a scenario may name. Victims are cached in benchmarks/results/victims/ (not kept in
git); rows are skipped when already stored, so an interrupted run resumes.

    python benchmarks/run_scenarios.py examples/knockoff-fashion-mnist.toml [...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from modelheist.errors import ModelheistError
from modelheist.experiments.results import ResultsStore
from modelheist.experiments.runner import ScenarioRunner
from modelheist.experiments.scenario import Scenario

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PEERS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, help="run seeds 0 .. N-1 instead of the file's")
    args = parser.parse_args()
    console = Console(stderr=True)
    try:
        scenarios = [Scenario.load(path) for path in args.scenarios]
        with Progress(console=console, transient=True) as progress:
            for scenario in scenarios:
                store = ResultsStore(RESULTS / f"{scenario.name}.jsonl")
                runner = ScenarioRunner(store, RESULTS / "victims", PEERS, progress)
                seeds = None if args.seeds is None else list(range(args.seeds))

                def show(row: dict, name: str = scenario.name) -> None:
                    m = row["metrics"]
                    progress.console.print(
                        f"{name} seed {row['seed']} {row['variant']} {row['transfer_set']} "
                        f"{row['output']} {row['budget']}: fidelity val "
                        f"{m.get('fidelity_validation', float('nan')):.4f} test "
                        f"{m['fidelity_test']:.4f} ({m['seconds']:.0f} s)",
                        highlight=False,
                    )

                runner.run(scenario, seeds, on_row=show)
    except ModelheistError as exc:
        console.print(f"error: {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
