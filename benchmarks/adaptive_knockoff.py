"""Adaptive against random Knockoff Nets on a transfer set that mixes in- and out-of-distribution
data (Orekondy et al., CVPR '19, §4.1.2; issue 4's target: adaptive >= random at every budget).

Victim: the Fashion-MNIST CNN of the other benchmarks. Transfer set: ``--in-dist`` images of the
attacker's Fashion-MNIST pool (disjoint from the victim's training data and the evaluation
split), all 5,000 mnist5k digits, scikit-learn's 1,797 digits upscaled to 28x28, and
``--noise`` uniform-noise images, so that about a quarter of it is in-distribution. Each image
keeps its source's own label (its Fashion-MNIST or digit class; one label for the noise), which
is what the adaptive strategy's bandit uses as arms with ``--arms labels``; with ``--arms
kmeans`` it clusters the unlabelled pixels instead. Random and adaptive Knockoff share every
other setting (the final surrogate is trained the same way), so only the choice of queries
differs.

    make bench-adaptive
    .venv/bin/python benchmarks/adaptive_knockoff.py --budgets 500,1000,2000,4000

Prints a Markdown table (fidelity on the test split, share of in-distribution queries) for
docs/benchmarks.md and writes the rows to ``--json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from modelheist.attacks import KnockoffNets
from modelheist.data import load_dataset
from modelheist.data.transforms import fit_to_shape
from modelheist.experiments.extraction import Evaluation, measure_extraction
from modelheist.models import TrainConfig, train_model


def mixed_transfer_set(victim_data, in_dist: int, noise: int, seed: int):
    """(inputs, source labels, in-distribution mask) of the mixed transfer set."""
    rng = np.random.default_rng(seed)
    parts, labels, offset = [], [], 0
    pick = rng.choice(len(victim_data.pool.x), in_dist, replace=False)
    parts.append(victim_data.pool.x[pick])
    labels.append(victim_data.pool.y[pick])
    offset += victim_data.num_classes
    for name in ("mnist5k", "digits"):
        d = load_dataset(name, seed=seed)
        x = np.concatenate([d.train.x, d.test.x, d.pool.x])
        y = np.concatenate([d.train.y, d.test.y, d.pool.y])
        parts.append(fit_to_shape(x, victim_data.input_shape))
        labels.append(y + offset)
        offset += d.num_classes
    parts.append(rng.random((noise, *victim_data.input_shape), dtype=np.float32))
    labels.append(np.full(noise, offset))
    x = np.concatenate(parts).astype(np.float32)
    y = np.concatenate(labels).astype(np.int64)
    in_mask = np.zeros(len(x), bool)
    in_mask[:in_dist] = True
    return x, y, in_mask


def plot(rows: list[dict], path: Path) -> None:
    """Fidelity against queries, one line per strategy (and arms), for docs/benchmarks.md."""
    from modelheist.experiments.report import plot_fidelity

    runs = [
        {"transfer_set": ("" if r["strategy"].startswith("ART") else "modelheist ")
                         + r["strategy"] + ("" if r["arms"] == "-" else f" ({r['arms']})"),
         "output": "probs", "queries_used": r["queries"], "fidelity_test": r["fidelity_test"]}
        for r in rows if r["fidelity_test"] is not None
    ]  # fmt: skip
    if not runs:
        return
    low = min(r["fidelity_test"] for r in runs)
    title = "Knockoff Nets on a 25% in-distribution transfer set"
    plot_fidelity(runs, path, title, ylim=(max(0.0, low - 0.05), 1.0))


def art_row(victim, evaluation, pool, labels, in_mask, budget, strategy, seed) -> dict:
    """IBM ART's KnockoffNets (use_probability=True; adaptive: reward "all", the transfer
    labels as arms) on the same victim and transfer set; a failure is recorded, not raised."""
    from knockoff_vs_art import art_knockoff  # benchmarks/ is on sys.path when run as a script

    start = time.perf_counter()
    row = dict(strategy=f"ART {strategy}", arms="labels" if strategy == "adaptive" else "-",
               budget=budget, queries=budget, in_distribution_share=None,
               surrogate_accuracy=None, fidelity_test=None, fidelity_uniform=None)  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ART's adaptive reward divides by zero (#1746)
            surrogate = art_knockoff(victim, pool, budget, True, seed, strategy, "all",
                                     labels if strategy == "adaptive" else None)  # fmt: skip
        accuracy, fid, unif = evaluation.score(surrogate)
        row.update(surrogate_accuracy=accuracy, fidelity_test=fid, fidelity_uniform=unif)
    except Exception as exc:  # noqa: BLE001 - the peer's failure is the measurement
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = time.perf_counter() - start
    print(f"{row['strategy']:15s} {budget:5d}  fid {row['fidelity_test']}  "
          f"{row.get('error', '')}", flush=True)  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="500,1000,2000,4000")
    parser.add_argument("--strategies", default="random,adaptive")
    parser.add_argument("--arms", default="labels,kmeans")
    parser.add_argument("--in-dist", type=int, default=3000)
    parser.add_argument("--noise", type=int, default=2000)
    parser.add_argument("--victim-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bandit-step", type=float, default=None)
    parser.add_argument(
        "--art", default="random,adaptive", help="IBM ART's strategies to run too ('' for none)"
    )
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/adaptive.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/adaptive_knockoff.png"))
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]

    data = load_dataset("fashion-mnist", seed=args.seed)
    victim = train_model(data, "cnn", TrainConfig(epochs=args.victim_epochs, seed=args.seed))
    print(f"victim test accuracy {victim.card.metrics['test_accuracy']:.4f}", flush=True)
    evaluation = Evaluation.of(victim, data.test, seed=args.seed)
    pool, source_labels, in_mask = mixed_transfer_set(data, args.in_dist, args.noise, args.seed)
    print(f"transfer set: {len(pool)} inputs, {in_mask.mean():.1%} in-distribution", flush=True)

    runs = []
    for strategy in args.strategies.split(","):
        for arms in args.arms.split(",") if strategy == "adaptive" else ["-"]:
            runs.append((strategy, arms))
    rows = []
    for budget in budgets:
        for strategy in filter(None, args.art.split(",")):
            rows.append(art_row(victim, evaluation, pool, source_labels, in_mask, budget,
                                strategy, args.seed))  # fmt: skip
        for strategy, arms in runs:
            extra = {} if args.bandit_step is None else {"bandit_step": args.bandit_step}
            attack = KnockoffNets(strategy=strategy, **(extra if strategy == "adaptive" else {}))
            result, m = measure_extraction(
                victim,
                attack,
                pool,
                evaluation,
                budget,
                "probs",
                "mixed",
                args.seed,
                transfer_labels=source_labels if arms == "labels" else None,
            )
            row = dict(
                strategy=strategy,
                arms=arms,
                budget=budget,
                queries=m.queries_used,
                in_distribution_share=float(in_mask[result.queried].mean()),
                surrogate_accuracy=m.surrogate_accuracy,
                fidelity_test=m.fidelity_test,
                fidelity_uniform=m.fidelity_uniform,
                seconds=m.seconds,
            )
            rows.append(row)
            print(
                f"{strategy:8s} {arms:6s} {budget:5d}  in-dist {row['in_distribution_share']:.2f}"
                f"  fid {m.fidelity_test:.4f}  unif {m.fidelity_uniform:.4f}  {m.seconds:.0f} s",
                flush=True,
            )

    document = {
        "benchmark": "adaptive_knockoff",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}",
        "victim_test_accuracy": victim.card.metrics["test_accuracy"],
        "transfer_set": {"size": len(pool), "in_distribution": int(in_mask.sum())},
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    plot(rows, args.plot)
    print("\n| strategy | arms | budget | queries | in-dist. share | fidelity (test) | "
          "fidelity (uniform) | seconds |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        share = "-" if r["in_distribution_share"] is None else f"{r['in_distribution_share']:.2f}"
        if "error" in r:
            figures = f"fails: {r['error'][:60]} | - "
        else:
            figures = f"{r['fidelity_test']:.4f} | {r['fidelity_uniform']:.4f} "
        print(f"| {r['strategy']} | {r['arms']} | {r['budget']} | {r['queries']} | {share} | "
              f"{figures}| {r['seconds']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
