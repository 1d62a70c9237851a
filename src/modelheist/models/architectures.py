"""Named network architectures, sized from the input shape and the number of classes.

Every network starts with a fixed :class:`Standardize` layer, so a served model takes raw inputs
(images in [0, 1], raw tabular features) and its normalisation travels with its weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from modelheist.errors import ModelheistError


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed, per-feature (or per-channel) statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_shape: Sequence[int]):
        super().__init__()
        view = (1, len(mean), *([1] * (len(input_shape) - 1)))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(view))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def normalisation_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel (images, axis 1) or per-feature (tabular) mean and std of training inputs."""
    axes = (0, *range(2, x.ndim))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = np.maximum(x.std(axis=axes, dtype=np.float64), 1e-6)
    return [float(v) for v in np.atleast_1d(mean)], [float(v) for v in np.atleast_1d(std)]


def mlp(
    input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 128)
) -> nn.Sequential:
    """Fully connected network with ReLU hidden layers."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(np.prod(input_shape))
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape: Sequence[int], num_classes: int, width: int = 32) -> nn.Sequential:
    """Two conv blocks (conv-BN-ReLU-maxpool), then a 128-unit dense layer with dropout.

    Works for 28x28 (MNIST-like), 32x32 (CIFAR) and 8x8 (scikit-learn digits) inputs.
    """
    return _conv_net(input_shape, num_classes, width, nn.BatchNorm2d)


def cnn_gn(input_shape: Sequence[int], num_classes: int, width: int = 32) -> nn.Sequential:
    """:func:`cnn` with GroupNorm in place of BatchNorm, the variant DP-SGD can train: BatchNorm
    mixes the examples of a batch, so per-example gradients (Opacus) are undefined for it.
    Groups as Opacus's ``ModuleValidator.fix`` would choose: min(32, channels)."""
    return _conv_net(input_shape, num_classes, width, lambda c: nn.GroupNorm(min(32, c), c))


def _conv_net(
    input_shape: Sequence[int],
    num_classes: int,
    width: int,
    norm: Callable[[int], nn.Module],
) -> nn.Sequential:
    if len(input_shape) != 3:
        raise ModelheistError(f"cnn needs image inputs (C, H, W), got shape {tuple(input_shape)}")
    channels, height, wide = input_shape
    if height < 4 or wide < 4:
        raise ModelheistError(f"cnn needs images of at least 4x4, got {height}x{wide}")
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        norm(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        norm(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (height // 4) * (wide // 4), 128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, num_classes),
    )


class MeanOfMembers(nn.Module):
    """An ensemble of networks: returns log of the members' mean softmax, i.e. logits whose
    softmax is the average of the members' probabilities."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(dim=0)
        return torch.log(probs.clamp_min(1e-30))


def mlp1(input_shape: Sequence[int], num_classes: int, hidden: int = 20) -> nn.Sequential:
    """One hidden layer of ``hidden`` tanh units: the neural network of Tramèr et al. '16 §4.1
    (20 hidden units on Adult), the target of equation-solving extraction."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(int(np.prod(input_shape)), hidden),
        nn.Tanh(),
        nn.Linear(hidden, num_classes),
    )


TORCH_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "mlp1": mlp1,
    "cnn": cnn,
    "cnn-gn": cnn_gn,
}
CLASSICAL_ARCHITECTURES = ("logreg", "tree")
#: The networks that take images (C, H, W) only.
IMAGE_ARCHITECTURES = frozenset({"cnn", "cnn-gn"})


def architecture_names() -> list[str]:
    return [*TORCH_ARCHITECTURES, *CLASSICAL_ARCHITECTURES]


def build_network(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    members: int = 1,
) -> nn.Module:
    """Build architecture ``name`` behind a Standardize layer, initialised from ``seed``;
    with ``members`` > 1, a :class:`MeanOfMembers` of that many, seeded ``seed + i``."""
    if name not in TORCH_ARCHITECTURES:
        raise ModelheistError(
            f"unknown network architecture {name!r}; choose one of: {', '.join(TORCH_ARCHITECTURES)}"
        )
    if members < 1:
        raise ModelheistError(f"an ensemble needs at least one member, got {members}")
    if members > 1:
        return MeanOfMembers(
            [
                build_network(name, input_shape, num_classes, mean, std, seed + i)
                for i in range(members)
            ]
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = TORCH_ARCHITECTURES[name](input_shape, num_classes)
    return nn.Sequential(Standardize(mean, std, input_shape), body)
