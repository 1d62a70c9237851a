"""What an inference API returns for a batch of queries: the answer a client sees.

An :class:`Answer` holds exactly what leaves the API, nothing more: what the defense stages
noticed (flags, alarms) stays on the server, in the audit log (docs/architecture.md, "The
Defense seam").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

OutputKind = Literal["probabilities", "top_k", "labels", "images"]
#: The label of an answer that carries no class: an image-to-image model's.
NO_LABEL = -1


@dataclass(frozen=True)
class Answer:
    """The API's answer to a batch of n queries, at some output granularity.

    ``labels`` is always present (:data:`NO_LABEL` for an image-to-image model's answers).
    ``probabilities`` (n, c) is present when the API returns full (possibly rounded or
    perturbed) probability vectors; ``top_k``/``top_k_probabilities`` (n, k) when it returns
    the k most likely classes; ``leaves`` the tree node reached, where a tree API returns it (as
    BigML did); ``images`` (n, C, H, W) an image-to-image model's outputs.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    top_k: np.ndarray | None = None
    top_k_probabilities: np.ndarray | None = None
    leaves: np.ndarray | None = None
    images: np.ndarray | None = None

    @classmethod
    def of_images(cls, images: np.ndarray) -> Answer:
        """An image-to-image model's answer (no class)."""
        return cls(np.full(len(images), NO_LABEL, np.int64), images=images)

    @property
    def kind(self) -> OutputKind:
        if self.images is not None:
            return "images"
        if self.probabilities is not None:
            return "probabilities"
        return "top_k" if self.top_k is not None else "labels"

    def __len__(self) -> int:
        return len(self.labels)

    def soft_targets(self, num_classes: int) -> np.ndarray:
        """Best probability-vector reading of the answer for training a surrogate.

        Full probabilities are renormalised (rounding may break the sum); top-k spreads the
        remaining mass evenly over the other classes; labels become one-hot vectors.
        """
        n = len(self.labels)
        if self.probabilities is not None:
            p = np.clip(np.asarray(self.probabilities, np.float64), 0.0, None)
            sums = p.sum(axis=1, keepdims=True)
            out = np.where(sums > 0, p / np.where(sums > 0, sums, 1.0), 1.0 / num_classes)
            return out.astype(np.float32)
        out = np.zeros((n, num_classes), np.float64)
        if self.top_k is not None and self.top_k_probabilities is not None:
            k = self.top_k.shape[1]
            rest = np.clip(1.0 - self.top_k_probabilities.sum(axis=1), 0.0, 1.0)
            if num_classes > k:
                out += (rest / (num_classes - k))[:, None]
            np.put_along_axis(out, self.top_k, self.top_k_probabilities, axis=1)
            return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)
        out[np.arange(n), self.labels] = 1.0
        return out.astype(np.float32)

    def take(self, index: np.ndarray | slice) -> Answer:
        """The answers for a subset of the batch."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return Answer(
            self.labels[index],
            pick(self.probabilities),
            pick(self.top_k),
            pick(self.top_k_probabilities),
            pick(self.leaves),
            pick(self.images),
        )


def concatenate(answers: list[Answer]) -> Answer:
    """Join the answers of consecutive batches (all of one granularity)."""
    if not answers:
        raise ValueError("no answers to concatenate")

    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(a, name) for a in answers]
        return None if parts[0] is None else np.concatenate(parts)

    return Answer(
        cat("labels"),
        cat("probabilities"),
        cat("top_k"),
        cat("top_k_probabilities"),
        cat("leaves"),
        cat("images"),
    )
