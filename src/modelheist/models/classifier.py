"""The ``Classifier`` protocol every classifier victim and surrogate follows, and its
implementations (image-to-image models, :mod:`modelheist.models.translation`, share the
:class:`ModelCard` but translate instead).

A classifier maps a batch of raw inputs (NumPy, float32) to class probabilities. Networks are
wrapped PyTorch modules; classical models (logistic regression, decision trees) are trained with
scikit-learn and kept as plain arrays, so that they save without pickling and predict exactly
as scikit-learn does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from scipy.special import expit, softmax
from torch import nn


@dataclass
class ModelCard:
    """What a saved model is: architecture, data, classes, input contract, training and metrics."""

    architecture: str
    dataset: str
    classes: list[str]
    input_shape: list[int]
    normalisation: dict[str, list[float]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    input_range: list[float] | None = None
    members: int = 1  # > 1: an ensemble of that many networks of ``architecture``
    protections: list[dict[str, Any]] = field(default_factory=list)  # what training added
    output_shape: list[int] | None = None  # an image-to-image model's output (no classes)

    @property
    def translates(self) -> bool:
        """Whether the model maps images to images (modelheist.models.translation)."""
        return self.output_shape is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@runtime_checkable
class Classifier(Protocol):
    """Maps raw inputs of shape (n, *input_shape) to probabilities of shape (n, num_classes)."""

    card: ModelCard

    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...


def predict_labels(model: Classifier, x: np.ndarray) -> np.ndarray:
    """Arg-max labels of ``model`` on ``x``."""
    return np.asarray(model.predict_proba(x)).argmax(axis=1)


def accuracy(model: Classifier, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` that ``model`` labels as ``y`` (NaN for no inputs)."""
    return float((predict_labels(model, x) == y).mean()) if len(y) else float("nan")


class TorchClassifier:
    """A PyTorch module (producing logits) behind the Classifier protocol.

    Image networks predict with their weights in channels-last layout and in chunks of 64: on
    the 2-core x86 machine this project is measured on, oneDNN's channels-last convolutions ran
    the CNN 3-4x faster than the default layout (37 vs 100-160 us per 28x28 image), and chunks
    of 32-64 images stay in cache (docs/benchmarks.md, "Serving"). The layout changes no value
    beyond float rounding (max 3e-6 on the logits).
    """

    def __init__(self, module: nn.Module, card: ModelCard, batch_size: int = 64):
        self.module = module
        self.card = card
        self.batch_size = batch_size

    def logits(self, x: np.ndarray) -> np.ndarray:
        self.module.eval()
        if len(self.card.input_shape) == 3:  # outside inference mode: the weights stay trainable
            self.module.to(memory_format=torch.channels_last)  # a no-op once converted
        with torch.inference_mode():
            out = [
                self.module(
                    torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch_size], np.float32))
                )
                for i in range(0, len(x), self.batch_size)
            ]
        if not out:
            return np.zeros((0, self.card.num_classes), np.float32)
        return torch.cat(out).numpy()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.logits(x).astype(np.float64), axis=1).astype(np.float32)


class LinearModel:
    """Logistic (binary) or softmax (multiclass) regression over raw features.

    ``coef`` is (1, d) for a binary model (probability of class 1 is sigmoid(w.x + b)) or
    (c, d) for a multinomial one.
    """

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, card: ModelCard):
        self.coef = np.asarray(coef, np.float64)
        self.intercept = np.asarray(intercept, np.float64)
        self.card = card

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).astype(np.float64) @ self.coef.T + self.intercept

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.decision_function(x)
        if self.coef.shape[0] == 1:
            p1 = expit(z[:, 0])
            return np.stack([1.0 - p1, p1], axis=1)
        return softmax(z, axis=1)


class TreeModel:
    """A binary decision tree in scikit-learn's array layout (``tree_`` attributes).

    ``value`` holds per-node class fractions; a leaf's probabilities are its row of ``value``.
    """

    def __init__(
        self,
        children_left: np.ndarray,
        children_right: np.ndarray,
        feature: np.ndarray,
        threshold: np.ndarray,
        value: np.ndarray,
        card: ModelCard,
    ):
        self.children_left = np.asarray(children_left, np.int64)
        self.children_right = np.asarray(children_right, np.int64)
        self.feature = np.asarray(feature, np.int64)
        self.threshold = np.asarray(threshold, np.float64)
        self.value = np.asarray(value, np.float64)
        self.card = card

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Node reached by each input: its leaf (scikit-learn's ``apply``), or, for an input
        with missing (NaN) features, the first node that tests a missing one: BigML's
        "incomplete query" semantics (Tramèr et al. '16 §4.2)."""
        flat = x.reshape(len(x), -1)
        node = np.zeros(len(flat), np.int64)

        def moving(nodes: np.ndarray, rows: np.ndarray) -> np.ndarray:
            internal = self.children_left[nodes] >= 0
            tested = flat[rows, np.where(internal, self.feature[nodes], 0)]
            return internal & ~np.isnan(tested)

        rows = np.arange(len(flat))
        active = moving(node, rows)
        while active.any():
            idx = rows[active]
            n = node[idx]
            go_left = flat[idx, self.feature[n]].astype(np.float32) <= self.threshold[n]
            node[idx] = np.where(go_left, self.children_left[n], self.children_right[n])
            active = moving(node, rows)
        return node

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        probs = self.value[self.apply(x)]
        return probs / probs.sum(axis=1, keepdims=True)
