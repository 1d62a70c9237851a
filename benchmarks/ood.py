"""Out-of-distribution detectors against a Fashion-MNIST CNN: per-query rates and per-client
alarms (issue 10's targets: per-query TPR >= 95% at TNR >= 95% against mnist5k, upscaled
digits and noise; every OOD Knockoff client flagged within 50 queries; no benign client
flagged; Knockoff from an in-distribution pool not detected, the blind spot).

For each seed: the victim of examples/knockoff-fashion-mnist.toml (cached by the scenario
runner, else trained the same way); three outside pools, each split in halves (one to train
Atli et al.'s classifier, one to evaluate): mnist5k, scikit-learn digits upscaled to 28x28,
uniform noise. Two detectors, each with its per-query threshold at a 5% false-positive rate on
the validation split: the maximum softmax probability (``ood-msp``, no outside data) and the
binary classifier (``ood-classifier``, trained on the owner's training images against the
training halves). TNR is read on the evaluation split, TPR on each pool's evaluation half.
Client streams, replayed 10 queries per request, window 50, alarm at 50% flagged: the
evaluation split shuffled (benign), and Knockoff (random) from each outside pool's evaluation
half and from the attacker's in-distribution pool (a random Knockoff client's queries are a
uniform draw from its pool, which is what is replayed). Rows go to benchmarks/results/ood.jsonl.

    python benchmarks/ood.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

from modelheist.data.registry import attacker_transfer
from modelheist.defenses.ood import MaxSoftmaxOod, OodClassifier, calibrate_threshold
from modelheist.defenses.ood_training import train_ood_classifier
from modelheist.experiments.detection import replay
from modelheist.experiments.results import ResultsStore
from modelheist.models import TrainConfig, save_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_scenarios import fashion_mnist_victim  # noqa: E402

ROOT = Path(__file__).resolve().parent
STORE = ROOT / "results" / "ood.jsonl"
FPR = 0.05
WINDOW, SHARE, BATCH = 50, 0.5, 10
CLIENT_QUERIES = 1_000


def outside_pools(data, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each outside pool, split in (training half, evaluation half)."""
    rng = np.random.default_rng(seed)
    pools = {
        "mnist5k": attacker_transfer("mnist5k", data)[0],
        "digits, upscaled": attacker_transfer("digits", data)[0],
        "uniform noise": rng.random((4_000, *data.input_shape), dtype=np.float32),
    }
    halves = {}
    for name, x in pools.items():
        order = rng.permutation(len(x))
        halves[name] = (x[order[: len(x) // 2]], x[order[len(x) // 2 :]])
    return halves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    console = Console(stderr=True)
    store = ResultsStore(STORE)
    store.freeze_environment()
    done = {(r["seed"], r["detector"], r["measure"], r["stream"]) for r in store.rows()}
    for seed in range(args.seeds):
        data, victim = fashion_mnist_victim(seed)
        pools = outside_pools(data, seed)
        validation_msp = victim.predict_proba(data.validation.x).max(axis=1)
        detector = train_ood_classifier(
            data.train.x,
            {name: halves[0] for name, halves in pools.items()},
            "cnn",
            TrainConfig(epochs=5, seed=seed),
        )
        folder = ROOT / "results" / "victims" / f"ood-classifier-fashion-mnist-seed{seed}"
        save_model(detector, folder, overwrite=True)
        inside_validation = 1.0 - detector.predict_proba(data.validation.x)[:, 1]
        detectors = {
            "ood-msp": MaxSoftmaxOod(calibrate_threshold(validation_msp, FPR), WINDOW, SHARE),
            "ood-classifier": OodClassifier(
                str(folder),
                float(np.clip(1.0 - calibrate_threshold(inside_validation, FPR), 1e-6, 1 - 1e-6)),
                WINDOW,
                SHARE,
            ),
        }
        rng = np.random.default_rng(seed)
        streams = {
            "benign: evaluation split, shuffled": data.test.x[rng.permutation(len(data.test.x))],
            "Knockoff, in-distribution pool": data.pool.x[rng.permutation(len(data.pool.x))],
            **{
                f"Knockoff, {name}": halves[1][rng.permutation(len(halves[1]))]
                for name, halves in pools.items()
            },
        }
        for name, stage in detectors.items():
            stage.open()
            per_query = {"evaluation split (TNR)": data.test.x} | {
                f"{pool} (TPR)": halves[1] for pool, halves in pools.items()
            }
            for stream, x in per_query.items():
                if (seed, name, "per-query", stream) in done:
                    continue
                flagged = stage.flags(x, _answer(victim, x)).mean()
                rate = 1.0 - flagged if "TNR" in stream else flagged
                store.append(
                    {
                        "benchmark": "ood",
                        "detector": name,
                        "measure": "per-query",
                        "stream": stream,
                        "threshold": stage.threshold,
                        "queries_counted": 0,
                        "metrics": {"rate": float(rate), "inputs": len(x)},
                    },
                    seed=seed,
                )
                console.print(f"seed {seed} {name} {stream}: {rate:.4f}", highlight=False)
            for stream, x in streams.items():
                if (seed, name, "client", stream) in done:
                    continue
                result = replay(victim, [stage], x[:CLIENT_QUERIES], batch=BATCH)
                store.append(
                    {
                        "benchmark": "ood",
                        "detector": name,
                        "measure": "client",
                        "stream": stream,
                        "threshold": stage.threshold,
                        "window": WINDOW,
                        "share": SHARE,
                        "queries_counted": result.queries,
                        "metrics": {
                            "first_alarm": result.first_alarm,
                            "final_share": result.trace[-1][1] if result.trace else None,
                        },
                    },
                    seed=seed,
                )
                console.print(
                    f"seed {seed} {name} {stream}: first alarm {result.first_alarm}",
                    highlight=False,
                )


def _answer(model, x):
    from modelheist.oracle.answer import Answer

    p = model.predict_proba(x)
    return Answer(p.argmax(axis=1), p)


if __name__ == "__main__":
    main()
