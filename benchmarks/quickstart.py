"""The main job as a user runs it: `modelheist quickstart` (issues 10 and 11: still under 5
minutes on 2 cores with the detectors and DAWN on).

Runs the command in a fresh process (as `make demo` does, the data already installed) and
appends a row to benchmarks/results/quickstart.jsonl: the wall time, the victim's accuracy, and
each of the nine extractions' fidelity, queries counted by the API and the query at which each
detector first flagged the attacker, and each surrogate's DAWN verdict (from the command's own
JSON), with how many clients' watermark sets accused the independently trained model.

    python benchmarks/quickstart.py [--fast] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modelheist.experiments.results import ResultsStore

STORE = Path(__file__).resolve().parent / "results" / "quickstart.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    store = ResultsStore(STORE)
    store.freeze_environment()
    with tempfile.TemporaryDirectory() as folder:
        document = Path(folder) / "q.json"
        command = [sys.executable, "-m", "modelheist.cli", "quickstart", "--json", str(document)]
        command += ["--report", str(Path(folder) / "report")]
        command += ["--seed", str(args.seed)] + (["--fast"] if args.fast else [])
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        result = json.loads(document.read_text())
    runs = [
        {
            key: run.get(key)
            for key in (
                "transfer_set",
                "output",
                "budget",
                "queries_used",
                "fidelity_test",
                "prada_alarm",
                "ood_alarm",
                "dawn_watermarks",
                "dawn_p_value",
                "dawn_verdict",
            )
        }
        for run in result["runs"]
    ]
    store.append(
        {
            "benchmark": "quickstart",
            "preset": "fast" if args.fast else "full",
            "queries_counted": sum(run["queries_used"] for run in runs),
            "metrics": {
                "wall_seconds": round(seconds, 1),
                "victim_accuracy": result["victim"]["test_accuracy"],
                "detectors": result.get("detectors"),
                "watermark": result.get("watermark"),
                "independent_model": {
                    key: result.get("independent_model", {}).get(key)
                    for key in ("test_accuracy", "significance_per_set", "accused")
                },
                "runs": runs,
            },
        },
        seed=args.seed,
    )
    print(f"quickstart ({'fast' if args.fast else 'full'}): {seconds:.0f} s")


if __name__ == "__main__":
    main()
