"""Dataset inference on Fashion-MNIST (Maini et al., ICLR '21; issue 12's targets: the victim
itself at p < 1e-30 with m <= 50 revealed samples; every surrogate extracted with >= 5,000
queries at p < 1e-3; the false-positive rate on independent models trained on a disjoint split
of the same distribution measured and reported, whatever it is).

For each seed: the Fashion-MNIST victim of examples/knockoff-fashion-mnist.toml (cached), its
training split private and its validation split public; the owner's regressor on Blind Walk
embeddings (the paper's noise scales, 10 directions per noise type, 50 steps) of 500 private
and 500 public samples through its own labels; 150 of each revealed, the decision on the
first ``m`` = 50 pairs (one Welch test), the paper's aggregate (harmonic mean over 100 draws
of 50 from the 150) reported beside it. Suspects: the victim; Knockoff Nets surrogates
(random, the attacker's pool, probabilities and labels) at 5,000 queries; CNNs
trained on the attacker's pool (disjoint from the owner's data) with their own seeds, the
independent models. Every suspect answers labels only.

Beside it, on the same models, the number the authors' notebooks compute
(:mod:`modelheist.ownership.notebook_inference`: rows of 30 images, the regressor scored on
the images it was trained on, the harmonic mean of 100 draws of m = 10 rows; 1,000 private and
1,000 public images), to explain the published p-values; rows with ``construction``
``reference-notebook``. Rows go to benchmarks/results/dataset_inference.jsonl; runs already
there are skipped.

    python benchmarks/dataset_inference.py [--seeds 3] [--independent 5]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.attacks.registry import ATTACKS
from modelheist.defenses.registry import parse_output
from modelheist.experiments.extraction import Evaluation, measure_extraction
from modelheist.experiments.results import ResultsStore
from modelheist.models import TrainConfig, train_model
from modelheist.ownership.dataset_inference import (
    BlindWalk,
    DatasetInferenceScheme,
    DatasetInferenceSecret,
)
from modelheist.ownership.notebook_inference import NotebookInference, NotebookReference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_scenarios import fashion_mnist_victim  # noqa: E402

STORE = Path(__file__).resolve().parent / "results" / "dataset_inference.jsonl"
M, REVEALED, REGRESSOR = 50, 150, 500
SURROGATES = [("knockoff", output, 5000) for output in ("probs", "labels")]
NOTEBOOK = "reference-notebook"


def construction(row: dict) -> str:
    """Which test a row holds: modelheist's calibrated one, or the notebooks' number."""
    return row.get("construction", "calibrated")


def labels_of(model) -> LocalOracle:
    return LocalOracle.for_new_client(PredictionService(model, parse_output("labels")), None)


def record(
    store: ResultsStore,
    scheme: DatasetInferenceScheme,
    seed: int,
    name: str,
    kind: str,
    model,
    extra: dict | None = None,
) -> str:
    """Test ``model`` (labels only) and append its row; a line for the console."""
    evidence = scheme.verify(labels_of(model), 1e-3)
    store.append(
        {
            "benchmark": "dataset-inference",
            "suspect": name,
            "kind": kind,
            "m": M,
            "revealed": REVEALED,
            "embedding": "blind-walk",
            "queries_counted": evidence.queries,
            "metrics": {
                "p_value": evidence.p_value,
                "score_difference": evidence.statistic,
                "decision": evidence.decision,
                "reason": evidence.reason,
                "paper_aggregate": evidence.details.get("paper_aggregate"),
                "censored": evidence.details.get("censored"),
                **(extra or {}),
            },
        },
        seed=seed,
    )
    return f"seed {seed} {name}: p {evidence.p_value}"


def record_notebook(
    store: ResultsStore,
    notebook: NotebookInference,
    reference: NotebookReference,
    seed: int,
    name: str,
    kind: str,
    model,
    extra: dict | None = None,
) -> str:
    """The notebooks' numbers for ``model`` (labels only), with ``extra`` (a surrogate's
    fidelity: the same models as the calibrated rows'); a line for the console."""
    oracle = labels_of(model)
    found = notebook.evaluate(reference, oracle)
    store.append(
        {
            "benchmark": "dataset-inference",
            "construction": NOTEBOOK,
            "suspect": name,
            "kind": kind,
            "m": notebook.m,
            "revealed": notebook.samples,
            "embedding": "blind-walk",
            "queries_counted": oracle.queries_used,
            "metrics": {**found, **(extra or {})},
        },
        seed=seed,
    )
    return f"seed {seed} {name} (notebook): harmonic mean p {found['harmonic_mean_p']:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--independent", type=int, default=5)
    args = parser.parse_args()
    store = ResultsStore(STORE)
    store.freeze_environment()
    for seed in range(args.seeds):
        run_seed(store, seed, args.independent, Console(stderr=True))


def run_seed(store: ResultsStore, seed: int, independent: int, console: Console) -> None:
    """Every suspect of one seed not yet in the store, both constructions."""
    done = {(r["seed"], r["suspect"], construction(r)) for r in store.rows()}
    names = ["victim", *(f"{a}-{o}-{b}" for a, o, b in SURROGATES)]
    names += [f"independent-pool-{i}" for i in range(independent)]
    if all((seed, n, c) in done for n in names for c in ("calibrated", NOTEBOOK)):
        return
    data, victim = fashion_mnist_victim(seed)
    private, public = (data.train.x, data.train.y), (data.validation.x, data.validation.y)
    secret = DatasetInferenceSecret.prepare(
        labels_of(victim), private, public, REVEALED, BlindWalk(seed=seed), REGRESSOR, seed
    )
    scheme = DatasetInferenceScheme(secret, m=M, draws=100)
    notebook = NotebookInference(BlindWalk(seed=seed), seed=seed)
    reference = notebook.fit(labels_of(victim), private, public)

    def both(name: str, kind: str, model, extra: dict | None = None) -> None:
        if (seed, name, "calibrated") not in done:
            console.print(record(store, scheme, seed, name, kind, model, extra), highlight=False)
        if (seed, name, NOTEBOOK) not in done:
            line = record_notebook(store, notebook, reference, seed, name, kind, model, extra)
            console.print(line, highlight=False)

    def finished(name: str) -> bool:
        return all((seed, name, c) in done for c in ("calibrated", NOTEBOOK))

    both("victim", "victim", victim)
    evaluation = Evaluation.of(victim, data.test, seed=seed)
    for attack, output, budget in SURROGATES:
        name = f"{attack}-{output}-{budget}"
        if finished(name):
            continue
        result, measured = measure_extraction(
            victim, ATTACKS[attack](), data.pool.x, evaluation, budget, output,
            "fashion-mnist", seed,
        )  # fmt: skip
        extra = {"fidelity_test": measured.fidelity_test, "extraction_queries": budget}
        both(name, "surrogate", result.surrogate, extra)
    for index in range(independent):
        name = f"independent-pool-{index}"
        if finished(name):
            continue
        config = TrainConfig(epochs=victim.card.training["epochs"], seed=1000 + 10 * seed + index)
        both(name, "independent", train_model(replace(data, train=data.pool), "cnn", config))


if __name__ == "__main__":
    main()
