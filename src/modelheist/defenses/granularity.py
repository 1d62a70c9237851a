"""Output-granularity stages (Tramèr et al. '16 §8 and Orekondy et al. '19 §6: rounding,
top-k and label-only answers as counter-measures that reduce what each answer leaks)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from modelheist.defenses.base import Capabilities, Defense, StageContext, require_probabilities
from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError
from modelheist.oracle.answer import Answer


class Rounding(Defense):
    """Round each probability to ``decimals`` decimal places (no renormalisation)."""

    name: ClassVar[str] = "round"
    capabilities: ClassVar[Capabilities] = Capabilities(
        rowwise=True, needs_probabilities=True, notes=("rounded",)
    )

    def __init__(self, decimals: int):
        if not 0 <= decimals <= 16:
            raise ModelheistError(f"round: decimals must be between 0 and 16, got {decimals}")
        self.decimals = decimals

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        p = require_probabilities(self, answer)
        context.note(f"rounded:{self.decimals}")
        return Answer(answer.labels, np.round(p.astype(np.float64), self.decimals))

    def spec(self) -> str:
        return f"round:{self.decimals}"


class TopK(Defense):
    """Return only the ``k`` most likely classes and their probabilities."""

    name: ClassVar[str] = "top-k"
    capabilities: ClassVar[Capabilities] = Capabilities(
        rowwise=True, needs_probabilities=True, output_kind="top_k"
    )

    def __init__(self, k: int):
        if k < 1:
            raise ModelheistError(f"top-k: k must be at least 1, got {k}")
        self.k = k

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        p = require_probabilities(self, answer)
        k = min(self.k, p.shape[1])
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return Answer(answer.labels, None, order, np.take_along_axis(p, order, axis=1))

    def spec(self) -> str:
        return f"top-k:{self.k}"


class LabelsOnly(Defense):
    """Return only the predicted label."""

    name: ClassVar[str] = "labels"
    capabilities: ClassVar[Capabilities] = Capabilities(rowwise=True, output_kind="labels")

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        return Answer(answer.labels)

    def spec(self) -> str:
        return "labels"
