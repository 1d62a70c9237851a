"""Where networks are trained: the CPU by default, a CUDA GPU on request.

``MODELHEIST_DEVICE`` names the device the :class:`~modelheist.models.training.Trainer` moves a
network to for its optimiser steps (``cpu``, ``cuda``, ``cuda:1``, or ``auto`` for a GPU when one
is present); the trained network comes back to the CPU, where models are saved, served and
evaluated. A GPU changes the arithmetic's order (cuDNN's kernels), so runs on it are
reproducible on the same machine but not bit-identical to CPU runs; results rows record the
device next to the machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from modelheist.errors import ModelheistError

DEVICE_VARIABLE = "MODELHEIST_DEVICE"


def training_device() -> torch.device:
    """The device named by ``MODELHEIST_DEVICE`` (default ``cpu``); a clear error when it names
    a GPU this machine does not have."""
    name = os.environ.get(DEVICE_VARIABLE, "cpu").strip().lower() or "cpu"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelheistError(
            f"{DEVICE_VARIABLE}={name!r} is not a device; use cpu, cuda, cuda:N or auto"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelheistError(f"{DEVICE_VARIABLE}={name!r}, but this machine has no CUDA GPU")
    if device.type not in ("cpu", "cuda"):
        raise ModelheistError(f"{DEVICE_VARIABLE}={name!r}: only cpu and cuda are supported")
    return device


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` (at least 1; None: the process's own) intra-op torch
    threads, then restore the process's own: a job run in the calling process leaves its
    thread count as it found it."""
    before = torch.get_num_threads()
    torch.set_num_threads(before if count is None else max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(before)
