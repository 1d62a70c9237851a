"""JBDA (Papernot et al. '17), PRADA's T-RND and N I-FGSM (Juuti et al. '19) against an mnist5k
CNN.

The attacker holds 10 seeds per class (drawn from its pool) and spends the rest of the budget on
synthetic queries in duplication rounds (100 seeds -> 25,600 queries after 8 rounds). Reports
test agreement (1-R_test), 1-R_unif and the surrogate's accuracy.

    python benchmarks/synthetic.py [--budget 25600] [--outputs probs,labels]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from modelheist.api import LocalOracle, PredictionService
from modelheist.attacks import (
    AttackerKnowledge,
    JacobianAugmentation,
    NonTargetedIfgsm,
    TargetedRandom,
)
from modelheist.data import load_dataset
from modelheist.defenses import parse_output
from modelheist.experiments.extraction import Evaluation
from modelheist.models import TrainConfig, train_model

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=25_600)
    parser.add_argument("--outputs", default="probs,labels")
    parser.add_argument("--attacks", default="jbda,t-rnd")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "synthetic.json")
    args = parser.parse_args()
    data = load_dataset("mnist5k", seed=0)
    victim = train_model(data, "cnn", TrainConfig(epochs=15, seed=0))
    evaluation = Evaluation.of(victim, data.test)
    print(
        f"victim: cnn on mnist5k ({len(data.train)} training images), test accuracy {evaluation.victim_accuracy:.4f}",
        flush=True,
    )
    attacks = {"jbda": JacobianAugmentation, "t-rnd": TargetedRandom, "n-ifgsm": NonTargetedIfgsm}
    rows = []
    for output in args.outputs.split(","):
        for name in args.attacks.split(","):
            oracle = LocalOracle.for_new_client(
                PredictionService(victim, parse_output(output)), None
            )
            start = time.perf_counter()
            result = attacks[name]().run(
                oracle, AttackerKnowledge(data.pool.x, args.budget, "cnn", seed=0)
            )
            accuracy, fidelity_test, fidelity_uniform = evaluation.score(result.surrogate)
            rows.append({
                "attack": name, "output": output, "queries": result.queries_used,
                "fidelity_test": fidelity_test, "fidelity_uniform": fidelity_uniform,
                "surrogate_accuracy": accuracy, "seconds": round(time.perf_counter() - start),
                "details": result.details,
            })  # fmt: skip
            print(rows[-1], flush=True)
    print()
    print("| attack | output | queries | 1-R_test | 1-R_unif | surrogate accuracy | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['attack']} | {r['output']} | {r['queries']} | {r['fidelity_test']:.4f} | {r['fidelity_uniform']:.4f} | {r['surrogate_accuracy']:.4f} | {r['seconds']} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "victim_accuracy": evaluation.victim_accuracy, "rows": rows,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
