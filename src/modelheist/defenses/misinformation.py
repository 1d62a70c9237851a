"""``misinform``: adaptive misinformation (Kariyappa & Qureshi, "Defending Against Model Stealing
Attacks With Adaptive Misinformation", CVPR '20, §4).

Each query's answer y = f(x) is mixed with a misinformation function's f_hat(x), a model the
owner trained to be wrong (:func:`train_misinformation_model`):

    y' = (1 - alpha) y + alpha f_hat(x),   alpha = sigmoid(nu (tau - max_k y_k)),

so that confident (in-distribution) queries are answered truthfully and queries that the
model is unsure of, the out-of-distribution queries an extraction attack makes, get the wrong
answer, in the same format (a probability vector and its arg-max label), so the client cannot
tell. With ``flagged=true``, every query of a client that a detector has raised an alarm about
is misinformed (alpha = 1): put the detectors before this stage.

Deliberate deviation: the paper scores out-of-distribution-ness with a model trained with
Outlier Exposure (Hendrycks et al. ICLR '19); this stage uses the served model's own maximum
softmax probability (no second model to train and serve), which a detector's alarm can
override. The misinformation model and the loss it is trained with are the paper's.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from modelheist.defenses.base import Capabilities, Defense, StageContext, require_probabilities
from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError
from modelheist.oracle.answer import Answer


def misinformation_weight(confidence: np.ndarray, tau: float, nu: float) -> np.ndarray:
    """alpha = sigmoid(nu (tau - confidence)): near 1 below ``tau``, near 0 above it."""
    from scipy.special import expit

    return expit(nu * (tau - np.asarray(confidence, np.float64)))


class AdaptiveMisinformation(Defense):
    """``misinform:model=DIR,tau=0.9,nu=1000,flagged=true`` (see the module docstring)."""

    name: ClassVar[str] = "misinform"
    capabilities: ClassVar[Capabilities] = Capabilities(
        changes_labels=True, needs_probabilities=True, notes=("misinformed",)
    )

    def __init__(self, model: str, tau: float = 0.9, nu: float = 1000.0, flagged: bool = True):
        if not 0.0 < tau <= 1.0:
            raise ModelheistError(f"misinform: tau must lie in (0, 1], got {tau}")
        if not nu > 0:
            raise ModelheistError(f"misinform: nu must be > 0, got {nu}")
        self.model = model
        self.tau = tau
        self.nu = nu
        self.flagged = flagged
        self._misinformation = None

    def open(self) -> None:
        from modelheist.models.store import load_model

        self._misinformation = load_model(self.model)

    def check_model(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        if self._misinformation is None:
            self.open()
        card = self._misinformation.card
        if tuple(card.input_shape) != tuple(input_shape) or card.num_classes != num_classes:
            raise ModelheistError(
                f"misinform: {self.model} takes inputs {tuple(card.input_shape)} and answers "
                f"{card.num_classes} classes; the served model {tuple(input_shape)} and "
                f"{num_classes}"
            )

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        if self._misinformation is None:
            self.open()
        p = require_probabilities(self, answer).astype(np.float64)
        alpha = misinformation_weight(p.max(axis=1), self.tau, self.nu)
        if self.flagged and context.alarms:
            alpha = np.ones(len(p))
        if not (alpha > 1e-12).any():
            return answer
        wrong = self._misinformation.predict_proba(inputs).astype(np.float64)
        mixed = (1.0 - alpha)[:, None] * p + alpha[:, None] * wrong
        mixed /= mixed.sum(axis=1, keepdims=True)
        misinformed = int((alpha >= 0.5).sum())
        if misinformed:
            context.note(f"misinformed:{misinformed}")
        return Answer(mixed.argmax(axis=1), mixed)

    def spec(self) -> str:
        return (
            f"{self.name}:model={self.model},tau={self.tau!r},nu={self.nu!r},"
            f"flagged={str(self.flagged).lower()}"
        )
