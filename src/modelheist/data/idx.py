"""Reader and writer for the IDX format of MNIST-style datasets (LeCun et al.).

An IDX file starts with two zero bytes, a type code, the number of dimensions, then one
big-endian uint32 per dimension, then the data in row-major order. Files may be gzip-compressed
(as Debian's ``dataset-fashion-mnist`` ships them); compression is detected from the magic bytes,
not the file name.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from modelheist.errors import DatasetUnavailableError

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a native-endian array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetUnavailableError(f"cannot read IDX file {path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetUnavailableError(f"{path} is not a valid gzip file: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DatasetUnavailableError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise DatasetUnavailableError(f"{path} is truncated (header)")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header_end != count * dtype.itemsize:
        raise DatasetUnavailableError(
            f"{path} is truncated or padded: header says shape {shape}, "
            f"file holds {len(raw) - header_end} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_end, count=count).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file; gzip it when ``compress`` (default: name ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big_endian not in _CODES:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}")
    header = bytes([0, 0, _CODES[big_endian], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(big_endian).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    """Locate ``<split>-images-idx3-ubyte[.gz]`` and the matching labels file in ``folder``.

    ``split`` is ``train`` or ``t10k`` (MNIST naming); a ``test`` prefix is accepted as well.
    """
    prefixes = ("t10k", "test") if split == "t10k" else (split,)
    for prefix in prefixes:
        for suffix in ("", ".gz"):
            images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None
