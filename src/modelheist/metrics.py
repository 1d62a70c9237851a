"""Extraction metrics (Tramèr et al., USENIX Sec '16, §3; Jagielski et al. '20 on fidelity).

* accuracy: agreement with the true labels;
* fidelity: agreement of the surrogate's labels with the victim's on the same inputs; on the
  test split this is Tramèr's 1 - R_test, on inputs drawn uniformly from the input domain it is
  1 - R_unif.
"""

from __future__ import annotations

import numpy as np

from modelheist.models.classifier import Classifier, accuracy, predict_labels

__all__ = ["accuracy", "fidelity", "uniform_fidelity", "uniform_inputs"]


def fidelity(surrogate: Classifier, victim: Classifier, x: np.ndarray) -> float:
    """Fraction of ``x`` on which surrogate and victim predict the same label."""
    if len(x) == 0:
        return float("nan")
    return float((predict_labels(surrogate, x) == predict_labels(victim, x)).mean())


def uniform_inputs(
    shape: tuple[int, ...],
    n: int,
    seed: int,
    low: np.ndarray | float = 0.0,
    high: np.ndarray | float = 1.0,
) -> np.ndarray:
    """``n`` inputs drawn uniformly from the box [low, high] (images: [0, 1] per pixel)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=(n, *shape)).astype(np.float32)


def uniform_fidelity(
    surrogate: Classifier,
    victim: Classifier,
    n: int = 10_000,
    seed: int = 0,
    low: np.ndarray | float = 0.0,
    high: np.ndarray | float = 1.0,
) -> float:
    """Tramèr's 1 - R_unif: agreement on uniformly random inputs from the input domain."""
    shape = tuple(victim.card.input_shape)
    return fidelity(surrogate, victim, uniform_inputs(shape, n, seed, low, high))
