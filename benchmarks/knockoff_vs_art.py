"""Knockoff Nets (random strategy): modelheist against IBM ART, side by side, in one run.

The same Fashion-MNIST CNN victim (trained here, test accuracy about 0.91), the same transfer
sets (the attacker's in-distribution pool, disjoint from the victim's training data and from the
evaluation split; mnist5k as an out-of-distribution set), the same budgets, the same surrogate
architecture. ART's ``KnockoffNets(sampling_strategy="random")`` runs with its defaults
(``use_probability=False``: it queries probabilities but trains on their arg-max) and 10
epochs, and once more with ``use_probability=True``;
modelheist's ``KnockoffNets`` runs with its defaults (distillation, augmentation, 60 epochs),
with a 3-member ensemble surrogate, and, on the in-distribution set, with self-training on the
unqueried pool and against a labels-only API.

    make bench                      # installs ART, then runs this with the defaults
    .venv/bin/python benchmarks/knockoff_vs_art.py --budgets 500,1000,5000 --json out.json

Prints a Markdown table (surrogate accuracy and fidelity on the test split, per budget) for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from modelheist.attacks import KnockoffNets
from modelheist.data import attacker_transfer_set, load_dataset
from modelheist.experiments.extraction import Evaluation, measure_extraction
from modelheist.models import TrainConfig, train_model
from modelheist.models.architectures import build_network, normalisation_stats
from modelheist.models.classifier import ModelCard, TorchClassifier


def art_knockoff(
    victim: TorchClassifier,
    pool: np.ndarray,
    budget: int,
    use_probability: bool,
    seed: int,
    sampling_strategy: str = "random",
    reward: str = "all",
    y: np.ndarray | None = None,
):
    """ART's KnockoffNets against the same victim; returns the surrogate. The adaptive strategy
    takes the transfer set's labels ``y`` as its arms."""
    from art.attacks.extraction import KnockoffNets as ArtKnockoffNets
    from art.estimators.classification import PyTorchClassifier

    shape = tuple(victim.card.input_shape)
    classes = victim.card.num_classes
    # ART's KnockoffNets reads ``predict`` as probabilities when use_probability=True, so the
    # victim it queries ends in a softmax (our modules output logits).
    art_victim = PyTorchClassifier(
        model=torch.nn.Sequential(victim.module, torch.nn.Softmax(dim=1)),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=classes,
        clip_values=(0.0, 1.0),
    )
    mean, std = normalisation_stats(pool)
    net = build_network("cnn", shape, classes, mean, std, seed)
    thief = PyTorchClassifier(
        model=net,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
        input_shape=shape,
        nb_classes=classes,
        clip_values=(0.0, 1.0),
    )
    np.random.seed(seed)  # ART samples the transfer set with NumPy's global generator
    torch.manual_seed(seed)
    attack = ArtKnockoffNets(
        classifier=art_victim,
        batch_size_fit=64,
        batch_size_query=64,
        nb_epochs=10,
        nb_stolen=budget,
        sampling_strategy=sampling_strategy,
        reward=reward,
        use_probability=use_probability,
        verbose=False,
    )
    stolen = attack.extract(x=pool, y=y, thieved_classifier=thief)
    card = ModelCard(
        "cnn", "surrogate", victim.card.classes, list(shape), {"mean": mean, "std": std}
    )
    return TorchClassifier(stolen.model.eval(), card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="500,1000,5000")
    parser.add_argument("--victim-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-art", action="store_true")
    parser.add_argument(
        "--variants",
        default="default,ensemble,self-training,labels",
        help="modelheist variants to run (comma-separated)",
    )
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/knockoff_vs_art.json")
    )
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    chosen = set(args.variants.split(","))

    data = load_dataset("fashion-mnist", seed=args.seed)
    t0 = time.perf_counter()
    victim = train_model(data, "cnn", TrainConfig(epochs=args.victim_epochs, seed=args.seed))
    print(
        f"victim: cnn on fashion-mnist, test accuracy {victim.card.metrics['test_accuracy']:.4f} "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    evaluation = Evaluation.of(victim, data.test, seed=args.seed)
    pools = {name: attacker_transfer_set(name, data) for name in ("fashion-mnist", "mnist5k")}
    rows: list[dict] = []

    def record(method: str, transfer: str, output: str, budget: int, queries: int,
               scores: tuple[float, float, float], seconds: float) -> None:  # fmt: skip
        acc, fid, unif = scores
        rows.append(dict(method=method, transfer_set=transfer, output=output, budget=budget,
                         queries=queries, surrogate_accuracy=acc, fidelity_test=fid,
                         fidelity_uniform=unif, seconds=seconds))  # fmt: skip
        print(f"{method:40s} {transfer:13s} {output:6s} {budget:5d}  acc {acc:.4f}  "
              f"fid {fid:.4f}  unif {unif:.4f}  {seconds:.0f} s", flush=True)  # fmt: skip

    for transfer, pool in pools.items():
        for budget in budgets:
            for use_probability in () if args.skip_art else (False, True):
                t = time.perf_counter()
                surrogate = art_knockoff(victim, pool, budget, use_probability, args.seed)
                name = f"ART KnockoffNets (use_probability={use_probability})"
                scores = evaluation.score(surrogate)
                record(name, transfer, "probs", budget, budget, scores, time.perf_counter() - t)
            variants = [
                ("default", "modelheist KnockoffNets (default)", KnockoffNets(), "probs"),
                (
                    "ensemble",
                    "modelheist KnockoffNets (3-member ensemble)",
                    KnockoffNets(members=3),
                    "probs",
                ),
            ]
            if transfer == "fashion-mnist":
                variants += [
                    (
                        "self-training",
                        "modelheist KnockoffNets (+ self-training)",
                        KnockoffNets(rounds=1),
                        "probs",
                    ),
                    ("labels", "modelheist KnockoffNets (default)", KnockoffNets(), "labels"),
                ]
            for key, name, attack, output in variants:
                if key not in chosen:
                    continue
                result, m = measure_extraction(
                    victim, attack, pool, evaluation, budget, output, transfer, args.seed
                )
                scores = (m.surrogate_accuracy, m.fidelity_test, m.fidelity_uniform)
                record(name, transfer, output, budget, m.queries_used, scores, m.seconds)

    document = {
        "benchmark": "knockoff_vs_art",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}",
        "victim_test_accuracy": victim.card.metrics["test_accuracy"],
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(
        "\n| method | transfer set | output | budget | queries | surrogate acc. | fidelity (test) | fidelity (uniform) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['transfer_set']} | {r['output']} | {r['budget']} | {r['queries']} | "
            f"{r['surrogate_accuracy']:.4f} | {r['fidelity_test']:.4f} | {r['fidelity_uniform']:.4f} |"
        )


if __name__ == "__main__":
    main()
