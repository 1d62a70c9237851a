"""The ``Oracle``: the black-box boundary an attack sees (DESIGN.md, "The seams").

An attack knows only what an API client would: the input shape, the class names, the output
granularity, its budget, and the answers to its queries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from modelheist.api.answer import Answer, OutputKind, concatenate
from modelheist.api.service import PredictionService


class Oracle(ABC):
    """Query access to a victim for one client."""

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    @abstractmethod
    def classes(self) -> list[str]: ...

    @property
    @abstractmethod
    def output_kind(self) -> OutputKind: ...

    @property
    @abstractmethod
    def budget(self) -> int | None: ...

    @property
    @abstractmethod
    def queries_used(self) -> int: ...

    @abstractmethod
    def _query_batch(self, x: np.ndarray) -> Answer:
        """Send one batch of at most :attr:`max_batch` inputs."""

    #: Largest batch sent in one call; larger queries are split.
    max_batch: int = 1024

    @property
    def input_range(self) -> tuple[float, float] | None:
        """The inputs' declared domain (e.g. [0, 1] for images), if the API publishes one."""
        return None

    @property
    def returns_leaves(self) -> bool:
        """Whether answers carry the tree node reached (``Answer.leaves``), as BigML's did."""
        return False

    @property
    def accepts_missing(self) -> bool:
        """Whether inputs may leave features missing (NaN): BigML's incomplete queries."""
        return False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries_used

    def query(self, x: np.ndarray) -> Answer:
        """Answers for ``x`` (split into batches the API accepts)."""
        x = np.asarray(x, np.float32)  # NaN (a missing feature) passes through
        parts = [
            self._query_batch(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)
        ]
        return concatenate(parts)


class LocalOracle(Oracle):
    """In-process oracle: one client of a :class:`PredictionService`."""

    def __init__(self, service: PredictionService, client_id: str):
        self.service = service
        self.client_id = client_id
        self.max_batch = min(Oracle.max_batch, service.max_batch)

    @classmethod
    def for_new_client(
        cls, service: PredictionService, budget: int | None, client_id: str = "attacker"
    ) -> LocalOracle:
        """Register ``client_id`` with ``budget`` on ``service`` and return its oracle."""
        service.register_client(client_id, budget)
        return cls(service, client_id)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.service.input_shape

    @property
    def classes(self) -> list[str]:
        return self.service.classes

    @property
    def output_kind(self) -> OutputKind:
        return self.service.output_kind

    @property
    def input_range(self) -> tuple[float, float] | None:
        return self.service.input_range

    @property
    def returns_leaves(self) -> bool:
        return self.service.leaves

    @property
    def accepts_missing(self) -> bool:
        return self.service.incomplete_queries

    @property
    def budget(self) -> int | None:
        return self.service.client(self.client_id).budget

    @property
    def queries_used(self) -> int:
        return self.service.client(self.client_id).queries_used

    def _query_batch(self, x: np.ndarray) -> Answer:
        return self.service.query(self.client_id, x)
