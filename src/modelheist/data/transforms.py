"""Adapting one dataset's inputs to another model's input shape (for transfer sets)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from modelheist.errors import ModelheistError


def fit_to_shape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Return images ``x`` (n, C, H, W) resized and channel-converted to ``shape`` (C, H, W).

    Grey images become RGB by repetition, RGB becomes grey by the mean; sizes change by
    bilinear interpolation (with antialiasing when shrinking). Tabular inputs must already match.
    """
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    if x.ndim != 4 or len(shape) != 3:
        raise ModelheistError(
            f"transfer-set inputs of shape {tuple(x.shape[1:])} cannot be fitted to the "
            f"victim's input shape {tuple(shape)}"
        )
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    channels = shape[0]
    if t.shape[1] != channels:
        if t.shape[1] == 1:
            t = t.repeat(1, channels, 1, 1)
        elif channels == 1:
            t = t.mean(dim=1, keepdim=True)
        else:
            raise ModelheistError(f"cannot convert {t.shape[1]}-channel images to {channels}")
    if tuple(t.shape[2:]) != tuple(shape[1:]):
        t = F.interpolate(
            t, size=tuple(shape[1:]), mode="bilinear", antialias=True, align_corners=False
        )
    return t.clamp_(0.0, 1.0).numpy()
