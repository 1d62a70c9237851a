"""One extraction measurement: a victim behind an API, an attack, and the metrics of its result.

Shared by the CLI's ``attack`` command, the quickstart and the benchmarks, so that every number
modelheist reports is computed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.progress import Progress

from modelheist.api.oracle import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack, ExtractionResult
from modelheist.data.registry import Split
from modelheist.defenses.registry import parse_output
from modelheist.metrics import uniform_inputs
from modelheist.models.architectures import TORCH_ARCHITECTURES
from modelheist.models.classifier import Classifier, predict_labels


@dataclass(frozen=True)
class ExtractionMeasurement:
    """The figures of one extraction run (Tramèr's 1-R_test and 1-R_unif among them)."""

    attack: str
    transfer_set: str
    output: str
    budget: int
    queries_used: int
    victim_accuracy: float
    surrogate_accuracy: float
    fidelity_test: float
    fidelity_uniform: float
    seconds: float


def uniform_box(
    victim: Classifier, reference: np.ndarray
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """The input domain for 1-R_unif: the card's input range, else the reference data's range."""
    if victim.card.input_range is not None:
        low, high = victim.card.input_range
        return low, high
    flat = reference.reshape(len(reference), -1)
    shape = tuple(victim.card.input_shape)
    return flat.min(axis=0).reshape(shape), flat.max(axis=0).reshape(shape)


@dataclass(frozen=True)
class Evaluation:
    """The victim's labels on the evaluation split and on uniform inputs, computed once and
    shared by every surrogate measured against that victim."""

    split: Split
    victim_test_labels: np.ndarray
    uniform_inputs: np.ndarray
    victim_uniform_labels: np.ndarray

    @classmethod
    def of(
        cls, victim: Classifier, split: Split, n_uniform: int = 5000, seed: int = 0
    ) -> Evaluation:
        low, high = uniform_box(victim, split.x)
        uniform = uniform_inputs(tuple(victim.card.input_shape), n_uniform, seed, low, high)
        return cls(split, predict_labels(victim, split.x), uniform, predict_labels(victim, uniform))

    @property
    def victim_accuracy(self) -> float:
        return float((self.victim_test_labels == self.split.y).mean())

    def score(self, surrogate: Classifier) -> tuple[float, float, float]:
        """(surrogate accuracy, 1-R_test, 1-R_unif)."""
        test = predict_labels(surrogate, self.split.x)
        uniform = predict_labels(surrogate, self.uniform_inputs)
        return (
            float((test == self.split.y).mean()),
            float((test == self.victim_test_labels).mean()),
            float((uniform == self.victim_uniform_labels).mean()),
        )


def measure_extraction(
    victim: Classifier,
    attack: ExtractionAttack,
    transfer_set: np.ndarray,
    evaluation: Evaluation,
    budget: int,
    output: str = "probs",
    transfer_name: str = "",
    seed: int = 0,
    surrogate_architecture: str | None = None,
    progress: Progress | None = None,
) -> tuple[ExtractionResult, ExtractionMeasurement]:
    """Serve ``victim`` at granularity ``output``, run ``attack`` within ``budget`` queries
    from a fresh client, and measure the surrogate against ``evaluation``.

    The surrogate's architecture defaults to the victim's when that is a network (the attacker
    knows the general structure, as in PRADA and Knockoff), else to an MLP.
    """
    service = PredictionService(victim, parse_output(output))
    oracle = LocalOracle.for_new_client(service, budget)
    if surrogate_architecture is None:
        arch = victim.card.architecture
        surrogate_architecture = arch if arch in TORCH_ARCHITECTURES else "mlp"
    knowledge = AttackerKnowledge(transfer_set, budget, surrogate_architecture, seed)
    result = attack.run(oracle, knowledge, progress)
    surrogate_accuracy, fidelity_test, fidelity_uniform = evaluation.score(result.surrogate)
    measurement = ExtractionMeasurement(
        attack=attack.name,
        transfer_set=transfer_name,
        output=output,
        budget=budget,
        queries_used=service.client(oracle.client_id).queries_used,
        victim_accuracy=evaluation.victim_accuracy,
        surrogate_accuracy=surrogate_accuracy,
        fidelity_test=fidelity_test,
        fidelity_uniform=fidelity_uniform,
        seconds=result.seconds,
    )
    return result, measurement
