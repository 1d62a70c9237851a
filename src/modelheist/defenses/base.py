"""The ``Defense`` seam: one stage of a prediction API's output pipeline.

A stage sees ``(client state, inputs, answer)`` and returns the answer it lets through: it may
change it (granularity, rounding, perturbation, watermarking), flag it (detectors raise an alarm
by adding a flag) or refuse by raising a ``ModelheistError``. Per-client state is an explicit,
JSON-serialisable dict owned by the service, so that it can be saved and restored.

Hyper-parameters go to the constructor; data goes to :meth:`Defense.apply`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from modelheist.api.answer import Answer, OutputKind
from modelheist.errors import ModelheistError


class Defense(ABC):
    """A stage of the output pipeline of a :class:`~modelheist.api.service.PredictionService`."""

    #: Registry name used in specs such as ``round:2``.
    name: ClassVar[str]
    #: The output kind the stage leaves behind, or None if it keeps the incoming kind.
    output_kind: ClassVar[OutputKind | None] = None
    #: Whether the stage needs full probability vectors (so must precede top-k/labels stages).
    requires_probabilities: ClassVar[bool] = False
    #: Whether the stage keeps no state and treats each input independently, so that the service
    #: may apply it once to the rows of several clients' batches (micro-batching).
    rowwise: ClassVar[bool] = False

    def initial_state(self) -> dict[str, Any]:
        """Fresh per-client state (JSON-serialisable)."""
        return {}

    @abstractmethod
    def apply(self, inputs: np.ndarray, answer: Answer, state: dict[str, Any]) -> Answer:
        """Return the answer this stage lets through for ``inputs``; may update ``state``."""

    @abstractmethod
    def spec(self) -> str:
        """The spec string that :func:`~modelheist.defenses.registry.parse_defense` reads back."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"


def check_pipeline(stages: Sequence[Defense]) -> None:
    """Refuse a pipeline in which a stage needs probabilities that an earlier stage removed."""
    kind: OutputKind = "probabilities"
    for stage in stages:
        if stage.requires_probabilities and kind != "probabilities":
            raise ModelheistError(
                f"stage {stage.spec()!r} needs full probabilities but follows a stage that "
                f"returns {kind}; put it before the top-k/labels stage"
            )
        kind = stage.output_kind or kind


def require_probabilities(stage: Defense, answer: Answer) -> np.ndarray:
    """The answer's probability vectors, or a clear error for a misordered pipeline."""
    if answer.probabilities is None:
        raise ModelheistError(
            f"stage {stage.spec()!r} needs full probabilities; place it before top-k/labels stages"
        )
    return answer.probabilities
