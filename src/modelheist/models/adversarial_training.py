"""PGD adversarial training (Madry et al., ICLR '18, §3) as a training protection, and the
adversarial accuracy it buys (accuracy on PGD examples of the test inputs under the same attack).

Each batch is replaced by PGD examples of it crafted against the network as it is at that step
(L-infinity, random start), with the network in evaluation mode while crafting (BatchNorm's
running statistics, no dropout) and back in training mode for the step.

The conflicts study's setting (Szyller & Asokan, arXiv 2207.01991, §5; the talk's table):
epsilon 0.25, step 0.01, 25 iterations, random start, on inputs scaled to [-1, 1]; modelheist's
inputs lie in [0, 1], so the same ball is epsilon 0.125 and step 0.005 here (the defaults).
Deliberate deviation: none in the attack; the optimiser and its rate are the Trainer's
(:class:`~modelheist.models.training.TrainConfig`: AdamW by default; the conflicts table's
SGD, whose adversarial cells may take a rate of their own, ``ConflictsConfig.adv_lr``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from modelheist.errors import ModelheistError
from modelheist.models.adversarial import pgd, sign_steps
from modelheist.models.classifier import Classifier, TorchClassifier
from modelheist.models.training import TrainingProtection, TrainingRun

#: The study's attack on [0, 1] inputs: (epsilon, step size, iterations).
STUDY_PGD = (0.125, 0.005, 25)


def _check_pgd(epsilon: float, step_size: float, steps: int) -> None:
    if not 0.0 < epsilon < 1.0 or not (math.isfinite(step_size) and step_size > 0) or steps < 1:
        raise ModelheistError(
            f"PGD needs epsilon in (0, 1), a step size > 0 and at least one step; got epsilon "
            f"{epsilon}, step {step_size}, {steps} steps"
        )


@dataclass
class PgdAdversarialTraining(TrainingProtection):
    """Train on PGD examples of every batch (module docstring): ``steps`` steps of
    ``step_size`` in the L-infinity ball of radius ``epsilon``, from a random start."""

    name: ClassVar[str] = "adversarial-training"

    epsilon: float = STUDY_PGD[0]
    step_size: float = STUDY_PGD[1]
    steps: int = STUDY_PGD[2]

    def __post_init__(self) -> None:
        _check_pgd(self.epsilon, self.step_size, self.steps)

    def prepare(self, run: TrainingRun) -> None:
        run.notes[self.name] = torch.Generator().manual_seed(run.config.seed + 2)

    def transform_batch(
        self, run: TrainingRun, x: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = targets.argmax(1) if run.soft else targets
        module = run.module
        hooks = hasattr(module, "disable_hooks")  # Opacus: no per-example gradients while crafting
        if hooks:
            module.disable_hooks()
        module.eval()
        try:
            adversarial = pgd(
                module,
                x,
                labels,
                self.epsilon,
                self.steps,
                self.step_size,
                random_start=True,
                bounds=(0.0, 1.0),
                generator=run.notes[self.name],
            )
        finally:
            module.train()
            if hooks:
                module.enable_hooks()
        return adversarial, targets


def adversarial_accuracy(
    model: Classifier,
    x: np.ndarray,
    y: np.ndarray,
    epsilon: float = STUDY_PGD[0],
    step_size: float = STUDY_PGD[1],
    steps: int = STUDY_PGD[2],
    seed: int = 0,
) -> float:
    """Accuracy of ``model`` on PGD examples of ``x`` (labels ``y``), random start seeded by
    ``seed``: the robustness adversarial training buys, measurable on any network."""
    _check_pgd(epsilon, step_size, steps)
    if not isinstance(model, TorchClassifier):
        raise ModelheistError(
            f"adversarial accuracy needs a network's gradients, not {model.card.architecture}"
        )
    if len(x) == 0:
        raise ModelheistError("adversarial accuracy needs test inputs")
    low, high = model.card.input_range or (0.0, 1.0)
    attacked = sign_steps(
        model.module, x, y, epsilon, steps, step_size, random_start=True, bounds=(low, high),
        seed=seed,
    )  # fmt: skip
    return float((model.predict_proba(attacked).argmax(1) == np.asarray(y)).mean())
