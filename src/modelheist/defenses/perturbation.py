"""Perturbation stages: the API returns the right label with a deceptive probability vector.

* :class:`ReverseSigmoid` — Lee et al., "Defending Against NN Model Stealing Attacks via
  Deceptive Perturbations" (IEEE S&P Workshops '19), Eq. 3-4: y' = alpha * (y - r(y)) with
  r(y) = beta * (sigmoid(gamma * logit(y)) - 1/2) and alpha renormalising to a sum of 1. As in
  the authors' description and Orekondy et al.'s reference implementation, the label returned
  is the model's own top-1 (utility is preserved); only the probability vector is perturbed.
* :class:`GaussianNoise` — additive N(0, sigma^2) noise on each probability, clipped at 0 and
  renormalised (the generic perturbation baseline of Orekondy et al. ICLR '20 and Tramèr '16
  §8). Deliberate design choice: the noise is a deterministic function of (key, input), so a
  client who repeats a query gets the same answer and cannot average the noise away (with
  fresh noise per call, k repeats shrink it by sqrt(k)). The key is the owner's secret
  (``key_file``): whoever knows it can compute the noise and subtract it. Without a key file
  the public ``seed`` stands in for it, which suits experiments, not a served model.
"""

from __future__ import annotations

import hashlib
import math
from typing import ClassVar

import numpy as np
from scipy.special import expit, logit

from modelheist.defenses.base import Capabilities, Defense, StageContext, require_probabilities
from modelheist.defenses.secrets import SecretFile, require_key_file
from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError
from modelheist.oracle.answer import Answer
from modelheist.oracle.inputs import row_bytes

_CLIP = 1e-9


def _renormalise(p: np.ndarray) -> np.ndarray:
    sums = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    return np.where(sums > 0, p / np.where(sums > 0, sums, 1.0), uniform)


class ReverseSigmoid(Defense):
    """Lee et al. '19 reverse-sigmoid perturbation (``reverse-sigmoid:beta=B,gamma=G``)."""

    name: ClassVar[str] = "reverse-sigmoid"
    capabilities: ClassVar[Capabilities] = Capabilities(
        rowwise=True, needs_probabilities=True, notes=("reverse-sigmoid",)
    )

    def __init__(self, beta: float = 0.7, gamma: float = 0.4):
        if not (0 < beta < math.inf and 0 < gamma < math.inf):
            raise ModelheistError(
                f"reverse-sigmoid: beta and gamma must be positive and finite, got {beta}, {gamma}"
            )
        self.beta = beta
        self.gamma = gamma

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        y = np.clip(require_probabilities(self, answer), _CLIP, 1.0 - _CLIP)
        r = self.beta * (expit(self.gamma * logit(y)) - 0.5)
        context.note(self.name)
        return Answer(answer.labels, _renormalise(np.clip(y - r, 0.0, None)))

    def spec(self) -> str:
        return f"{self.name}:beta={self.beta!r},gamma={self.gamma!r}"


class GaussianNoise(Defense):
    """Gaussian noise on the probabilities, renormalised
    (``noise:sigma=S,key_file=PATH`` or, for experiments, ``noise:sigma=S,seed=N``)."""

    name: ClassVar[str] = "noise"
    capabilities: ClassVar[Capabilities] = Capabilities(
        rowwise=True, needs_probabilities=True, notes=("noise",)
    )

    def __init__(self, sigma: float = 0.05, seed: int = 0, key_file: SecretFile | None = None):
        if not 0 < sigma < math.inf:
            raise ModelheistError(f"noise: sigma must be positive and finite, got {sigma}")
        self.sigma = sigma
        self.seed = seed
        self.key_file = key_file

    def open(self) -> None:
        if self.key_file is not None:
            self.key_file.check()

    def check_serving(self) -> None:
        require_key_file(self.name, "noise", self.key_file)

    def noise(self, inputs: np.ndarray, classes: int) -> np.ndarray:
        """Standard normal draws (n, classes), a function of (key, input) alone.

        Each input's float32 bytes (a text's UTF-8 bytes), prefixed with the key (or the seed), are expanded by
        SHAKE-256 into uniform 53-bit numbers, which Box-Muller turns into normals.
        """
        if self.key_file is not None:
            prefix = b"modelheist-noise-key:" + self.key_file.read() + b":"
        else:
            prefix = f"modelheist-noise:{self.seed}:".encode()
        raw = b"".join(
            hashlib.shake_256(prefix + data).digest(16 * classes) for data in row_bytes(inputs)
        )
        bits = np.frombuffer(raw, np.uint64).reshape(len(inputs), 2, classes)
        uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        return np.sqrt(-2.0 * np.log(uniform[:, 0])) * np.cos(2.0 * np.pi * uniform[:, 1])

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        p = require_probabilities(self, answer)
        noisy = np.clip(p + self.sigma * self.noise(inputs, p.shape[1]), 0.0, None)
        context.note(f"noise:{self.sigma:g}")
        return Answer(answer.labels, _renormalise(noisy))

    def spec(self) -> str:
        if self.key_file is not None:
            return f"{self.name}:sigma={self.sigma!r},key_file={self.key_file}"
        return f"{self.name}:sigma={self.sigma!r},seed={self.seed}"
