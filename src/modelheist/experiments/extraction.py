"""One extraction measurement: a victim behind an API, an attack, and the metrics of its result.

Shared by the CLI's ``attack`` command, the quickstart and the benchmarks, so that every number
modelheist reports is computed the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.progress import Progress

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack, ExtractionResult
from modelheist.data.registry import Split
from modelheist.defenses.registry import parse_output
from modelheist.metrics import uniform_inputs
from modelheist.models.architectures import TORCH_ARCHITECTURES
from modelheist.models.classifier import Classifier, predict_labels
from modelheist.models.text import ARCHITECTURE as TEXT_ARCHITECTURE  # no transformers yet
from modelheist.oracle import Oracle
from modelheist.oracle.inputs import takes_text


@dataclass(frozen=True)
class ExtractionMeasurement:
    """The figures of one extraction run (Tramèr's 1-R_test and 1-R_unif among them)."""

    attack: str
    transfer_set: str
    output: str
    budget: int
    queries_used: int
    victim_accuracy: float | None  # None: no local copy of the victim to evaluate against
    surrogate_accuracy: float | None
    fidelity_test: float | None
    fidelity_uniform: float | None
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
    shared by every surrogate measured against that victim.

    A text victim has no uniform inputs (no box to draw strings from): its 1-R_unif is None.
    A victim whose classes are not the split's (VADER's sentiments on topic-labelled
    quotations) has no accuracy: only agreement (1-R_test) is measured.
    """

    split: Split
    victim_test_labels: np.ndarray
    uniform_inputs: np.ndarray | None
    victim_uniform_labels: np.ndarray | None
    labelled: bool = True  # the split's labels are the victim's classes

    @classmethod
    def of(
        cls,
        victim: Classifier,
        split: Split,
        n_uniform: int = 5000,
        seed: int = 0,
        classes: Sequence[str] | None = None,
    ) -> Evaluation:
        """``classes``: the split's class names, where known (None: the victim's own)."""
        labelled = classes is None or list(classes) == list(victim.card.classes)
        if takes_text(tuple(victim.card.input_shape)):
            return cls(split, predict_labels(victim, split.x), None, None, labelled)
        low, high = uniform_box(victim, split.x)
        uniform = uniform_inputs(tuple(victim.card.input_shape), n_uniform, seed, low, high)
        return cls(
            split,
            predict_labels(victim, split.x),
            uniform,
            predict_labels(victim, uniform),
            labelled,
        )

    @property
    def victim_accuracy(self) -> float | None:
        if not self.labelled:
            return None
        return float((self.victim_test_labels == self.split.y).mean())

    def score(self, surrogate: Classifier) -> tuple[float | None, float, float | None]:
        """(surrogate accuracy, 1-R_test, 1-R_unif); None where not measured (see above)."""
        test = predict_labels(surrogate, self.split.x)
        uniform = None
        if self.uniform_inputs is not None:
            agree = predict_labels(surrogate, self.uniform_inputs) == self.victim_uniform_labels
            uniform = float(agree.mean())
        return (
            float((test == self.split.y).mean()) if self.labelled else None,
            float((test == self.victim_test_labels).mean()),
            uniform,
        )


def default_surrogate(input_shape: tuple[int, ...], victim_architecture: str | None = None) -> str:
    """The attacker's network: the victim's when that is a network (the attacker knows the
    general structure, as in PRADA and Knockoff), else a CNN for images, the text encoder for
    text and an MLP otherwise."""
    if takes_text(input_shape):
        return TEXT_ARCHITECTURE
    if victim_architecture in TORCH_ARCHITECTURES:
        return victim_architecture
    return "cnn" if len(input_shape) == 3 else "mlp"


def measure_extraction(
    victim: Classifier | None,
    attack: ExtractionAttack,
    transfer_set: np.ndarray,
    evaluation: Evaluation | None,
    budget: int,
    output: str = "probs",
    transfer_name: str = "",
    seed: int = 0,
    surrogate_architecture: str | None = None,
    progress: Progress | None = None,
    oracle: Oracle | None = None,
    transfer_labels: np.ndarray | None = None,
) -> tuple[ExtractionResult, ExtractionMeasurement]:
    """Run ``attack`` within ``budget`` queries and measure the surrogate against ``evaluation``.

    The attack queries ``oracle`` when one is given (e.g. an :class:`HttpOracle`), else
    ``victim`` served in-process at granularity ``output`` to a fresh client. Without an
    evaluation (an attack on a URL with no local copy of the victim) the fidelity figures are
    None. ``transfer_labels`` is the transfer set's own annotation, if the attacker has one.
    """
    if oracle is None:
        if victim is None:
            raise ValueError("measure_extraction needs a victim or an oracle")
        oracle = LocalOracle.for_new_client(PredictionService(victim, parse_output(output)), budget)
    if surrogate_architecture is None:
        surrogate_architecture = default_surrogate(
            oracle.input_shape, victim.card.architecture if victim is not None else None
        )
    knowledge = AttackerKnowledge(
        transfer_set, budget, surrogate_architecture, seed, transfer_labels
    )
    result = attack.run(oracle, knowledge, progress)
    scores = evaluation.score(result.surrogate) if evaluation is not None else (None, None, None)
    measurement = ExtractionMeasurement(
        attack=attack.name,
        transfer_set=transfer_name,
        output=output,
        budget=budget,
        queries_used=result.queries_used,
        victim_accuracy=evaluation.victim_accuracy if evaluation is not None else None,
        surrogate_accuracy=scores[0],
        fidelity_test=scores[1],
        fidelity_uniform=scores[2],
        seconds=result.seconds,
    )
    return result, measurement
