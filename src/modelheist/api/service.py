"""``PredictionService``: a model behind an inference API (docs/architecture.md, "The
PredictionService").

The service authenticates a client by its API key, applies its rate limit, validates the query
batch, enforces the client's budget, computes the model's probabilities and passes them through
the ordered defense pipeline (output granularity and any other stages); an image-to-image
model's output images go out as they are (it is served without stages). Clients, budgets, each
stage's per-client state, alarms and the audit log live in a
:class:`~modelheist.api.ledger.Ledger` (SQLite; a private in-memory one by default). An answer
is returned only after its audit record, the client's usage, the stages' new state and any
alarms are committed together. The in-process :class:`~modelheist.api.local.LocalOracle` and
the HTTP server are both thin transports over :meth:`PredictionService.predict`, so a defense,
a key, a revocation and a rate limit behave the same everywhere.

:meth:`PredictionService.answer_many` answers the batches of several clients with one forward
pass (the HTTP server's micro-batching). The leading row-wise stages run once over all rows;
the rest run request by request, in arrival order, each client's stages seeing its own batches
one at a time. A request that any stage refuses is answered with nothing, counted nowhere and
leaves every stage's state as it was.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from modelheist.api.ledger import (
    MAX_ALARMS_PER_CLIENT,
    AuditRecord,
    ClientRecord,
    ClientUpdate,
    Ledger,
)
from modelheist.api.ratelimit import RateLimiter
from modelheist.defenses.base import Alarm, Defense, StageContext, check_pipeline
from modelheist.defenses.proof_of_work import (
    Challenge,
    ProofOfWork,
    inputs_digest,
    leading_zero_bits,
    proof_digest,
)
from modelheist.defenses.state import StageState
from modelheist.errors import (
    AuthenticationError,
    BlockedError,
    BudgetExceededError,
    ForbiddenError,
    InvalidProofError,
    InvalidQueryError,
    ModelheistError,
    ProofOfWorkRequired,
    ServiceUnavailableError,
    StateCorruptError,
    UnderReviewError,
)
from modelheist.models.classifier import Classifier
from modelheist.oracle.answer import Answer, OutputKind, concatenate
from modelheist.oracle.inputs import TEXT_SHAPE, as_batch, row_digests, takes_text

log = logging.getLogger(__name__)
#: Outstanding proof-of-work challenges kept per client (the oldest are dropped).
MAX_CHALLENGES_PER_CLIENT = 16
#: The longest string a text model is asked about, in characters (the fortunes are <= 1,000).
MAX_TEXT_CHARS = 1000
_STATELESS = StageState.read_only()


@dataclass
class ClientState:
    """What the service remembers about one client (a cached view of its ledger rows)."""

    client_id: str
    budget: int | None
    queries_used: int = 0
    stages: list[StageState] = field(default_factory=list)  # one per stage of the pipeline
    alarms: list[Alarm] = field(default_factory=list)  # the newest, oldest first
    alarms_total: int = 0
    rate: float | None = None
    admin: bool = False
    revoked: bool = False
    review: str | None = None
    blocked: str | None = None  # why a detector blocked it (None: it is not blocked)
    generation: int = 0
    stale: bool = False  # reset by an administrator: reloaded before its next request

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries_used


@dataclass(frozen=True)
class Receipt:
    """An answered batch and the client's usage after it. ``flags`` (what the stages noted)
    and ``alarms`` (raised while answering it) stay on the server."""

    answer: Answer
    queries_used: int
    queries_remaining: int | None
    flags: tuple[str, ...] = ()
    alarms: tuple[Alarm, ...] = ()


def _with_missing(x: np.ndarray) -> np.ndarray:
    """An object array of numbers and None as floats with NaN for None (else unchanged)."""
    flat = x.ravel()
    if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in flat):
        return np.array([np.nan if v is None else v for v in flat], np.float64).reshape(x.shape)
    return x


def input_digests(x: np.ndarray) -> list[str]:
    """SHA-256 of each input's float32 bytes, or a string's UTF-8 bytes (the audit log's input
    digest)."""
    return row_digests(x)


@dataclass
class _Pending:
    """One admitted request while it goes through the pipeline."""

    client: ClientState
    x: np.ndarray
    answer: Answer
    notes: list[str] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)


class PredictionService:
    """Model + defense pipeline + per-client keys, limits, state, alarms and audit log."""

    def __init__(
        self,
        model: Classifier,
        defenses: Sequence[Defense] = (),
        max_batch: int = 4096,
        ledger: Ledger | None = None,
        name: str | None = None,
        leaves: bool = False,
        incomplete_queries: bool = False,
        max_text_chars: int = MAX_TEXT_CHARS,
    ):
        check_pipeline(defenses)
        if model.card.translates and defenses:
            # Szyller et al. ("Good Artists Copy", 2021): the classifiers' defenses do not carry
            # over to image translation; none of these stages reads or writes an image answer
            raise ModelheistError(
                f"{', '.join(d.name for d in defenses)} (an output granularity or defense stage) "
                "apply to classifiers; an image-to-image model is served without them"
            )
        if takes_text(model.card.input_shape):
            numeric = [d.name for d in defenses if d.capabilities.numeric_inputs]
            if numeric:
                raise ModelheistError(
                    f"{', '.join(numeric)} read inputs as numbers and cannot serve a text model"
                )
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
        self.max_text_chars = max_text_chars
        self.name = name or f"{model.card.dataset}-{model.card.architecture}"
        self.rate_limiter = RateLimiter()
        self._ledger = ledger
        self._opened = False
        self._clients: dict[str, ClientState] = {}
        # _lock serialises answering (forward pass, stages, commit); _cache_lock only guards
        # the client cache, so that the HTTP event loop never waits for a forward pass.
        self._lock = threading.RLock()
        self._cache_lock = threading.RLock()
        # outstanding proof-of-work challenges: client -> nonce -> (bits, expiry, inputs digest)
        self._challenges: dict[str, dict[str, tuple[int, float, bytes]]] = {}

    def open(self) -> PredictionService:
        """Let every stage read what it needs (secret files); a server calls this at start-up
        so that a problem is one line before it listens. Answering calls it if nobody did."""
        with self._lock:
            if not self._opened:
                card = self.model.card
                for stage in self.defenses:
                    stage.open()
                    stage.check_model(tuple(card.input_shape), card.num_classes)
                self._opened = True
        return self

    @property
    def ledger(self) -> Ledger:
        """The ledger; a private in-memory one unless one was given."""
        if self._ledger is None:
            with self._cache_lock:
                if self._ledger is None:
                    self._ledger = Ledger.open(None)
        return self._ledger

    def use_ledger(self, ledger: Ledger) -> Ledger:
        """Keep clients, state and the audit log in ``ledger`` (before the first request)."""
        with self._cache_lock:
            if self._clients:
                raise ModelheistError("the service's ledger is set before any client is served")
            self._ledger = ledger
        return ledger

    @property
    def pipeline(self) -> str:
        """The pipeline's identity; a client's saved stage state belongs to one pipeline."""
        plain = "images" if self.model.card.translates else "probs"
        return " | ".join(stage.state_key() for stage in self.defenses) or plain

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
    def output_shape(self) -> tuple[int, ...] | None:
        """An image-to-image model's output shape; None for a classifier."""
        shape = self.model.card.output_shape
        return None if shape is None else tuple(shape)

    @property
    def output_kind(self) -> OutputKind:
        """The granularity that leaves the pipeline (the last stage that sets one wins)."""
        if self.model.card.translates:
            return "images"
        kind: OutputKind = "probabilities"
        for stage in self.defenses:
            kind = stage.capabilities.output_kind or kind
        return kind

    # -- clients ---------------------------------------------------------------------------------

    def add_client(
        self, client_id: str, budget: int | None = None, rate: float | None = None
    ) -> str:
        """Create (or reset) a client with a query budget (None: unlimited) and an optional
        rate limit; return its new API key."""
        key = self.ledger.add_client(client_id, budget, rate, with_key=True, replace=True)
        self.forget_client(client_id)
        assert key is not None
        return key

    def register_client(self, client_id: str, budget: int | None = None) -> ClientState:
        """Create (or reset) a keyless client for the owner's own in-process use
        (:meth:`query`); clients of the API get keys (:meth:`add_client`)."""
        self.ledger.add_client(client_id, budget, with_key=False, replace=True)
        self.forget_client(client_id)
        return self.client(client_id)

    def client(self, client_id: str) -> ClientState:
        """The client's state, loaded from the ledger on first use. A saved stage state that
        cannot be read holds the client for review (its requests are refused) instead of being
        replaced by a fresh one."""
        with self._cache_lock:
            state = self._clients.get(client_id)
            if state is None:
                record = self.ledger.client(client_id)
                if record is None:
                    raise ModelheistError(f"unknown client {client_id!r}")
                state = ClientState(
                    client_id,
                    record.budget,
                    record.queries_used,
                    alarms=self.ledger.alarms(client_id),
                    alarms_total=record.alarms_total,
                    rate=record.rate,
                    admin=record.admin,
                    revoked=record.revoked,
                    review=record.review,
                    blocked=record.blocked,
                    generation=record.generation,
                )
                if state.review is None:
                    try:
                        state.stages = self._load_stages(client_id)
                    except StateCorruptError as exc:
                        state.review = str(exc)
                        self.ledger.hold_for_review(client_id, state.review)
                self._clients[client_id] = state
            return state

    def _load_stages(self, client_id: str) -> list[StageState]:
        saved = self.ledger.stage_state(client_id, self.pipeline)
        stages = []
        for index, stage in enumerate(self.defenses):
            if not stage.capabilities.stateful:
                stages.append(_STATELESS)
            elif index in saved:
                where = f"client {client_id!r} in stage {index + 1} ({stage.name})"
                stages.append(
                    StageState.from_records(
                        saved[index].values, saved[index].records, where, stage.initial_values()
                    )
                )
            else:
                stages.append(StageState(stage.initial_values()))
        return stages

    def sync_limits(self, record: ClientRecord) -> None:
        """Adopt a client's limits as the ledger now has them (changed by ``modelheist keys``).

        Plain attribute stores, without the answering lock: the event loop must not wait. A
        client whose state was reset is marked stale; admission reloads it, under the lock."""
        state = self._clients.get(record.name)
        if state is not None:
            state.budget, state.rate = record.budget, record.rate
            state.admin, state.revoked = record.admin, record.revoked
            if record.generation != state.generation:
                state.stale = True

    def forget_client(self, client_id: str) -> None:
        """Drop the cached state so that the next use reloads it from the ledger."""
        with self._cache_lock:
            self._clients.pop(client_id, None)

    def client_reports(self) -> list[dict[str, object]]:
        """Every client's usage, review, alarms and committed defense state, as an
        administrator sees it (taken between two answered batches, so nothing half-done)."""
        with self._lock:
            reports = []
            for record in self.ledger.clients():
                state = self.client(record.name)
                reports.append(
                    {
                        "name": record.name,
                        "admin": record.admin,
                        "revoked": record.revoked,
                        "review": state.review,
                        "blocked": state.blocked,
                        "budget": record.budget,
                        "rate": record.rate,
                        "queries_used": state.queries_used,
                        "alarms_total": state.alarms_total,
                        "alarms": [alarm.to_json() for alarm in state.alarms],
                        "defense_state": [
                            {"stage": stage.spec(), **stage_state.summary()}
                            for stage, stage_state in zip(self.defenses, state.stages, strict=False)
                            if stage.capabilities.stateful
                        ],
                    }
                )
            return reports

    # -- the policies every transport applies ----------------------------------------------------

    def authenticate(self, api_key: str | None) -> ClientRecord:
        """The client holding ``api_key``; refuses a missing or unknown key (401) and a revoked
        client (403). Reads the ledger each time, so ``modelheist keys`` changes take effect at
        the next request."""
        if not api_key:
            raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
        record = self.ledger.client_for_key(api_key)
        if record is None:
            raise AuthenticationError("unknown API key")
        if record.revoked:
            raise ForbiddenError(f"client {record.name!r} has been revoked")
        self.sync_limits(record)
        return record

    def check_rate(self, record: ClientRecord) -> None:
        """Refuse a request over the client's rate limit (429 with the wait)."""
        self.rate_limiter.allow(record.name, record.rate)

    @property
    def requires_proofs(self) -> bool:
        """Whether a ``pow`` stage may ask clients for proofs of work."""
        return any(isinstance(stage, ProofOfWork) for stage in self.defenses)

    def check_proof(self, client_id: str, x: np.ndarray, proof: str | None) -> None:
        """Pass a request that needs no proof of work or carries a valid one (single use);
        else raise :class:`ProofOfWorkRequired` with a new challenge for these inputs, or
        :class:`InvalidProofError`. Nothing is answered or counted either way."""
        if not self.requires_proofs:
            return
        with self._lock:
            client = self.client(client_id)
            if client.revoked or client.review or client.blocked or client.stale:
                return  # admission refuses it (or reloads it) with the right error
            bits = max(
                (
                    stage.required_bits(client.stages[index], len(x))
                    for index, stage in enumerate(self.defenses)
                    if isinstance(stage, ProofOfWork) and index < len(client.stages)
                ),
                default=0,
            )
            if bits == 0:
                return
            digest = inputs_digest(x)
            now = time.time()
            outstanding = self._challenges.setdefault(client_id, {})
            for nonce in [n for n, (_, expiry, _) in outstanding.items() if expiry < now]:
                del outstanding[nonce]
            nonce, _, counter_text = (proof or "").strip().partition(":")
            issued = outstanding.pop(nonce, None) if proof is not None else None
            if issued is None:  # no proof, or one for an unknown, expired or used challenge
                expires = now + max(
                    stage.expires for stage in self.defenses if isinstance(stage, ProofOfWork)
                )
                nonce = secrets.token_hex(16)
                outstanding[nonce] = (bits, expires, digest)
                while len(outstanding) > MAX_CHALLENGES_PER_CLIENT:
                    del outstanding[next(iter(outstanding))]
                challenge = Challenge(nonce, bits, expires)
                why = "" if proof is None else " (the proof given was for an unknown, expired "
                why += "" if proof is None else "or already used challenge)"
                raise ProofOfWorkRequired(
                    f"this request needs a proof of work of {bits} bits{why}: see the challenge",
                    challenge.to_json(),
                )
            if issued[2] != digest:
                raise InvalidProofError("proof of work for a challenge issued for other inputs")
            try:
                counter = int(counter_text)
                valid = (
                    0 <= counter < 2**64
                    and leading_zero_bits(proof_digest(bytes.fromhex(nonce), digest, counter))
                    >= issued[0]
                )
            except ValueError:
                valid = False
            if not valid:
                raise InvalidProofError(f"wrong proof of work (it needs {issued[0]} zero bits)")

    def predict(self, api_key: str | None, inputs: object, proof: str | None = None) -> Receipt:
        """Answer a batch for the holder of ``api_key``, as the HTTP API does: authentication,
        rate limit, validation, proof of work, budget, pipeline, commit."""
        record = self.authenticate(api_key)
        self.check_rate(record)
        x = self.validate(inputs)
        self.check_proof(record.name, x, proof)
        result = self.answer_many([(record.name, x)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def query(self, client_id: str, inputs: object) -> Answer:
        """The owner's own in-process call for ``client_id`` (no key, no rate limit); a batch
        beyond the budget is refused whole."""
        result = self.answer_many([(client_id, self.validate(inputs))])[0]
        if isinstance(result, Exception):
            raise result
        return result.answer

    def validate(self, inputs: object) -> np.ndarray:
        """Return ``inputs`` as a float32 batch of the model's input shape (a text model's:
        an object array of strings), or raise."""
        if takes_text(self.input_shape):
            return self._validate_text(inputs)
        try:
            x = np.asarray(inputs)
        except (ValueError, TypeError) as exc:
            raise InvalidQueryError(f"inputs are not a numeric array: {exc}") from None
        if x.dtype.kind in "SU":
            raise InvalidQueryError(
                "this model takes numbers, not text: inputs of shape "
                f"(n, {', '.join(map(str, self.input_shape))})"
            )
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

    def _validate_text(self, inputs: object) -> np.ndarray:
        """A text model's batch: a non-empty list of at most ``max_batch`` non-blank strings of
        at most ``max_text_chars`` characters, each valid Unicode (no lone surrogates, no
        NUL, which a saved query log's unicode arrays could not keep)."""
        if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "UO" and inputs.ndim == 1:
            inputs = inputs.tolist()
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            raise InvalidQueryError(
                'a text model takes a list of strings: {"inputs": ["...", ...]}'
            )
        if not inputs:
            raise InvalidQueryError("empty batch: send at least one input")
        if len(inputs) > self.max_batch:
            raise InvalidQueryError(
                f"batch of {len(inputs)} inputs exceeds the limit of {self.max_batch}"
            )
        for index, text in enumerate(inputs):
            if not text.strip():
                raise InvalidQueryError(f"input {index} is empty or blank")
            if len(text) > self.max_text_chars:
                raise InvalidQueryError(
                    f"input {index} has {len(text)} characters; the limit is {self.max_text_chars}"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidQueryError(f"input {index} is not valid Unicode text") from None
            if "\x00" in text:
                raise InvalidQueryError(f"input {index} holds a NUL character")
        return as_batch(inputs, TEXT_SHAPE)

    # -- answering -------------------------------------------------------------------------------

    def answer_many(
        self, requests: Sequence[tuple[str, np.ndarray]]
    ) -> list[Receipt | ModelheistError]:
        """Answer validated batches of (possibly different) clients with one forward pass.

        Each request gets a :class:`Receipt` or the error that refused it (unknown, revoked or
        held client, exhausted budget, a stage's refusal). Nothing is counted, logged or learned
        for a refused request; answered ones are committed to the ledger before this returns.
        """
        results: list[Receipt | ModelheistError | None] = [None] * len(requests)
        with self._lock:
            self.open()
            admitted = self._admit(requests, results)
            if not admitted:
                return results  # type: ignore[return-value]
            now = time.time()
            live = self._forward(requests, admitted, results)
            first_stateful = next(
                (i for i, s in enumerate(self.defenses) if not s.capabilities.rowwise),
                len(self.defenses),
            )
            for stage in self.defenses[:first_stateful]:
                self._apply_jointly(stage, live, now)
            refused: dict[int, _Pending] = {}
            blocking: dict[str, Alarm] = {}  # clients blocked by an alarm in this batch
            for i in list(live):
                client_id = live[i].client.client_id
                try:
                    if client_id in blocking:  # a block holds from the alarm's request on
                        alarm = blocking[client_id]
                        raise BlockedError(
                            f"client {client_id!r} is blocked ({alarm.stage}: {alarm.reason}); "
                            "an administrator clears it with `modelheist keys clear`"
                        )
                    self._apply_rest(live[i], first_stateful, now)
                except ModelheistError as exc:  # a stage refused: seen, not answered
                    results[i] = exc
                    refused[i] = live.pop(i)
                    continue
                for alarm in live[i].alarms:
                    if alarm.action == "block":
                        blocking.setdefault(client_id, alarm)
            if self.leaves:  # the node identities leave with the answer, untouched by stages
                for pending in live.values():
                    nodes = self.model.apply(pending.x)  # type: ignore[attr-defined]
                    pending.answer = replace(pending.answer, leaves=nodes)
            for i, receipt in self._commit(live, refused, now).items():
                results[i] = receipt
            self._retry_released(requests, list(admitted), results)
        return results  # type: ignore[return-value]

    def _forward(
        self,
        requests: Sequence[tuple[str, np.ndarray]],
        admitted: dict[int, ClientState],
        results: list[Receipt | ModelheistError | None],
    ) -> dict[int, _Pending]:
        """One forward pass over the admitted requests; a request whose output is not finite
        is refused alone."""
        x_all = np.concatenate([requests[i][1] for i in admitted])
        translates = self.model.card.translates
        if translates:
            out_all = np.asarray(self.model.translate(x_all), np.float32)  # type: ignore[attr-defined]
        else:
            out_all = np.asarray(self.model.predict_proba(x_all), np.float64)
        live: dict[int, _Pending] = {}
        offset = 0
        for i, client in admitted.items():
            x = requests[i][1]
            out = out_all[offset : offset + len(x)]
            offset += len(x)
            if not np.isfinite(out).all():  # e.g. activations overflowed on huge inputs
                results[i] = InvalidQueryError(
                    "the model's output is not finite for these inputs; send values of the "
                    "magnitude it was trained on"
                )
                continue
            answer = Answer.of_images(out) if translates else Answer(out.argmax(axis=1), out)
            live[i] = _Pending(client, x, answer)
        return live

    @staticmethod
    def _apply_jointly(stage: Defense, live: dict[int, _Pending], now: float) -> None:
        """Apply a row-wise stage once to all live requests' rows, then split its answer; its
        notes (which a row-wise stage keeps independent of the rows) go to every request."""
        if not live:
            return
        order = list(live)
        context = StageContext(None, now, stage=stage.name)
        joined = concatenate([live[i].answer for i in order])
        out = stage.apply(context, np.concatenate([live[i].x for i in order]), joined, _STATELESS)
        if context.raised:
            raise RuntimeError(f"row-wise stage {stage.name!r} raised an alarm it cannot raise")
        start = 0
        for i in order:
            n = len(live[i].x)
            live[i].answer = out.take(slice(start, start + n))
            live[i].notes.extend(context.notes)
            start += n

    def _apply_rest(self, pending: _Pending, first: int, now: float) -> None:
        """Stages ``first`` onwards for one request. If one refuses, the client's stage state
        returns to what it was before this request and the request's notes are dropped (its
        alarms are kept: they say why); a stage that fails any other way is a bug: the same,
        then the request is answered with 503."""
        client = pending.client
        savepoints = {
            index: client.stages[index].savepoint()
            for index in range(first, len(self.defenses))
            if self.defenses[index].capabilities.stateful
        }
        notes_before = len(pending.notes)
        try:
            for index in range(first, len(self.defenses)):
                stage = self.defenses[index]
                context = StageContext(
                    client.client_id,
                    now,
                    tuple(client.alarms) + tuple(pending.alarms),
                    stage.name,
                    stage.policy,
                )
                state = client.stages[index] if stage.capabilities.stateful else _STATELESS
                try:
                    pending.answer = stage.apply(context, pending.x, pending.answer, state)
                    if stage.capabilities.stateful:
                        state.savepoint()  # its values must stay JSON: fail here, not later
                finally:
                    pending.alarms.extend(context.raised)
                pending.notes.extend(context.notes)
        except BaseException as exc:
            client.alarms.extend(pending.alarms)  # what the stages saw stays on the record
            for index, savepoint in savepoints.items():
                client.stages[index].restore(savepoint)
            del pending.notes[notes_before:]
            if isinstance(exc, ModelheistError):
                raise
            if not isinstance(exc, Exception):
                raise  # an interrupt
            log.exception("defense stage failed on a request of %s", client.client_id)
            raise ServiceUnavailableError(
                "a defense stage failed on this request; nothing was answered or counted"
            ) from None
        client.alarms.extend(pending.alarms)  # later requests of this client see them

    def _admit(
        self,
        requests: Sequence[tuple[str, np.ndarray]],
        results: list[Receipt | ModelheistError | None],
    ) -> dict[int, ClientState]:
        """The requests within their clients' budgets (index -> client); errors for the
        others."""
        accepted: dict[int, ClientState] = {}
        reserved: dict[str, int] = {}
        for i, (client_id, x) in enumerate(requests):
            try:
                state = self.client(client_id)
                if state.blocked is not None or state.review is not None:
                    # refused until an administrator acts, which another process may have done
                    record = self.ledger.client(client_id)
                    state.stale |= record is not None and record.generation != state.generation
                if state.stale:
                    self.forget_client(client_id)
                    state = self.client(client_id)
                if state.revoked:
                    raise ForbiddenError(f"client {client_id!r} has been revoked")
                if state.review is not None:
                    raise UnderReviewError(
                        f"client {client_id!r} is held for review: {state.review}; an "
                        "administrator resets it with `modelheist keys reset`"
                    )
                if state.blocked is not None:
                    raise BlockedError(
                        f"client {client_id!r} is blocked ({state.blocked}); an administrator "
                        "clears it with `modelheist keys clear`"
                    )
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
            accepted[i] = state
        return accepted

    def _commit(
        self, live: dict[int, _Pending], refused: dict[int, _Pending], now: float
    ) -> dict[int, Receipt]:
        """Write usage, stage state, alarms and audit records in one transaction, then adopt
        them; if the transaction fails, every touched client's state returns to its last
        commit and nothing is answered. A client reset by an administrator meanwhile keeps
        its usage and audit records; what its old state learned is dropped, and it reloads."""
        everyone = [pending for _, pending in sorted({**live, **refused}.items())]
        clients = {pending.client.client_id: pending.client for pending in everyone}
        if not live and not any(pending.alarms for pending in everyone):
            return {}
        answered = dict.fromkeys(clients, 0)
        usage_after: dict[int, int] = {}
        for i, pending in live.items():
            answered[pending.client.client_id] += len(pending.x)
            usage_after[i] = pending.client.queries_used + answered[pending.client.client_id]
        raised: dict[str, list[Alarm]] = {client_id: [] for client_id in clients}
        for pending in everyone:
            raised[pending.client.client_id].extend(pending.alarms)
        try:
            records = [
                AuditRecord(
                    now,
                    pending.client.client_id,
                    self.name,
                    digest,
                    int(label),
                    tuple(pending.notes),
                )
                for pending in live.values()
                for digest, label in zip(
                    input_digests(pending.x), pending.answer.labels, strict=True
                )
            ]
            updates = {
                client_id: ClientUpdate(
                    answered[client_id],
                    client.generation,
                    self.pipeline,
                    {
                        index: changes
                        for index, state in enumerate(client.stages)
                        if self.defenses[index].capabilities.stateful
                        and (changes := state.changes())
                    },
                    tuple(raised[client_id]),
                )
                for client_id, client in clients.items()
            }
            stale = self.ledger.commit(updates, records)
        except Exception as exc:
            for client in clients.values():
                for state in client.stages:
                    state.rollback()
                del client.alarms[len(client.alarms) - len(raised[client.client_id]) :]
            if not isinstance(exc, sqlite3.Error):
                raise
            raise ServiceUnavailableError(
                f"cannot record the answers, nothing was answered: {exc}"
            ) from None
        for client_id, client in clients.items():
            client.queries_used += answered[client_id]
            client.alarms_total += len(raised[client_id])
            blocking = next((a for a in raised[client_id] if a.action == "block"), None)
            if blocking is not None and client.blocked is None and client_id not in stale:
                client.blocked = f"{blocking.stage}: {blocking.reason}"
            del client.alarms[:-MAX_ALARMS_PER_CLIENT]
            for state in client.stages:
                state.mark_committed()
            if client_id in stale:
                client.stale = True  # reset meanwhile: reload before its next request
        receipts = {}
        for i, pending in live.items():
            budget = pending.client.budget
            receipts[i] = Receipt(
                pending.answer,
                usage_after[i],
                None if budget is None else budget - usage_after[i],
                tuple(dict.fromkeys(pending.notes)),
                tuple(pending.alarms),
            )
        return receipts

    def _retry_released(
        self,
        requests: Sequence[tuple[str, np.ndarray]],
        accepted: list[int],
        results: list[Receipt | ModelheistError | None],
    ) -> None:
        """A request refused after admission released the budget it had reserved: give the
        same clients' requests that were refused for lack of it another chance."""
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
