"""Output-granularity stages (Tramèr et al. '16 §8 and Orekondy et al. '19 §6: rounding,
top-k and label-only answers as counter-measures that reduce what each answer leaks)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from modelheist.api.answer import Answer, OutputKind
from modelheist.defenses.base import Defense, require_probabilities
from modelheist.errors import ModelheistError


class Rounding(Defense):
    """Round each probability to ``decimals`` decimal places (no renormalisation)."""

    name: ClassVar[str] = "round"
    rowwise: ClassVar[bool] = True
    requires_probabilities: ClassVar[bool] = True

    def __init__(self, decimals: int):
        if not 0 <= decimals <= 16:
            raise ModelheistError(f"round: decimals must be between 0 and 16, got {decimals}")
        self.decimals = decimals

    def apply(self, inputs: np.ndarray, answer: Answer, state: dict[str, Any]) -> Answer:
        p = require_probabilities(self, answer)
        rounded = np.round(p.astype(np.float64), self.decimals)
        return Answer(answer.labels, rounded, flags=answer.flags).with_flag(
            f"rounded:{self.decimals}"
        )

    def spec(self) -> str:
        return f"round:{self.decimals}"


class TopK(Defense):
    """Return only the ``k`` most likely classes and their probabilities."""

    name: ClassVar[str] = "top-k"
    rowwise: ClassVar[bool] = True
    requires_probabilities: ClassVar[bool] = True
    output_kind: ClassVar[OutputKind | None] = "top_k"

    def __init__(self, k: int):
        if k < 1:
            raise ModelheistError(f"top-k: k must be at least 1, got {k}")
        self.k = k

    def apply(self, inputs: np.ndarray, answer: Answer, state: dict[str, Any]) -> Answer:
        p = require_probabilities(self, answer)
        k = min(self.k, p.shape[1])
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return Answer(
            answer.labels, None, order, np.take_along_axis(p, order, axis=1), answer.flags
        )

    def spec(self) -> str:
        return f"top-k:{self.k}"


class LabelsOnly(Defense):
    """Return only the predicted label."""

    name: ClassVar[str] = "labels"
    rowwise: ClassVar[bool] = True
    output_kind: ClassVar[OutputKind | None] = "labels"

    def apply(self, inputs: np.ndarray, answer: Answer, state: dict[str, Any]) -> Answer:
        return Answer(answer.labels, flags=answer.flags)

    def spec(self) -> str:
        return "labels"
