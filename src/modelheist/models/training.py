"""Training loops: networks (PyTorch, hard or soft targets) and classical models (scikit-learn).

``train_network`` is the one loop every network in modelheist is trained with (victims and
surrogates): AdamW with a warm-up + cosine learning-rate schedule, cross-entropy on integer labels or on
probability vectors (soft labels, i.e. KL divergence up to a constant), optional random-shift
augmentation, seeded shuffling, an optional Rich progress bar.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from modelheist.data.registry import Dataset
from modelheist.errors import ModelheistError
from modelheist.metrics import accuracy
from modelheist.models.architectures import (
    CLASSICAL_ARCHITECTURES,
    TORCH_ARCHITECTURES,
    MeanOfMembers,
    architecture_names,
    build_network,
    normalisation_stats,
)
from modelheist.models.classifier import (
    Classifier,
    LinearModel,
    ModelCard,
    TorchClassifier,
    TreeModel,
)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_network` (and, for ``seed``, of classical models)."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = False
    temperature: float = 1.0
    temperature_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0:
            raise ModelheistError(
                "epochs and batch size must be >= 1, the learning rate and temperature > 0"
            )
        if not 0.0 <= self.temperature_weight <= 1.0:
            raise ModelheistError("temperature_weight must lie in [0, 1]")


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an independent integer offset in [-max_shift, max_shift]^2
    (zero fill). Exact integer shifts, so no interpolation blur."""
    if max_shift <= 0 or x.ndim != 4:
        return x
    n, _, h, w = x.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    rows = (torch.arange(h).view(1, h) + max_shift - offsets[:, :1]).view(n, 1, h, 1)
    cols = (torch.arange(w).view(1, w) + max_shift - offsets[:, 1:]).view(n, 1, 1, w)
    batch = torch.arange(n).view(n, 1, 1, 1)
    chan = torch.arange(x.shape[1]).view(1, -1, 1, 1)
    return padded[batch, chan, rows, cols]


def default_shift(input_shape: tuple[int, ...] | list[int]) -> int:
    """Augmentation shift suited to the image size: 2 px for 28x28 and up, 1 px for 8x8."""
    return 0 if len(input_shape) != 3 else max(1, int(input_shape[-1]) // 12)


def warmup_cosine(total_steps: int, warmup: float = 0.1) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over the first ``warmup`` fraction, then cosine
    decay to zero (the one-cycle shape, valid for any number of steps)."""
    warm = max(1, int(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (
            1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm)))
        )

    return factor


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against probability vectors (KL divergence plus the targets' entropy)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def distillation_loss(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, weight: float
) -> torch.Tensor:
    """weight * T^2 * CE at temperature T + (1 - weight) * CE at T = 1, against probabilities."""
    if temperature == 1.0:
        return soft_cross_entropy(logits, targets)
    log_targets = torch.log(targets.clamp_min(1e-12)) / temperature
    tempered = soft_cross_entropy(logits / temperature, torch.softmax(log_targets, dim=1))
    loss = weight * temperature**2 * tempered
    return loss + (1.0 - weight) * soft_cross_entropy(logits, targets) if weight < 1.0 else loss


def train_network(
    module: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    config: TrainConfig,
    progress: Progress | None = None,
    description: str = "training",
) -> list[float]:
    """Train ``module`` on ``x`` against integer labels (1-D) or probability vectors (2-D).

    With soft targets p and ``config.temperature`` T != 1 the loss is Hinton et al.'s ('15)
    distillation loss, a * T^2 * CE(softmax(z / T), softmax(log p / T)) + (1 - a) * CE(z, p) with
    a = ``config.temperature_weight``. Returns the mean loss of each epoch. Deterministic for a
    given ``config.seed``.
    """
    if len(x) == 0:
        raise ModelheistError("cannot train on an empty set")
    soft = targets.ndim == 2
    xs = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    ts = torch.from_numpy(targets.astype(np.float32 if soft else np.int64))
    shift = default_shift(tuple(x.shape[1:])) if config.augment else 0
    steps_per_epoch = -(-len(xs) // config.batch_size)
    optimiser = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, warmup_cosine(config.epochs * steps_per_epoch)
    )
    generator = torch.Generator().manual_seed(config.seed)

    task = (
        progress.add_task(description, total=config.epochs * steps_per_epoch) if progress else None
    )
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # dropout masks
        module.train()
        for _ in range(config.epochs):
            order = torch.randperm(len(xs), generator=generator)
            total = 0.0
            for start in range(0, len(xs), config.batch_size):
                idx = order[start : start + config.batch_size]
                batch = random_shift(xs[idx], shift, generator) if shift else xs[idx]
                logits = module(batch)
                if soft:
                    loss = distillation_loss(
                        logits, ts[idx], config.temperature, config.temperature_weight
                    )
                else:
                    loss = F.cross_entropy(logits, ts[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += float(loss.detach()) * len(idx)
                if task is not None:
                    progress.advance(task)
            history.append(total / len(xs))
    module.eval()
    if task is not None:
        progress.remove_task(task)
    return history


def _classical(arch: str, dataset: Dataset, card: ModelCard, seed: int) -> Classifier:
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    x = dataset.train.x.reshape(len(dataset.train), -1).astype(np.float64)
    y = dataset.train.y
    if arch == "tree":
        tree = DecisionTreeClassifier(random_state=seed).fit(x.astype(np.float32), y).tree_
        value = tree.value[:, 0, :]
        full = np.zeros((len(value), card.num_classes))
        full[:, : value.shape[1]] = value  # classes absent from training get probability 0
        return TreeModel(
            tree.children_left, tree.children_right, tree.feature, tree.threshold, full, card
        )
    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    model = LogisticRegression(max_iter=2000, random_state=seed).fit((x - mean) / std, y)
    # Fold the standardisation into the weights: w.(x - m)/s + b = (w/s).x + (b - w.m/s).
    coef = model.coef_ / std
    intercept = model.intercept_ - (model.coef_ * mean / std).sum(axis=1)
    return LinearModel(coef, intercept, card)


def train_model(
    dataset: Dataset,
    arch: str,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> Classifier:
    """Train a victim of architecture ``arch`` on ``dataset.train``; record test accuracy."""
    config = config or TrainConfig()
    if arch not in architecture_names():
        raise ModelheistError(
            f"unknown architecture {arch!r}; choose one of: {', '.join(architecture_names())}"
        )
    mean, std = normalisation_stats(dataset.train.x)
    card = ModelCard(
        architecture=arch,
        dataset=dataset.name,
        classes=list(dataset.classes),
        input_shape=list(dataset.input_shape),
        normalisation={"mean": mean, "std": std} if arch in TORCH_ARCHITECTURES else {},
        training={
            **(asdict(config) if arch in TORCH_ARCHITECTURES else {"seed": config.seed}),
            "split": {"seed": dataset.split_seed, "pool_fraction": dataset.pool_fraction},
        },
        input_range=[0.0, 1.0] if dataset.kind == "image" else None,
    )
    model: Classifier
    if arch in CLASSICAL_ARCHITECTURES:
        model = _classical(arch, dataset, card, config.seed)
    else:
        net = build_network(arch, dataset.input_shape, dataset.num_classes, mean, std, config.seed)
        train_network(net, dataset.train.x, dataset.train.y, config, progress, f"train {arch}")
        model = TorchClassifier(net, card)
    card.metrics["test_accuracy"] = accuracy(model, dataset.test.x, dataset.test.y)
    card.metrics["train_accuracy"] = accuracy(model, dataset.train.x, dataset.train.y)
    return model


def train_members(
    net: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    config_for: Callable[[int], TrainConfig],
    progress: Progress | None = None,
    description: str = "training",
) -> None:
    """Train a network, or each member of a :class:`MeanOfMembers` ensemble independently;
    member i is trained with ``config_for(i)`` (its own seed)."""
    for i, member in enumerate(net.members if isinstance(net, MeanOfMembers) else [net]):
        train_network(member, x, targets, config_for(i), progress, description)
