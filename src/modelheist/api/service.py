"""``PredictionService``: a model behind an inference API (DESIGN.md, "The seams").

The service validates each query batch, enforces the client's budget, computes the model's
probabilities and passes them through the ordered defense pipeline (output granularity and any
other stages). Clients, budgets, each stage's per-client state and the audit log live in a
:class:`~modelheist.api.ledger.Ledger` (SQLite; a private in-memory one by default). An answer
is returned only after its audit record, the client's usage and the stages' new state are
committed together. The in-process :class:`~modelheist.api.oracle.LocalOracle` and the HTTP
server are both thin transports over this class, so a defense behaves the same everywhere.

:meth:`PredictionService.answer_many` answers the batches of several clients with one forward
pass (the HTTP server's micro-batching); each client's stages still see its own batches, in
order, one at a time.
"""

from __future__ import annotations

import copy
import hashlib
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from modelheist.api.answer import Answer, OutputKind, concatenate
from modelheist.api.ledger import AuditRecord, ClientRecord, ClientUpdate, Ledger
from modelheist.defenses.base import Defense, check_pipeline
from modelheist.errors import (
    BudgetExceededError,
    ForbiddenError,
    InvalidQueryError,
    ModelheistError,
    ServiceUnavailableError,
)
from modelheist.models.classifier import Classifier


@dataclass
class ClientState:
    """What the service remembers about one client (a cached view of its ledger row)."""

    client_id: str
    budget: int | None
    queries_used: int = 0
    defense_state: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)
    rate: float | None = None
    admin: bool = False
    revoked: bool = False

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries_used


@dataclass(frozen=True)
class Receipt:
    """An answered batch and the client's usage after it."""

    answer: Answer
    queries_used: int
    queries_remaining: int | None


def _with_missing(x: np.ndarray) -> np.ndarray:
    """An object array of numbers and None as floats with NaN for None (else unchanged)."""
    flat = x.ravel()
    if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in flat):
        return np.array([np.nan if v is None else v for v in flat], np.float64).reshape(x.shape)
    return x


def input_digests(x: np.ndarray) -> list[str]:
    """SHA-256 of each input's float32 bytes (the audit log's input digest)."""
    rows = np.ascontiguousarray(x, np.float32).reshape(len(x), -1)
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in rows]


class PredictionService:
    """Model + defense pipeline + per-client state, budgets and audit log."""

    def __init__(
        self,
        model: Classifier,
        defenses: Sequence[Defense] = (),
        max_batch: int = 4096,
        ledger: Ledger | None = None,
        name: str | None = None,
        leaves: bool = False,
        incomplete_queries: bool = False,
    ):
        check_pipeline(defenses)
        if (leaves or incomplete_queries) and not hasattr(model, "apply"):
            raise ModelheistError(
                "leaf identities and incomplete queries need a decision tree model, not "
                f"{model.card.architecture}"
            )
        self.leaves = leaves
        self.incomplete_queries = incomplete_queries
        self.model = model
        self.defenses = list(defenses)
        self.max_batch = max_batch
        self.name = name or f"{model.card.dataset}-{model.card.architecture}"
        self._ledger = ledger
        self._clients: dict[str, ClientState] = {}
        # _lock serialises answering (forward pass, stages, commit); _cache_lock only guards
        # the client cache, so that the HTTP event loop never waits for a forward pass.
        self._lock = threading.RLock()
        self._cache_lock = threading.RLock()

    @property
    def ledger(self) -> Ledger:
        """The ledger; a private in-memory one unless one was given."""
        if self._ledger is None:
            with self._cache_lock:
                if self._ledger is None:
                    self._ledger = Ledger.open(None)
        return self._ledger

    @property
    def pipeline(self) -> str:
        """The pipeline's identity; a client's saved stage state belongs to one pipeline."""
        return " | ".join(stage.spec() for stage in self.defenses) or "probs"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.model.card.input_shape)

    @property
    def classes(self) -> list[str]:
        return list(self.model.card.classes)

    @property
    def input_range(self) -> tuple[float, float] | None:
        """The inputs' declared domain (e.g. [0, 1] for images), if the model card has one."""
        bounds = self.model.card.input_range
        return None if bounds is None else (float(bounds[0]), float(bounds[1]))

    @property
    def output_kind(self) -> OutputKind:
        """The granularity that leaves the pipeline (the last stage that sets one wins)."""
        kind: OutputKind = "probabilities"
        for stage in self.defenses:
            kind = stage.output_kind or kind
        return kind

    def register_client(self, client_id: str, budget: int | None = None) -> ClientState:
        """Create (or reset) a keyless in-process client with a query budget (None: unlimited)."""
        self.ledger.add_client(client_id, budget, with_key=False, replace=True)
        with self._cache_lock:
            self._clients.pop(client_id, None)
        return self.client(client_id)

    def client(self, client_id: str) -> ClientState:
        """The client's state, loaded from the ledger on first use."""
        with self._cache_lock:
            state = self._clients.get(client_id)
            if state is None:
                record = self.ledger.client(client_id)
                if record is None:
                    raise ModelheistError(f"unknown client {client_id!r}")
                saved, alarms = self.ledger.defense_state(client_id, self.pipeline)
                state = ClientState(
                    client_id,
                    record.budget,
                    record.queries_used,
                    saved or [d.initial_state() for d in self.defenses],
                    alarms,
                    record.rate,
                    record.admin,
                    record.revoked,
                )
                self._clients[client_id] = state
            return state

    def sync_limits(self, record: ClientRecord) -> None:
        """Adopt a client's limits as the ledger now has them (changed by ``modelheist keys``).

        Plain attribute stores, without the answering lock: the event loop must not wait."""
        state = self._clients.get(record.name)
        if state is not None:
            state.budget, state.rate = record.budget, record.rate
            state.admin, state.revoked = record.admin, record.revoked

    def forget_client(self, client_id: str) -> None:
        """Drop the cached state so that the next use reloads it from the ledger."""
        with self._cache_lock:
            self._clients.pop(client_id, None)

    def validate(self, inputs: object) -> np.ndarray:
        """Return ``inputs`` as a float32 batch of the model's input shape, or raise."""
        try:
            x = np.asarray(inputs)
        except (ValueError, TypeError) as exc:
            raise InvalidQueryError(f"inputs are not a numeric array: {exc}") from None
        if x.dtype == object and self.incomplete_queries:
            x = _with_missing(x)  # JSON null marks a missing feature
        if x.dtype == object or x.dtype == bool or not np.issubdtype(x.dtype, np.number):
            raise InvalidQueryError(f"inputs must be numbers, got dtype {x.dtype}")
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise InvalidQueryError(
                f"inputs must have shape (n, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if len(x) == 0:
            raise InvalidQueryError("empty batch: send at least one input")
        if len(x) > self.max_batch:
            raise InvalidQueryError(
                f"batch of {len(x)} inputs exceeds the limit of {self.max_batch}"
            )
        if np.iscomplexobj(x):
            raise InvalidQueryError("inputs must be real numbers")
        with np.errstate(over="ignore"):  # a float32 overflow is reported just below
            x = x.astype(np.float32)
        present = ~np.isnan(x) if self.incomplete_queries else np.ones(x.shape, bool)
        if not np.isfinite(x[present]).all():
            raise InvalidQueryError(
                "inputs contain NaN or infinite values (or overflow float32)"
                if not self.incomplete_queries
                else "inputs contain infinite values (or overflow float32); NaN marks a missing one"
            )
        if self.input_range is not None and present.any():
            low, high = self.input_range
            if x[present].min() < low or x[present].max() > high:
                raise InvalidQueryError(
                    f"inputs must lie in [{low:g}, {high:g}], the model's input range; got "
                    f"values in [{x[present].min():g}, {x[present].max():g}]"
                )
        return x

    def query(self, client_id: str, inputs: object) -> Answer:
        """Answer a batch for ``client_id``; a batch beyond the budget is refused whole."""
        result = self.answer_many([(client_id, self.validate(inputs))])[0]
        if isinstance(result, Exception):
            raise result
        return result.answer

    def answer_many(
        self, requests: Sequence[tuple[str, np.ndarray]]
    ) -> list[Receipt | ModelheistError]:
        """Answer validated batches of (possibly different) clients with one forward pass.

        Each request gets a :class:`Receipt` or the error that refused it (unknown or revoked
        client, exhausted budget, a stage's refusal). Nothing is counted or logged for a refused
        request; answered ones are committed to the ledger before this returns.
        """
        results: list[Receipt | ModelheistError | None] = [None] * len(requests)
        with self._lock:
            accepted = self._admit(requests, results)
            if not accepted:
                return results  # type: ignore[return-value]
            x_all = np.concatenate([requests[i][1] for i in accepted])
            probs_all = np.asarray(self.model.predict_proba(x_all), np.float64)
            working: dict[str, list[dict[str, Any]]] = {}
            new_alarms: dict[str, list[str]] = {}
            used: dict[str, int] = {}
            answered: list[tuple[int, Answer, int]] = []  # (request, answer, usage after it)
            live: dict[int, Answer] = {}
            offset = 0
            for i in accepted:
                client_id, x = requests[i]
                probs = probs_all[offset : offset + len(x)]
                offset += len(x)
                if not np.isfinite(probs).all():  # e.g. activations overflowed on huge inputs
                    results[i] = InvalidQueryError(
                        "the model's output is not finite for these inputs; send values of the "
                        "magnitude it was trained on"
                    )
                    continue
                state = self._clients[client_id]
                working.setdefault(client_id, copy.deepcopy(state.defense_state))
                new_alarms.setdefault(client_id, list(state.alarms))
                live[i] = Answer(probs.argmax(axis=1), probs)
            for index, stage in enumerate(self.defenses):
                if stage.rowwise and len(live) > 1:
                    live = self._apply_rowwise(stage, requests, live)
                    continue
                for i in list(live):
                    client_id, x = requests[i]
                    try:
                        live[i] = stage.apply(x, live[i], working[client_id][index])
                    except ModelheistError as exc:  # a stage refused: seen, not answered
                        results[i] = exc
                        del live[i]
            if self.leaves:  # the node identities leave with the answer, untouched by stages
                nodes = self.model.apply(x_all)  # type: ignore[attr-defined]
                starts = np.cumsum([0, *(len(requests[i][1]) for i in accepted)])
                where = dict(zip(accepted, starts[:-1], strict=True))
                live = {
                    i: replace(a, leaves=nodes[where[i] : where[i] + len(a)])
                    for i, a in live.items()
                }
            for i, answer in live.items():
                client_id, x = requests[i]
                new_alarms[client_id].extend(f for f in answer.flags if f.startswith("alarm:"))
                used[client_id] = used.get(client_id, self._clients[client_id].queries_used) + len(
                    x
                )
                answered.append((i, answer, used[client_id]))
            self._commit(requests, answered, working, new_alarms, used)
            for i, answer, used_after in answered:
                budget = self._clients[requests[i][0]].budget
                results[i] = Receipt(
                    answer, used_after, None if budget is None else budget - used_after
                )
            # A request refused after admission released the budget it had reserved: give the
            # same clients' requests that were refused for lack of it another chance.
            released = {requests[i][0] for i in accepted if not isinstance(results[i], Receipt)}
            retry = [
                i
                for i, result in enumerate(results)
                if isinstance(result, BudgetExceededError) and requests[i][0] in released
            ]
            if retry:
                for i, result in zip(
                    retry, self.answer_many([requests[i] for i in retry]), strict=True
                ):
                    results[i] = result
        return results  # type: ignore[return-value]

    @staticmethod
    def _apply_rowwise(
        stage: Defense, requests: Sequence[tuple[str, np.ndarray]], live: dict[int, Answer]
    ) -> dict[int, Answer]:
        """Apply a stateless, row-wise stage once to all live requests' rows, then split.

        Each request keeps its own flags plus those the stage added (never another's alarms).
        """
        order = list(live)
        joined = concatenate([live[i] for i in order])
        out = stage.apply(np.concatenate([requests[i][1] for i in order]), joined, {})
        added = tuple(f for f in out.flags if f not in joined.flags)
        split: dict[int, Answer] = {}
        start = 0
        for i in order:
            n = len(live[i])
            part = out.take(slice(start, start + n))
            split[i] = replace(part, flags=(*live[i].flags, *added))
            start += n
        return split

    def _admit(
        self,
        requests: Sequence[tuple[str, np.ndarray]],
        results: list[Receipt | ModelheistError | None],
    ) -> list[int]:
        """Indices of the requests within their clients' budgets; errors for the others."""
        accepted: list[int] = []
        reserved: dict[str, int] = {}
        for i, (client_id, x) in enumerate(requests):
            try:
                state = self.client(client_id)
                if state.revoked:
                    raise ForbiddenError(f"client {client_id!r} has been revoked")
                left = state.remaining
                if left is not None:
                    left -= reserved.get(client_id, 0)
                    if len(x) > left:
                        raise BudgetExceededError(
                            f"query budget exhausted: {len(x)} queries asked, {left} of "
                            f"{state.budget} remaining"
                        )
            except ModelheistError as exc:
                results[i] = exc
                continue
            reserved[client_id] = reserved.get(client_id, 0) + len(x)
            accepted.append(i)
        return accepted

    def _commit(
        self,
        requests: Sequence[tuple[str, np.ndarray]],
        answered: list[tuple[int, Answer, int]],
        working: dict[str, list[dict[str, Any]]],
        alarms: dict[str, list[str]],
        used: dict[str, int],
    ) -> None:
        """Write usage, stage state and audit records in one transaction, then adopt them."""
        now = time.time()
        records = [
            AuditRecord(now, requests[i][0], self.name, digest, int(label), answer.flags)
            for i, answer, _ in answered
            for digest, label in zip(input_digests(requests[i][1]), answer.labels, strict=True)
        ]
        updates = {
            client_id: ClientUpdate(
                used.get(client_id, self._clients[client_id].queries_used),
                self.pipeline,
                working[client_id],
                alarms[client_id],
            )
            for client_id in working
        }
        try:
            self.ledger.commit(updates, records)
        except sqlite3.Error as exc:
            raise ServiceUnavailableError(
                f"cannot record the answers, nothing was answered: {exc}"
            ) from None
        for client_id, update in updates.items():
            state = self._clients[client_id]
            state.queries_used = update.queries_used
            state.defense_state = update.defense_state
            state.alarms = update.alarms
