"""The HTTP prediction API (the README's contract): a thin FastAPI transport over a
:class:`~modelheist.api.service.PredictionService`.

Endpoints: ``GET /healthz``, ``GET /v1/models``, ``POST /v1/models/{name}/predict``,
``GET /v1/account`` (the caller's usage; an HTTP oracle needs to
know its budget before spending it), ``GET /metrics`` (Prometheus text) and
``GET /v1/admin/clients`` (admin key). Every error is ``{"error": {"code", "message"}}`` with a
4xx status; nothing a client sends causes a 5xx. Requests are authenticated with
``Authorization: Bearer <key>`` and rate-limited by the service's own policies
(:meth:`PredictionService.authenticate`, :meth:`PredictionService.check_rate`, the same an
in-process client meets), and answered through a :class:`~modelheist.api.batching.MicroBatcher`;
the service commits each audit record before its answer is sent. :func:`prepare_server`
assembles a server from a model folder and a state folder (what ``modelheist serve`` runs).

The predict body is parsed with orjson and validated by the service (shape, dtype, finiteness,
batch size), not by a pydantic model: validating a nested list of floats element by element
would dominate the request's cost. The request schema is declared in the OpenAPI document by hand.
"""

from __future__ import annotations

import gc
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
import uvicorn
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelheist.api import npy
from modelheist.api.batching import MicroBatcher
from modelheist.api.ledger import ClientRecord, Ledger
from modelheist.api.npy import REMAINING_HEADER, USED_HEADER
from modelheist.api.service import PredictionService, Receipt
from modelheist.defenses.proof_of_work import PROOF_HEADER
from modelheist.errors import (
    AuthenticationError,
    BlockedError,
    BudgetExceededError,
    ForbiddenError,
    InvalidProofError,
    InvalidQueryError,
    ModelheistError,
    ProofOfWorkRequired,
    QueryRefusedError,
    RateLimitedError,
    ServiceUnavailableError,
    UnderReviewError,
)
from modelheist.oracle.answer import Answer
from modelheist.oracle.inputs import takes_text

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024

# Declared at module level: FastAPI resolves the (postponed) annotations in module globals.
_bearer = HTTPBearer(auto_error=False, description="The client's API key.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class ApiError(Exception):
    """An error response: status, machine-readable code, one-line message, extra fields."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.extra = extra or {}
        self.headers = headers or {}


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _error_response(error: ApiError) -> Response:
    body = {"error": {"code": error.code, "message": error.message, **error.extra}}
    return _json(body, error.status, error.headers)


# -- documented shapes (OpenAPI) ---------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ChallengeBody(BaseModel):
    """A proof-of-work challenge: find COUNTER such that
    sha256(nonce || D || COUNTER as 8 bytes big-endian) starts with ``bits`` zero bits, where
    D = sha256(repr(shape) || float32 bytes of the inputs), or, for a text model's batch of n
    strings, sha256(repr((n,)) || each string's UTF-8 length as 8 bytes big-endian and bytes), then resend the same inputs with the header
    ``X-Proof-Of-Work: NONCE:COUNTER`` before ``expires`` (Unix time). Each challenge is
    single-use and bound to the inputs it was issued for."""

    nonce: str
    bits: int
    expires: float
    algorithm: str
    header: str


class ChallengeErrorBody(ErrorBody):
    challenge: ChallengeBody


class ChallengeResponse(BaseModel):
    error: ChallengeErrorBody


class TopKEntry(BaseModel):
    label: int
    probability: float


class Prediction(BaseModel):
    label: int
    probabilities: list[float] | None = None
    top_k: list[TopKEntry] | None = None
    leaf: int | None = None


class PredictResponse(BaseModel):
    """A classifier's answers are ``predictions``; an image-to-image model's are ``outputs``
    (one image, nested lists of shape ``output_shape``, per input; or, asked with
    ``Accept: application/x-npy``, one ``.npy`` array with the usage in the headers
    ``X-Queries-Used`` and ``X-Queries-Remaining``)."""

    predictions: list[Prediction] | None = None
    outputs: list[Any] | None = None
    queries_used: int
    queries_remaining: int | None


class ModelInfo(BaseModel):
    name: str
    input_shape: list[int]
    input_range: list[float] | None
    classes: list[str]
    output: str
    output_shape: list[int] | None = None
    max_batch: int
    leaves: bool
    incomplete_queries: bool


class ModelList(BaseModel):
    models: list[ModelInfo]


class Account(BaseModel):
    client: str
    budget: int | None
    queries_used: int
    queries_remaining: int | None
    rate: float | None


class AlarmReport(BaseModel):
    stage: str
    time: float
    reason: str
    statistic: float | None
    action: str = "flag"


class ClientReport(BaseModel):
    name: str
    admin: bool
    revoked: bool
    review: str | None
    blocked: str | None = None
    budget: int | None
    rate: float | None
    queries_used: int
    alarms_total: int
    alarms: list[AlarmReport]
    defense_state: list[dict[str, Any]]


class ClientList(BaseModel):
    clients: list[ClientReport]


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _predict_body(service: PredictionService) -> dict[str, Any]:
    """The predict request body's schema, exact to the served model's input shape and range;
    a text model's is a JSON list of strings (one query each), with no .npy form."""
    input_shape = service.input_shape
    if takes_text(input_shape):
        item: dict[str, Any] = {
            "type": "string",
            "minLength": 1,
            "maxLength": service.max_text_chars,
        }
        text = _batch_schema(service, item, "A batch of texts, one query each (not blank).")
        return {"requestBody": {"required": True, "content": {"application/json": text}}}
    low, high = service.input_range or (-FLOAT32_MAX, FLOAT32_MAX)
    item = {"type": "number", "minimum": low, "maximum": high}
    if service.incomplete_queries:  # null: a missing feature
        item = {"anyOf": [item, {"type": "null"}]}
    for size in reversed(input_shape):
        item = {"type": "array", "minItems": size, "maxItems": size, "items": item}
    shape = ", ".join(map(str, input_shape))
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": _batch_schema(
                    service, item, f"A batch of inputs of shape ({shape}) each."
                ),
                npy.MEDIA_TYPE: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": f"The batch as a NumPy .npy file of shape (n, {shape}) "
                        "(no pickles); faster than JSON for large batches.",
                    }
                },
            },
        }
    }


def _batch_schema(service: PredictionService, item: dict[str, Any], description: str) -> dict:
    """The JSON body ``{"inputs": [ITEM, ...]}`` of 1 to ``max_batch`` items."""
    inputs = {
        "type": "array",
        "minItems": 1,
        "maxItems": service.max_batch,
        "description": description,
        "items": item,
    }
    return {"schema": {"type": "object", "required": ["inputs"], "properties": {"inputs": inputs}}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


# -- metrics -----------------------------------------------------------------------------------


@dataclass
class _Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    answered: Counter
    alarms: Counter

    @classmethod
    def create(cls) -> _Metrics:
        registry = CollectorRegistry()
        return cls(
            registry,
            Counter(
                "modelheist_http_requests",
                "HTTP requests by endpoint and status code.",
                ["endpoint", "status"],
                registry=registry,
            ),
            Histogram(
                "modelheist_http_request_seconds",
                "HTTP request latency by endpoint.",
                ["endpoint"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
                registry=registry,
            ),
            Counter(
                "modelheist_queries_answered",
                "Inputs answered, by model and client.",
                ["model", "client"],
                registry=registry,
            ),
            Counter(
                "modelheist_alarms",
                "Alarms raised by defense stages, by model, client and stage.",
                ["model", "client", "stage"],
                registry=registry,
            ),
        )


def _endpoint(path: str) -> str:
    if path.startswith("/v1/models/") and path.endswith("/predict"):
        return "predict"
    if path in ("/healthz", "/v1/models", "/v1/account", "/metrics", "/v1/admin/clients"):
        return path
    return "other"


class _MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: _Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = _endpoint(scope.get("path", ""))
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


# -- the application ---------------------------------------------------------------------------


def _prediction_rows(answer: Answer) -> list[dict[str, Any]]:
    rows = _granular_rows(answer)
    if answer.leaves is not None:
        for row, leaf in zip(rows, answer.leaves.tolist(), strict=True):
            row["leaf"] = leaf
    return rows


def _granular_rows(answer: Answer) -> list[dict[str, Any]]:
    labels = answer.labels.tolist()
    if answer.probabilities is not None:
        probs = np.ascontiguousarray(answer.probabilities, np.float64)
        return [{"label": label, "probabilities": probs[i]} for i, label in enumerate(labels)]
    if answer.top_k is not None and answer.top_k_probabilities is not None:
        classes, probs = answer.top_k.tolist(), answer.top_k_probabilities.tolist()
        return [
            {
                "label": label,
                "top_k": [{"label": c, "probability": p} for c, p in zip(cs, ps, strict=True)],
            }
            for label, cs, ps in zip(labels, classes, probs, strict=True)
        ]
    return [{"label": label} for label in labels]


def _accepts_npy(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for ``.npy`` (its media range named, with q > 0)."""
    for media_range in (accept or "").split(","):
        media_type, *parameters = (part.strip().lower() for part in media_range.split(";"))
        if media_type != npy.MEDIA_TYPE:
            continue
        quality = next((p[2:] for p in parameters if p.startswith("q=")), "1")
        try:
            return float(quality) > 0
        except ValueError:
            return False
    return False


def _image_response(images: np.ndarray, receipt: Receipt, as_npy: bool) -> Response:
    """An image-to-image model's answer: JSON ``outputs``, or ``.npy`` bytes with the usage in
    headers (see :class:`PredictResponse`)."""
    if as_npy:
        remaining = receipt.queries_remaining
        headers = {
            USED_HEADER: str(receipt.queries_used),
            REMAINING_HEADER: "" if remaining is None else str(remaining),
        }
        return Response(npy.encode(images), media_type=npy.MEDIA_TYPE, headers=headers)
    return _json(
        {
            "outputs": np.ascontiguousarray(images, np.float32),
            "queries_used": receipt.queries_used,
            "queries_remaining": receipt.queries_remaining,
        }
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
        if too_big:
            raise ApiError(
                413, "payload_too_large", f"request body over the limit of {limit} bytes"
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413, "payload_too_large", f"request body over the limit of {limit} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_inputs(body: bytes, content_type: str) -> Any:
    if content_type.split(";")[0].strip().lower() == npy.MEDIA_TYPE:
        return npy.decode(body)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or "inputs" not in document:
        raise ApiError(422, "invalid_inputs", 'the body must be a JSON object {"inputs": [...]}')
    return document["inputs"]


def _service_error(exc: ModelheistError, remaining: int | None) -> ApiError:
    if isinstance(exc, BudgetExceededError):
        return ApiError(429, "budget_exhausted", str(exc), {"queries_remaining": remaining})
    if isinstance(exc, RateLimitedError):
        retry = max(1, int(np.ceil(exc.retry_after)))
        return ApiError(
            429,
            "rate_limited",
            str(exc),
            {"retry_after": exc.retry_after},
            {"Retry-After": str(retry)},
        )
    if isinstance(exc, InvalidQueryError):
        return ApiError(422, "invalid_inputs", str(exc))
    if isinstance(exc, AuthenticationError):
        return ApiError(401, "unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, ServiceUnavailableError):
        return ApiError(503, "unavailable", str(exc))
    if isinstance(exc, ProofOfWorkRequired):
        return ApiError(428, "proof_of_work_required", str(exc), {"challenge": exc.challenge})
    if isinstance(exc, InvalidProofError):
        return ApiError(403, "proof_invalid", str(exc))
    if isinstance(exc, UnderReviewError):
        return ApiError(403, "under_review", str(exc))
    if isinstance(exc, BlockedError):
        return ApiError(403, "blocked", str(exc))
    if isinstance(exc, ForbiddenError):
        return ApiError(403, "forbidden", str(exc))
    if isinstance(exc, QueryRefusedError):
        return ApiError(403, "refused", str(exc))
    return ApiError(403, "refused", str(exc))  # any other refusal by a defense stage


def create_app(
    service: PredictionService,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch_images: int = 1024,
) -> FastAPI:
    """The FastAPI application serving ``service`` under the name ``service.name``."""

    metrics = _Metrics.create()
    batcher = MicroBatcher(service, max_images=max(max_batch_images, service.max_batch))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Move everything loaded so far (torch, the model, the app) out of the collector's
        # reach: full collections over those objects paused every request ~150 ms once a
        # second under load (p99 165 ms at 32 clients; 20 ms with this).
        gc.collect()
        gc.freeze()
        yield
        batcher.close()

    app = FastAPI(
        title="modelheist prediction API",
        version="1",
        description="A model behind an inference API with budgets, an audit log and defenses.",
        lifespan=lifespan,
    )
    app.add_middleware(_MetricsMiddleware, metrics=metrics)  # type: ignore[arg-type]

    def authenticate(credentials: HTTPAuthorizationCredentials | None) -> ClientRecord:
        try:
            return service.authenticate(credentials.credentials if credentials else None)
        except ModelheistError as exc:
            raise _service_error(exc, None) from None

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        headers = dict(exc.headers or {})
        return _error_response(ApiError(exc.status_code, code, str(exc.detail), headers=headers))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        message = f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', 'invalid')}"
        return _error_response(ApiError(422, "invalid_request", message))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:  # a bug: log it
        log.exception("internal error")
        return _error_response(ApiError(500, "internal", "internal error; see the server log"))

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def model_info() -> dict[str, Any]:
        return {
            "name": service.name,
            "input_shape": list(service.input_shape),
            "classes": service.classes,
            "input_range": None if service.input_range is None else list(service.input_range),
            "output": service.output_kind,
            "output_shape": None if service.output_shape is None else list(service.output_shape),
            "max_batch": service.max_batch,
            "leaves": service.leaves,
            "incomplete_queries": service.incomplete_queries,
        }

    @app.get("/v1/models", response_model=ModelList, summary="Served models")
    async def models() -> Response:
        return _json({"models": [model_info()]})

    @app.get(
        "/v1/account",
        response_model=Account,
        responses=_errors(401, 403),
        summary="The caller's budget and usage",
    )
    async def account(
        credentials: Credentials,
    ) -> Response:
        record = authenticate(credentials)
        state = service.client(record.name)
        return _json(
            {
                "client": record.name,
                "budget": state.budget,
                "queries_used": state.queries_used,
                "queries_remaining": state.remaining,
                "rate": state.rate,
            }
        )

    @app.post(
        "/v1/models/{name}/predict",
        response_model=PredictResponse,
        responses={
            **_errors(400, 401, 403, 404, 413, 422, 429, 503),
            428: {
                "model": ChallengeResponse,
                "description": "A proof of work is needed first (a `pow` stage): solve the "
                "challenge and resend the same inputs with the X-Proof-Of-Work header. "
                "Nothing was answered or counted.",
            },
        },
        openapi_extra=_predict_body(service),
        summary="Answer a batch of queries",
    )
    async def predict(
        name: str,
        request: Request,
        credentials: Credentials,
        proof: Annotated[
            str | None,
            Header(
                alias=PROOF_HEADER,
                description="NONCE:COUNTER solving the challenge of a 428 answer for these "
                "inputs (single use).",
            ),
        ] = None,
    ) -> Response:
        record = authenticate(credentials)
        if name != service.name:
            raise ApiError(404, "unknown_model", f"no model named {name!r}; see /v1/models")
        try:
            service.check_rate(record)
        except RateLimitedError as exc:
            raise _service_error(exc, None) from None
        body = await _read_body(request, max_body_bytes)
        try:
            x = service.validate(_parse_inputs(body, request.headers.get("content-type", "")))
            if service.requires_proofs:  # reads client state under the answering lock
                await run_in_threadpool(service.check_proof, record.name, x, proof)
            receipt = await batcher.submit(record.name, x)
        except ModelheistError as exc:
            raise _service_error(exc, service.client(record.name).remaining) from None
        metrics.answered.labels(service.name, record.name).inc(len(x))
        for alarm in receipt.alarms:
            metrics.alarms.labels(service.name, record.name, alarm.stage).inc()
        images = receipt.answer.images
        if images is not None:
            return _image_response(images, receipt, _accepts_npy(request.headers.get("accept")))
        return _json(
            {
                "predictions": _prediction_rows(receipt.answer),
                "queries_used": receipt.queries_used,
                "queries_remaining": receipt.queries_remaining,
            }
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/admin/clients",
        response_model=ClientList,
        responses=_errors(401, 403),
        summary="Per-client usage and detector state (admin key)",
    )
    async def admin_clients(
        credentials: Credentials,
    ) -> Response:
        record = authenticate(credentials)
        if not record.admin:
            raise ApiError(403, "forbidden", "this endpoint needs an admin key")
        # under the answering lock, in a worker thread: committed state only, no event-loop wait
        reports = await run_in_threadpool(service.client_reports)
        return _json({"clients": reports})

    return app


# -- running it --------------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: an ephemeral one); clear error if the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ModelheistError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: FastAPI) -> uvicorn.Server:
    """A uvicorn server for ``app`` (uvloop and httptools, no access log: the audit log is ours)."""
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` on a real loopback socket in a background thread; yield its base URL."""
    sock = bind_socket(host, port)
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ModelheistError("the HTTP server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# -- assembling a server from folders (what `modelheist serve` runs) -----------------------------

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass
class PreparedServer:
    """A served model ready to run: its service, ledger, application and listening socket."""

    service: PredictionService
    ledger: Ledger
    app: FastAPI
    socket: socket.socket
    notices: list[str]  # what the operator should know before it serves (one line each)

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def run(self) -> None:
        """Serve until interrupted, then release the socket and the ledger."""
        try:
            uvicorn_server(self.app).run(sockets=[self.socket])
        finally:
            self.close()

    def close(self) -> None:
        self.socket.close()
        self.ledger.close()


def prepare_server(
    model_dir: Path,
    state: Path,
    name: str | None = None,
    defenses: Sequence[str] = (),
    output: str = "probs",
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 1024,
    max_body_mb: float = DEFAULT_MAX_BODY_BYTES / 1024**2,
    durable: bool = False,
    leaves: bool = False,
    incomplete_queries: bool = False,
    quantize: str | None = None,
) -> PreparedServer:
    """Check every option, load the model (a text model with ``quantize``: its int8 copy,
    :func:`~modelheist.models.text.quantize_text_model`), open the state folder and the stages
    (their secret files), and bind the socket: every problem is one ``ModelheistError`` before
    anything listens, and nothing in the state folder is changed by a refused start."""
    from modelheist.defenses.registry import parse_defense, parse_output
    from modelheist.models.store import load_model

    name = name or Path(model_dir).name
    if not _NAME.fullmatch(name):
        raise ModelheistError(f"--name must be 1-64 letters, digits, '.', '_' or '-', got {name!r}")
    if max_batch < 1:
        raise ModelheistError(f"--max-batch must be at least 1, got {max_batch}")
    if not 0 < max_body_mb < 1024**2:
        raise ModelheistError(f"--max-body-mb must be positive and finite, got {max_body_mb}")
    if not 0 <= port <= 65535:
        raise ModelheistError(f"--port must be between 0 and 65535, got {port}")
    if quantize is not None:
        from modelheist.models.store import load_card
        from modelheist.models.text import ARCHITECTURE, QUANTIZATIONS, quantize_text_model

        if quantize not in QUANTIZATIONS:
            raise ModelheistError(f"--quantize takes {', '.join(QUANTIZATIONS)}, got {quantize!r}")
        architecture = load_card(model_dir).architecture
        if architecture != ARCHITECTURE:
            raise ModelheistError(
                f"--quantize applies to {ARCHITECTURE} text models, not to {architecture}"
            )
    stages = [parse_defense(spec) for spec in defenses] + parse_output(output)
    for stage in stages:
        stage.check_serving()
    model = load_model(model_dir)
    if quantize is not None:
        model = quantize_text_model(model, quantize)
    service = PredictionService(
        model,
        stages,
        max_batch=max_batch,
        name=name,
        leaves=leaves,
        incomplete_queries=incomplete_queries,
    ).open()  # the pipeline and its secrets are sound before the state folder is touched
    ledger = service.use_ledger(Ledger.open(state, durable=durable))
    try:
        sock = bind_socket(host, port)
    except ModelheistError:
        ledger.close()
        raise
    notices = [
        f"{count} client(s) hold defense state under another pipeline ({pipeline}); this "
        "server keeps it but does not use it"
        for pipeline, count in ledger.pipelines().items()
        if pipeline != service.pipeline
    ]
    if quantize is not None:
        notices.append(
            f"answering with the model's {quantize} copy (its linear layers quantised "
            "dynamically): answers differ a little from the saved model's"
        )
    app = create_app(service, int(max_body_mb * 1024**2))
    return PreparedServer(service, ledger, app, sock, notices)
