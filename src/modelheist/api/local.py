"""``LocalOracle``: a client of a :class:`~modelheist.api.service.PredictionService` in the
same process, holding an API key like any HTTP client.

It answers exactly what the HTTP API answers (:meth:`PredictionService.predict` is what both
call): the same authentication, revocation, rate limit, budget and pipeline, and the same
:class:`~modelheist.oracle.Answer`, with nothing of what the stages noted. It solves the
proofs of work a ``pow`` stage asks for, as an HTTP client does, and counts the time.
"""

from __future__ import annotations

import time

import numpy as np

from modelheist.api.service import PredictionService
from modelheist.defenses.proof_of_work import solve_challenge
from modelheist.errors import ProofOfWorkRequired
from modelheist.oracle.answer import Answer, OutputKind
from modelheist.oracle.base import Oracle


class LocalOracle(Oracle):
    """In-process oracle: the holder of ``api_key`` at ``service``."""

    def __init__(self, service: PredictionService, api_key: str):
        self.service = service
        self.api_key = api_key
        self.max_batch = min(Oracle.max_batch, service.max_batch)
        self.proof_seconds = 0.0  # time spent solving the service's proofs of work

    @classmethod
    def for_new_client(
        cls,
        service: PredictionService,
        budget: int | None,
        client_id: str = "attacker",
        rate: float | None = None,
    ) -> LocalOracle:
        """Add (or reset) ``client_id`` with ``budget`` and ``rate`` at ``service`` and return
        its oracle."""
        return cls(service, service.add_client(client_id, budget, rate))

    @property
    def client_id(self) -> str:
        return self.service.authenticate(self.api_key).name

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
    def output_shape(self) -> tuple[int, ...] | None:
        return self.service.output_shape

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
        proof = None
        for _ in range(3):  # a challenge can expire or change between two tries
            try:
                return self.service.predict(self.api_key, x, proof).answer
            except ProofOfWorkRequired as needed:
                start = time.perf_counter()
                proof = solve_challenge(needed.challenge, self.service.validate(x))
                self.proof_seconds += time.perf_counter() - start
        return self.service.predict(self.api_key, x, proof).answer
