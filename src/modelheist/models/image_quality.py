"""How close one batch of images is to another: PSNR and SSIM per image (scikit-image's
``peak_signal_noise_ratio`` and ``structural_similarity``, Wang et al. '04, with its default
7x7 window), averaged over the batch; images (n, C, H, W) with values in [0, 1]."""

from __future__ import annotations

import numpy as np

DATA_RANGE = 1.0


def _pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"compare batches of one shape (n, C, H, W), not {a.shape} and {b.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean PSNR in dB over the images (an identical pair counts as 100 dB, not infinity)."""
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _pairs(a, b)
    values = []
    for x, y in zip(a, b, strict=True):
        values.append(
            100.0 if np.array_equal(x, y) else peak_signal_noise_ratio(x, y, data_range=DATA_RANGE)
        )
    return float(np.mean(values))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over the images (channels averaged)."""
    from skimage.metrics import structural_similarity

    a, b = _pairs(a, b)
    values = [
        structural_similarity(x, y, data_range=DATA_RANGE, channel_axis=0)
        for x, y in zip(a, b, strict=True)
    ]
    return float(np.mean(values))
