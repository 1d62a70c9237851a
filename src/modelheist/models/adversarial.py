"""Gradient-sign perturbations of inputs: FGSM, I-FGSM and PGD in an L-infinity ball.

One implementation serves the attacks (JBDA's Jacobian steps, PRADA's T-RND and N I-FGSM
crafters) and the owner's adversarial training and its adversarial accuracy metric (Madry et
al., ICLR '18: PGD with a random start), so that both sides perturb inputs the same way.

* :func:`input_gradient` — the gradient of a loss of the network's logits with respect to the
  inputs, computed in batches with the network in evaluation mode;
* :func:`sign_steps` — ``steps`` steps of size ``step_size`` along the sign of the gradient of
  the cross-entropy against ``classes``: down it (``targeted``: into the classes) or up it
  (away from them), each followed by a projection onto the ``epsilon``-ball around the start
  and, when ``bounds`` are given, onto the input domain. ``steps=1, step_size=epsilon`` is
  FGSM; PRADA's I-FGSM takes ``step_size = epsilon / steps`` and no random start; PGD starts
  from a uniform random point of the ball (``random_start``);
* :func:`pgd` — the same steps on one batch of tensors on the training device (adversarial
  training crafts each batch with it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LossOfLogits = Callable[[torch.Tensor, slice], torch.Tensor]


def input_gradient(
    module: nn.Module, x: np.ndarray, loss_fn: LossOfLogits, batch_size: int = 256
) -> np.ndarray:
    """Gradient of ``loss_fn(logits, rows)`` with respect to ``x`` (``rows`` is the slice of
    ``x`` in the batch), in batches of ``batch_size``; ``module`` is left in evaluation mode."""
    module.eval()
    grads = []
    for i in range(0, len(x), batch_size):
        rows = slice(i, i + batch_size)
        xs = torch.from_numpy(np.ascontiguousarray(x[rows], np.float32)).requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(module(xs), rows), xs)
        grads.append(grad.numpy())
    return np.concatenate(grads)


def sign_steps(
    module: nn.Module,
    x: np.ndarray,
    classes: np.ndarray,
    epsilon: float,
    steps: int,
    step_size: float | None = None,
    targeted: bool = False,
    random_start: bool = False,
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> np.ndarray:
    """I-FGSM / PGD from ``x`` against ``classes`` (see the module docstring); returns float32.

    ``step_size`` defaults to ``epsilon / steps``; ``seed`` drives the random start only. The
    network is put in evaluation mode; ``batch_size`` inputs are perturbed at a time.
    """
    classes_t = torch.from_numpy(np.asarray(classes, np.int64))
    size = epsilon / steps if step_size is None else step_size
    x = np.ascontiguousarray(x, np.float32)
    out = x.copy()
    if random_start:
        noise = np.random.default_rng(seed).uniform(-epsilon, epsilon, size=x.shape)
        out = out + noise.astype(np.float32)
    module.eval()
    for i in range(0, len(x), batch_size):
        rows = slice(i, i + batch_size)
        out[rows] = _ascend(
            module,
            torch.from_numpy(out[rows]),
            torch.from_numpy(x[rows]),
            classes_t[rows],
            epsilon,
            steps,
            -size if targeted else size,
            bounds,
        ).numpy()
    return out


def pgd(
    module: nn.Module,
    x: torch.Tensor,
    classes: torch.Tensor,
    epsilon: float,
    steps: int,
    step_size: float,
    random_start: bool = True,
    bounds: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD (Madry et al., ICLR '18, §2) on one batch of tensors where they live: the routine of
    :func:`sign_steps` for a training step, whose batch is already on the training device. The
    random start is drawn from ``generator`` (a CPU generator); the module's mode is the
    caller's choice, and its parameters receive no gradient."""
    start = x.detach()
    out = start.clone()
    if random_start:
        noise = torch.rand(start.shape, generator=generator, dtype=start.dtype) * 2 - 1
        out = out + epsilon * noise.to(start.device)
    return _ascend(module, out, start, classes, epsilon, steps, step_size, bounds)


def _ascend(
    module: nn.Module,
    out: torch.Tensor,
    start: torch.Tensor,
    classes: torch.Tensor,
    epsilon: float,
    steps: int,
    step_size: float,
    bounds: tuple[float, float] | None,
) -> torch.Tensor:
    """``steps`` steps of ``step_size`` (negative: descent) along the sign of the gradient of
    the cross-entropy against ``classes``, each followed by a projection onto the
    ``epsilon``-ball around ``start`` and onto ``bounds`` (as is the first point, ``out``)."""
    out = _project(out.detach(), start, epsilon, bounds)
    for _ in range(steps):
        out.requires_grad_(True)
        loss = F.cross_entropy(module(out), classes, reduction="sum")
        (grad,) = torch.autograd.grad(loss, out)
        out = _project(out.detach() + step_size * grad.sign(), start, epsilon, bounds)
    return out


def _project(
    out: torch.Tensor, start: torch.Tensor, epsilon: float, bounds: tuple[float, float] | None
) -> torch.Tensor:
    out = torch.minimum(torch.maximum(out, start - epsilon), start + epsilon)
    return out if bounds is None else out.clamp(bounds[0], bounds[1])
