"""What one input is, on both sides of the API: a float32 array of the model's input shape, or,
for a text model (input shape ``()``), one string. Batches of text travel as 1-D object arrays
of ``str``; digests hash a string's UTF-8 bytes where they hash an array's float32 bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

#: A text model's input shape: each input is one string.
TEXT_SHAPE: tuple[int, ...] = ()


def takes_text(input_shape: Sequence[int]) -> bool:
    """Whether a model of ``input_shape`` takes strings."""
    return tuple(input_shape) == TEXT_SHAPE


def as_batch(x: object, input_shape: Sequence[int]) -> np.ndarray:
    """``x`` as a batch for a model of ``input_shape``: an object array of ``str`` for text
    (each element converted with ``str``), float32 otherwise (NaN, a missing feature, kept)."""
    if takes_text(input_shape):
        items = [x] if isinstance(x, str) else list(x)  # type: ignore[call-overload]
        batch = np.empty(len(items), dtype=object)
        batch[:] = [str(item) for item in items]
        return batch
    return np.asarray(x, np.float32)


def batch_digest(x: np.ndarray) -> bytes:
    """SHA-256 of a whole batch: its shape, then its float32 C-order bytes, or, for text, each
    string's UTF-8 bytes after their length (so that no two batches share a digest)."""
    if x.dtype == object:
        digest = hashlib.sha256(repr((len(x),)).encode())
        for text in x:
            data = str(text).encode("utf-8", errors="surrogatepass")
            digest.update(len(data).to_bytes(8, "big") + data)
        return digest.digest()
    x = np.ascontiguousarray(x, np.float32)
    return hashlib.sha256(repr(tuple(x.shape)).encode() + x.tobytes()).digest()


def row_bytes(x: np.ndarray) -> list[bytes]:
    """Each input as bytes: its float32 C-order bytes, or a string's UTF-8 bytes (what
    per-input hashes, such as the audit digest and keyed noise, are taken over)."""
    if x.dtype == object:
        return [str(t).encode("utf-8", errors="surrogatepass") for t in x]
    return [row.tobytes() for row in np.ascontiguousarray(x, np.float32).reshape(len(x), -1)]


def row_digests(x: np.ndarray) -> list[str]:
    """SHA-256 of each input (an audit record's input digest), over :func:`row_bytes`."""
    return [hashlib.sha256(data).hexdigest() for data in row_bytes(x)]
