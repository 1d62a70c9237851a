"""Perturbation stages: the API returns the right label with a deceptive probability vector.

* :class:`ReverseSigmoid` — Lee et al., "Defending Against NN Model Stealing Attacks via
  Deceptive Perturbations" (IEEE S&P Workshops '19), Eq. 3-4: y' = alpha * (y - r(y)) with
  r(y) = beta * (sigmoid(gamma * logit(y)) - 1/2) and alpha renormalising to a sum of 1. As in
  the authors' description and Orekondy et al.'s reference implementation, the label returned
  is the model's own top-1 (utility is preserved); only the probability vector is perturbed.
* :class:`GaussianNoise` — additive N(0, sigma^2) noise on each probability, clipped at 0 and
  renormalised (the generic perturbation baseline of Orekondy et al. ICLR '20 and Tramèr '16
  §8). Deliberate design choice: the noise is a deterministic function of (seed, input), so a
  client who repeats a query gets the same answer and cannot average the noise away (with
  fresh noise per call, k repeats shrink it by sqrt(k)).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar

import numpy as np
from scipy.special import expit, logit

from modelheist.api.answer import Answer
from modelheist.defenses.base import Defense, require_probabilities
from modelheist.errors import ModelheistError

_CLIP = 1e-9


def _renormalise(p: np.ndarray) -> np.ndarray:
    sums = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    return np.where(sums > 0, p / np.where(sums > 0, sums, 1.0), uniform)


class ReverseSigmoid(Defense):
    """Lee et al. '19 reverse-sigmoid perturbation (``reverse-sigmoid:beta=B,gamma=G``)."""

    name: ClassVar[str] = "reverse-sigmoid"
    rowwise: ClassVar[bool] = True
    requires_probabilities: ClassVar[bool] = True

    def __init__(self, beta: float = 0.7, gamma: float = 0.4):
        if not (0 < beta < math.inf and 0 < gamma < math.inf):
            raise ModelheistError(
                f"reverse-sigmoid: beta and gamma must be positive and finite, got {beta}, {gamma}"
            )
        self.beta = beta
        self.gamma = gamma

    def apply(self, inputs: np.ndarray, answer: Answer, state: dict[str, Any]) -> Answer:
        y = np.clip(require_probabilities(self, answer), _CLIP, 1.0 - _CLIP)
        r = self.beta * (expit(self.gamma * logit(y)) - 0.5)
        perturbed = _renormalise(np.clip(y - r, 0.0, None))
        return Answer(answer.labels, perturbed, flags=answer.flags).with_flag(self.name)

    def spec(self) -> str:
        return f"{self.name}:beta={self.beta:g},gamma={self.gamma:g}"


class GaussianNoise(Defense):
    """Gaussian noise on the probabilities, renormalised (``noise:sigma=S,seed=N``)."""

    name: ClassVar[str] = "noise"
    rowwise: ClassVar[bool] = True
    requires_probabilities: ClassVar[bool] = True

    def __init__(self, sigma: float = 0.05, seed: int = 0):
        if not 0 < sigma < math.inf:
            raise ModelheistError(f"noise: sigma must be positive and finite, got {sigma}")
        self.sigma = sigma
        self.seed = seed

    def noise(self, inputs: np.ndarray, classes: int) -> np.ndarray:
        """Standard normal draws (n, classes), a function of (seed, input) alone.

        Each input's float32 bytes, prefixed with the seed, are expanded by SHAKE-256 into
        uniform 53-bit numbers, which Box-Muller turns into normals.
        """
        prefix = f"modelheist-noise:{self.seed}:".encode()
        rows = np.ascontiguousarray(inputs, np.float32).reshape(len(inputs), -1)
        raw = b"".join(
            hashlib.shake_256(prefix + row.tobytes()).digest(16 * classes) for row in rows
        )
        bits = np.frombuffer(raw, np.uint64).reshape(len(inputs), 2, classes)
        uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        return np.sqrt(-2.0 * np.log(uniform[:, 0])) * np.cos(2.0 * np.pi * uniform[:, 1])

    def apply(self, inputs: np.ndarray, answer: Answer, state: dict[str, Any]) -> Answer:
        p = require_probabilities(self, answer)
        noisy = np.clip(p + self.sigma * self.noise(inputs, p.shape[1]), 0.0, None)
        return Answer(answer.labels, _renormalise(noisy), flags=answer.flags).with_flag(
            f"noise:{self.sigma:g}"
        )

    def spec(self) -> str:
        return f"{self.name}:sigma={self.sigma:g},seed={self.seed}"
