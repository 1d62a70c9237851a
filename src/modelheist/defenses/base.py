"""The ``Defense`` seam: one stage of a prediction API's output pipeline.

A stage sees ``(client state, inputs, answer)`` and returns the answer it lets through: it may
change it (granularity, rounding, perturbation, watermarking), flag it (detectors raise an alarm
by adding a flag) or refuse by raising a ``ModelheistError``. Per-client state is an explicit,
JSON-serialisable dict owned by the service, so that it can be saved and restored.

Hyper-parameters go to the constructor; data goes to :meth:`Defense.apply`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from modelheist.api.answer import Answer, OutputKind


class Defense(ABC):
    """A stage of the output pipeline of a :class:`~modelheist.api.service.PredictionService`."""

    #: Registry name used in specs such as ``round:2``.
    name: ClassVar[str]
    #: The output kind the stage leaves behind, or None if it keeps the incoming kind.
    output_kind: ClassVar[OutputKind | None] = None

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
