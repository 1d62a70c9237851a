"""The ``Oracle``: the black-box boundary an attack or a verifier sees (docs/architecture.md,
"The Oracle seam").

An oracle knows only what an API client would: the input shape, the class names, the output
granularity, its budget, and the answers to its queries. Two transports implement it over the
same :class:`~modelheist.api.service.PredictionService`: in-process
(:class:`~modelheist.api.local.LocalOracle`) and HTTP
(:class:`~modelheist.api.http_client.HttpOracle`); both wait out a rate limit the same way.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from modelheist.errors import RateLimitedError
from modelheist.oracle.answer import Answer, OutputKind, concatenate
from modelheist.oracle.inputs import as_batch


class Oracle(ABC):
    """Query access to a victim for one client."""

    #: Largest batch sent in one call; larger queries are split.
    max_batch: int = 1024
    #: Longest total wait, in seconds, for a rate limit to allow a batch before giving up.
    max_rate_wait: float = 600.0

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
        """Send one batch of at most :attr:`max_batch` inputs (no waiting on rate limits)."""

    @property
    def input_range(self) -> tuple[float, float] | None:
        """The inputs' declared domain (e.g. [0, 1] for images), if the API publishes one."""
        return None

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        """An image-to-image model's output shape (its answers are images); None for a
        classifier."""
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
    def network(self) -> Any | None:
        """The model's weights (a ``torch.nn.Module``) when whoever holds this oracle also holds
        the model itself, as a judge holds a seized model folder (:class:`WhiteBoxOracle`);
        None through an API. Only white-box ownership tests read it; attacks never do."""
        return None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries_used

    def query(self, x: np.ndarray) -> Answer:
        """Answers for ``x`` (split into batches the API accepts)."""
        x = as_batch(x, self.input_shape)  # float32 (NaN: a missing feature), or strings
        step = self.max_batch
        return concatenate([self._patient_query(x[i : i + step]) for i in range(0, len(x), step)])

    def _patient_query(self, x: np.ndarray) -> Answer:
        """One batch; a rate limit is waited out, up to :attr:`max_rate_wait` seconds in all."""
        waited = 0.0
        while True:
            try:
                return self._query_batch(x)
            except RateLimitedError as exc:
                if waited + exc.retry_after > self.max_rate_wait:
                    raise
                time.sleep(exc.retry_after)
                waited += exc.retry_after


class ForwardingOracle(Oracle):
    """An oracle that passes everything to ``inner``: the base of wrappers that change one
    thing (a hard budget, the weights at hand)."""

    def __init__(self, inner: Oracle):
        self.inner = inner
        self.max_batch = inner.max_batch
        self.max_rate_wait = inner.max_rate_wait

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.inner.input_shape

    @property
    def classes(self) -> list[str]:
        return self.inner.classes

    @property
    def output_kind(self) -> OutputKind:
        return self.inner.output_kind

    @property
    def input_range(self) -> tuple[float, float] | None:
        return self.inner.input_range

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        return self.inner.output_shape

    @property
    def returns_leaves(self) -> bool:
        return self.inner.returns_leaves

    @property
    def accepts_missing(self) -> bool:
        return self.inner.accepts_missing

    @property
    def network(self) -> Any | None:
        return self.inner.network

    @property
    def budget(self) -> int | None:
        return self.inner.budget

    @property
    def queries_used(self) -> int:
        return self.inner.queries_used

    def _query_batch(self, x: np.ndarray) -> Answer:
        return self.inner._query_batch(x)


class WhiteBoxOracle(ForwardingOracle):
    """``inner``'s answers, with the model's weights at hand (:attr:`Oracle.network`): a suspect
    model folder that a judge loaded, for ownership tests that read weights (radioactive data's
    white-box test). Queries go to ``inner`` and are counted there."""

    def __init__(self, inner: Oracle, network: Any):
        super().__init__(inner)
        self._network = network

    @property
    def network(self) -> Any:
        return self._network
