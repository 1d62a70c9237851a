"""Image-to-image tasks on the offline image sets, for the translation victims of Szyller et al.
("Good Artists Copy, Great Artists Steal", 2021): each pairs an input image with the output the
owner's model should give.

* ``SOURCE-sr``: 2x super-resolution. The input is the source image averaged over 2x2 blocks
  (14x14 for Fashion-MNIST), the target the image itself (28x28).
* ``SOURCE-sketch``: a style mapping to a drawing style the owner defines: dark strokes where
  the image's brightness changes, on white (one minus the Sobel gradient magnitude, scaled by
  :data:`SKETCH_SCALE` and clipped to [0, 1]), lightly shaded by the image itself
  (:data:`SKETCH_SHADE`). Input and target have the source's shape.

``SOURCE`` is a registered image dataset (``fashion-mnist``, ``mnist5k``, ``digits``); the
splits are the source's own (owner train, validation, evaluation, attacker pool), so a
translation victim and a classifier trained with one seed share their data split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from modelheist.data.registry import REGISTRY, Dataset, load_dataset
from modelheist.errors import DatasetUnavailableError

#: Each task and what it asks.
TASKS = {"sr": "2x super-resolution", "sketch": "the owner's drawing style"}
SKETCH_SCALE = 0.5
SKETCH_SHADE = 0.15


@dataclass(frozen=True)
class Pairs:
    """Inputs and the targets the owner's model should map them to."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class TranslationSet:
    """A translation task's splits (see the module docstring)."""

    name: str
    task: str
    source: Dataset
    train: Pairs
    validation: Pairs | None
    test: Pairs
    pool: Pairs

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.train.y.shape[1:])

    @property
    def split(self) -> dict[str, float | int]:
        """How to rebuild this split (what a model card records)."""
        return self.source.split


def translation_names() -> list[str]:
    """Every translation task on a registered image dataset."""
    return [
        f"{name}-{task}"
        for name, info in REGISTRY.items()
        if info.kind == "image"
        for task in TASKS
    ]


def is_translation(name: str) -> bool:
    """Whether ``name`` names a translation task (``SOURCE-sr`` or ``SOURCE-sketch``)."""
    source, _, task = name.rpartition("-")
    return task in TASKS and source in REGISTRY and REGISTRY[source].kind == "image"


def downsample(images: np.ndarray) -> np.ndarray:
    """Images (n, C, H, W) averaged over 2x2 blocks (H and W even)."""
    n, c, h, w = images.shape
    if h % 2 or w % 2:
        raise DatasetUnavailableError(f"2x super-resolution needs even sizes, not {h}x{w}")
    return images.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5)).astype(np.float32)


#: The 3x3 Sobel kernel of the horizontal gradient (its transpose: the vertical one).
_SOBEL = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sketch(images: np.ndarray) -> np.ndarray:
    """The owner's drawing style (see the module docstring) of images (n, C, H, W) in [0, 1];
    each image and channel on its own (a 2-D Sobel gradient, edges repeated outwards)."""
    x = np.asarray(images, np.float64)
    gx = ndimage.correlate(x, _SOBEL[None, None], mode="nearest")
    gy = ndimage.correlate(x, _SOBEL.T[None, None], mode="nearest")
    strokes = np.clip(SKETCH_SCALE * np.hypot(gx, gy), 0.0, 1.0)
    return np.clip(1.0 - strokes - SKETCH_SHADE * x, 0.0, 1.0).astype(np.float32)


def _pairs(task: str, images: np.ndarray) -> Pairs:
    images = np.asarray(images, np.float32)
    if task == "sr":
        return Pairs(downsample(images), images)
    return Pairs(images, sketch(images))


def load_translation(
    name: str, seed: int = 0, pool_fraction: float = 0.5, validation_fraction: float = 0.1
) -> TranslationSet:
    """Translation task ``name`` on its source's split of ``seed``."""
    if not is_translation(name):
        raise DatasetUnavailableError(
            f"unknown translation task {name!r}; choose one of: {', '.join(translation_names())}"
        )
    source_name, _, task = name.rpartition("-")
    source = load_dataset(
        source_name, seed=seed, pool_fraction=pool_fraction, validation_fraction=validation_fraction
    )
    if source.kind != "image":
        raise DatasetUnavailableError(f"{source_name} holds {source.kind}, not images")
    return TranslationSet(
        name,
        task,
        source,
        _pairs(task, source.train.x),
        None if source.validation is None else _pairs(task, source.validation.x),
        _pairs(task, source.test.x),
        _pairs(task, source.pool.x),
    )
