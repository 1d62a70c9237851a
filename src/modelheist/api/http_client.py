"""``HttpOracle``: the :class:`~modelheist.oracle.Oracle` of a served model, over HTTP.

An attack runs the same against a URL as in-process: the oracle learns the input shape, classes
and output granularity from ``/v1/models`` and its budget from ``/v1/account``, sends batches of
at most the server's batch limit (as ``.npy`` bytes by default, or JSON), and turns the JSON
answers (an image-to-image model's images also as ``.npy``) back into
:class:`~modelheist.oracle.Answer` objects. Floats travel as shortest
round-trip decimals (orjson), so an answer is bit-identical to the in-process one.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import httpx
import numpy as np
import orjson

from modelheist.api import npy
from modelheist.defenses.proof_of_work import PROOF_HEADER, solve_challenge
from modelheist.errors import (
    ApiUnreachableError,
    AuthenticationError,
    BudgetExceededError,
    ForbiddenError,
    InvalidQueryError,
    ModelheistError,
    ProofOfWorkRequired,
    RateLimitedError,
    ServiceUnavailableError,
)
from modelheist.oracle.answer import Answer, OutputKind
from modelheist.oracle.base import Oracle

_KINDS: dict[str, OutputKind] = {
    "probabilities": "probabilities",
    "top_k": "top_k",
    "labels": "labels",
    "images": "images",
}


class HttpOracle(Oracle):
    """Query access to a model served by ``modelheist serve``, for the holder of ``api_key``.

    Nothing is sent until a property or :meth:`query` needs it. ``model`` names the served model
    (default: the only one served).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        model: str | None = None,
        timeout: float = 120.0,
        max_rate_wait: float = 600.0,
        encoding: Literal["npy", "json"] = "npy",
    ):
        if encoding not in ("npy", "json"):
            raise ModelheistError(f"encoding must be npy or json, got {encoding!r}")
        self.encoding = encoding
        self.url = url.rstrip("/")
        self.max_rate_wait = max_rate_wait
        self.api_key = api_key
        self.model = model
        self.timeout = timeout
        self._client: httpx.Client | None = None
        self._info: dict[str, Any] | None = None
        self._budget: int | None = None
        self._used = 0
        self.proof_seconds = 0.0  # time spent solving the server's proofs of work

    # -- transport -----------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.url,
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=self.timeout,
            )
        return self._client

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        extra_headers: dict[str, str] | None = None,
    ) -> Any:
        headers = {"Content-Type": content_type} if body is not None else {}
        headers.update(extra_headers or {})
        try:
            response = self._http().request(method, path, content=body, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
            raise ApiUnreachableError(f"cannot reach {self.url}{path}: {exc}") from None
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code < 400 and media_type == npy.MEDIA_TYPE:
            return _npy_document(response, f"{self.url}{path}")  # an image-to-image answer
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            document = None
        if response.status_code >= 400:
            raise _error_for(response.status_code, document, f"{self.url}{path}")
        if not isinstance(document, dict):
            raise ModelheistError(f"{self.url}{path} did not answer with a JSON object")
        return document

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- what the API tells a client -----------------------------------------------------------

    def connect(self) -> HttpOracle:
        """Fetch the model's description and this client's usage (done once, on first use)."""
        if self._info is not None:
            return self
        models = self._request("GET", "/v1/models").get("models", [])
        if not isinstance(models, list) or not models:
            raise ModelheistError(f"{self.url} serves no model (is it a modelheist server?)")
        if self.model is None:
            if len(models) != 1:
                names = ", ".join(m["name"] for m in models) or "none"
                raise ModelheistError(f"{self.url} serves several models ({names}); name one")
            info = models[0]
        else:
            info = next((m for m in models if m["name"] == self.model), None)
            if info is None:
                raise ModelheistError(f"{self.url} serves no model named {self.model!r}")
        if info.get("output") not in _KINDS:
            raise ModelheistError(
                f"{self.url} reports an unknown output kind {info.get('output')!r}"
            )
        account = self._request("GET", "/v1/account")
        try:
            self._budget = account["budget"]
            self._used = int(account["queries_used"])
        except (KeyError, TypeError, ValueError):
            raise ModelheistError(f"{self.url}/v1/account answered without a budget") from None
        self._info = info
        return self

    @property
    def name(self) -> str:
        return str(self.connect()._info["name"])  # type: ignore[index]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.connect()._info["input_shape"])  # type: ignore[index]

    @property
    def classes(self) -> list[str]:
        return list(self.connect()._info["classes"])  # type: ignore[index]

    @property
    def output_kind(self) -> OutputKind:
        return _KINDS[self.connect()._info["output"]]  # type: ignore[index]

    @property
    def input_range(self) -> tuple[float, float] | None:
        bounds = self.connect()._info.get("input_range")  # type: ignore[union-attr]
        return None if bounds is None else (float(bounds[0]), float(bounds[1]))

    @property
    def returns_leaves(self) -> bool:
        return bool(self.connect()._info.get("leaves", False))  # type: ignore[union-attr]

    @property
    def accepts_missing(self) -> bool:
        return bool(self.connect()._info.get("incomplete_queries", False))  # type: ignore[union-attr]

    @property
    def budget(self) -> int | None:
        return self.connect()._budget

    @property
    def queries_used(self) -> int:
        return self.connect()._used

    @property
    def max_batch(self) -> int:  # type: ignore[override]
        return min(Oracle.max_batch, int(self.connect()._info["max_batch"]))  # type: ignore[index]

    def _query_batch(self, x: np.ndarray) -> Answer:
        if x.dtype == object:  # a text model's strings: JSON only
            try:
                body = orjson.dumps({"inputs": [str(t) for t in x]})
            except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate
                raise InvalidQueryError(f"the texts cannot be sent as JSON: {exc}") from None
            content_type = "application/json"
        elif self.encoding == "npy":
            x = np.ascontiguousarray(x, np.float32)
            body, content_type = npy.encode(x), npy.MEDIA_TYPE
        else:
            x = np.ascontiguousarray(x, np.float32)
            body = orjson.dumps({"inputs": x}, option=orjson.OPT_SERIALIZE_NUMPY)
            content_type = "application/json"
        path = f"/v1/models/{self.name}/predict"
        headers: dict[str, str] = {}
        if self.encoding == "npy" and self.output_kind == "images":
            headers["Accept"] = npy.MEDIA_TYPE  # images come back as .npy too
        for _ in range(3):  # a challenge can expire or change between two tries
            try:
                document = self._request("POST", path, body, content_type, headers)
                break
            except ProofOfWorkRequired as needed:
                start = time.perf_counter()
                headers[PROOF_HEADER] = solve_challenge(needed.challenge, x)
                self.proof_seconds += time.perf_counter() - start
        else:
            document = self._request("POST", path, body, content_type, headers)
        self._used = int(document["queries_used"])
        if "outputs" in document:
            return _image_answer(document["outputs"], len(x), self.output_shape, self.url)
        return _answer(document["predictions"], len(self.classes))

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        shape = self.connect()._info.get("output_shape")  # type: ignore[union-attr]
        return None if shape is None else tuple(shape)


def _npy_document(response: httpx.Response, where: str) -> dict[str, Any]:
    """A ``.npy`` answer as the JSON one reads: ``outputs`` and ``queries_used``."""
    try:
        outputs = npy.decode(response.content)
        used = int(response.headers[npy.USED_HEADER])
    except (InvalidQueryError, KeyError, ValueError):
        raise ModelheistError(f"{where} answered with an unreadable .npy body") from None
    return {"outputs": outputs, "queries_used": used}


def _image_answer(outputs: Any, n: int, shape: tuple[int, ...] | None, where: str) -> Answer:
    """An image-to-image model's answer, checked against the shape the API declares."""
    images = np.asarray(outputs, np.float32)
    if shape is None or images.shape != (n, *shape):
        raise ModelheistError(
            f"{where} answered images of shape {images.shape}, not ({n}, *{shape})"
        )
    return Answer.of_images(images)


def _answer(predictions: list[dict[str, Any]], num_classes: int) -> Answer:
    labels = np.array([p["label"] for p in predictions], np.int64)
    leaves = None
    if predictions and "leaf" in predictions[0]:
        leaves = np.array([p["leaf"] for p in predictions], np.int64)
    if predictions and "probabilities" in predictions[0]:
        probs = np.array([p["probabilities"] for p in predictions], np.float64)
        return Answer(labels, probs, leaves=leaves)
    if predictions and "top_k" in predictions[0]:
        top = np.array([[e["label"] for e in p["top_k"]] for p in predictions], np.int64)
        top_p = np.array([[e["probability"] for e in p["top_k"]] for p in predictions], np.float64)
        return Answer(labels, None, top, top_p, leaves=leaves)
    return Answer(labels, leaves=leaves)


def _error_for(status: int, document: Any, where: str) -> ModelheistError:
    error = document.get("error", {}) if isinstance(document, dict) else {}
    message = f"{where}: {error.get('message', f'HTTP {status}')}"
    code = error.get("code")
    if status == 428 and isinstance(error.get("challenge"), dict):
        return ProofOfWorkRequired(message, error["challenge"])
    if status == 401:
        return AuthenticationError(message)
    if status == 403:
        return ForbiddenError(message)
    if status == 429 and code == "rate_limited":
        return RateLimitedError(message, float(error.get("retry_after", 1.0)))
    if status == 429:
        return BudgetExceededError(message)
    if status in (400, 413, 422):
        return InvalidQueryError(message)
    if status >= 500:
        return ServiceUnavailableError(message)
    return ModelheistError(message)
