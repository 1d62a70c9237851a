"""The malicious accuser's false watermark (Liu et al., "False Claims against Model Ownership
Resolution", USENIX Security '24): transferable adversarial examples, crafted on models the
accuser holds, passed off as a watermark set so that an independently trained suspect "matches"
it.

:func:`craft_false_watermark` starts from natural inputs, draws for each a target label other
than what the accuser's models predict, and runs targeted I-FGSM in an L-infinity ball of
``epsilon`` (16/255 as in the paper) against the mean of the accuser's models (their averaged
probabilities; an ensemble makes the examples transfer further). The inputs and target
labels are the false watermark: to a naive verifier, an independent model that gives many of
them their target label looks derived.

:func:`grind_trigger_seed` is the accuser's answer to the countermeasure that makes triggers a
function of a committed seed (they can no longer be optimised): search many seeds and keep the
one whose generated triggers the accuser's models label most often with the trigger's label
(natural-image triggers carry their class, so a lucky draw transfers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from modelheist.errors import ModelheistError
from modelheist.models.adversarial import sign_steps
from modelheist.models.architectures import MeanOfMembers
from modelheist.models.classifier import TorchClassifier, predict_labels

#: The paper's perturbation budget (L-infinity, inputs in [0, 1]).
PAPER_EPSILON = 16 / 255


@dataclass(frozen=True)
class FalseWatermark:
    """Inputs and the labels the accuser claims a derived model gives them."""

    inputs: np.ndarray
    labels: np.ndarray


def craft_false_watermark(
    models: Sequence[TorchClassifier],
    natural: np.ndarray,
    num_classes: int,
    epsilon: float = PAPER_EPSILON,
    steps: int = 40,
    step_size: float | None = None,
    seed: int = 0,
) -> FalseWatermark:
    """Targeted I-FGSM on the accuser's ``models`` from ``natural`` inputs in [0, 1]; each
    target label is drawn uniformly among the classes other than the first model's answer.
    ``step_size`` defaults to epsilon / 8 (several passes over the ball, which transfers
    better than epsilon / steps)."""
    if not models:
        raise ModelheistError("a false claim needs at least one model to craft on")
    if len(natural) == 0:
        raise ModelheistError("a false claim needs some natural inputs to start from")
    if not 0.0 < epsilon <= 1.0 or steps < 1:
        raise ModelheistError("epsilon must lie in (0, 1] and steps be at least 1")
    ensemble = MeanOfMembers([m.module for m in models]).eval()
    with torch.no_grad():
        start = predict_labels(models[0], natural)
    rng = np.random.default_rng(seed)
    offsets = rng.integers(1, num_classes, size=len(natural))
    targets = (start + offsets) % num_classes  # never the accuser's own answer
    inputs = sign_steps(
        ensemble,
        natural,
        targets,
        epsilon,
        steps,
        step_size if step_size is not None else epsilon / 8,
        targeted=True,
        bounds=(0.0, 1.0),
    )
    return FalseWatermark(inputs.astype(np.float32), targets.astype(np.int64))


def grind_trigger_seed(
    models: Sequence[TorchClassifier],
    generate: Callable[[int], tuple[np.ndarray, np.ndarray]],
    tries: int,
    seed: int = 0,
) -> tuple[int, float]:
    """The seed, among ``tries`` drawn from ``seed``, whose triggers (``generate(seed)`` ->
    inputs, labels) the accuser's models most often label with the trigger's label; returns it
    and that agreement (averaged over the models)."""
    if tries < 1:
        raise ModelheistError("grinding needs at least one try")
    candidates = np.random.default_rng(seed).integers(0, 2**62, size=tries)
    best, best_agreement = int(candidates[0]), -1.0
    for candidate in candidates:
        inputs, labels = generate(int(candidate))
        agreement = float(np.mean([(predict_labels(m, inputs) == labels).mean() for m in models]))
        if agreement > best_agreement:
            best, best_agreement = int(candidate), agreement
    return best, best_agreement
