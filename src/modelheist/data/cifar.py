"""Reader for CIFAR-10 in its *binary* distribution (``cifar-10-batches-bin``).

Deliberate deviation from the usual loaders: the "python batches" of CIFAR-10 are pickle files, and
modelheist never unpickles a file a user hands over. The binary version holds the same images
as fixed-size records (1 label byte + 3,072 pixel bytes, channel-major 3x32x32) and is read here
without any code execution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelheist.errors import DatasetUnavailableError

RECORD_BYTES = 1 + 3 * 32 * 32
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch into (images uint8 [n,3,32,32], labels int64 [n])."""
    raw = path.read_bytes()
    if not raw or len(raw) % RECORD_BYTES:
        raise DatasetUnavailableError(
            f"{path} is not a CIFAR-10 binary batch ({len(raw)} bytes is not a multiple of "
            f"{RECORD_BYTES})"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DatasetUnavailableError(f"{path} has labels above 9: not a CIFAR-10 batch")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def read_cifar10_folder(
    folder: Path,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Read ``data_batch_1..5.bin`` and ``test_batch.bin`` from ``folder`` (or its
    ``cifar-10-batches-bin`` subfolder) into (train, test) pairs."""
    if (folder / "cifar-10-batches-bin").is_dir():
        folder = folder / "cifar-10-batches-bin"
    train_files = sorted(folder.glob("data_batch_*.bin"))
    test_file = folder / "test_batch.bin"
    if not train_files or not test_file.is_file():
        hint = ""
        if (folder / "data_batch_1").exists() or (folder / "cifar-10-batches-py").exists():
            hint = (
                " (found the python version: its batches are pickles, which modelheist never "
                "loads; use the binary version, cifar-10-binary.tar.gz)"
            )
        raise DatasetUnavailableError(
            f"no CIFAR-10 binary batches (data_batch_*.bin, test_batch.bin) in {folder}{hint}"
        )
    parts = [read_cifar10_batch(f) for f in train_files]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, read_cifar10_batch(test_file)
