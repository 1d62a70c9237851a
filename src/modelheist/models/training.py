"""Training: the :class:`Trainer` every network is trained with, the hooks through which
training-time protections change it, and the training of classical models (scikit-learn).

A protection (DP-SGD, adversarial training, a backdoor watermark, radioactive marks) is a
:class:`TrainingProtection`; :func:`train_model` trains a victim with any of them and records
each on the model card (``ModelCard.protections``); :func:`fine_tune` continues the training of
a saved network (an owner embedding a watermark late, or a suspect trying to remove one).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from modelheist.data.registry import Dataset
from modelheist.errors import ModelheistError
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
    accuracy,
)
from modelheist.models.device import training_device

OPTIMIZERS = ("adamw", "sgd")


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
    #: ``adamw`` (the default) or ``sgd`` (with ``momentum``: the optimiser of DP-SGD proper
    #: and of Szyller & Asokan's conflicts study, where a larger clipping norm means larger
    #: steps; Adam divides that scale out).
    optimizer: str = "adamw"
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0:
            raise ModelheistError(
                "epochs and batch size must be >= 1, the learning rate and temperature > 0"
            )
        if not 0.0 <= self.temperature_weight <= 1.0:
            raise ModelheistError("temperature_weight must lie in [0, 1]")
        if self.optimizer not in OPTIMIZERS:
            raise ModelheistError(
                f"unknown optimizer {self.optimizer!r}; choose {' or '.join(OPTIMIZERS)}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ModelheistError(f"momentum must lie in [0, 1), got {self.momentum}")

    def optimiser(self, parameters) -> torch.optim.Optimizer:
        """The optimiser this configuration names, over ``parameters``."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        return torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)


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


class BatchSource(ABC):
    """Where a training run's mini-batches come from, one epoch at a time."""

    @abstractmethod
    def __len__(self) -> int:
        """Optimiser steps per epoch."""

    @abstractmethod
    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The (inputs, targets) batches of one epoch."""


class ShuffledBatches(BatchSource):
    """Seeded reshuffling each epoch, then consecutive batches, each optionally shifted by a
    random integer offset (:func:`random_shift`) drawn from the same generator."""

    def __init__(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        shift: int = 0,
    ):
        self.x, self.targets = x, targets
        self.batch_size, self.generator, self.shift = batch_size, generator, shift

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator)
        for start in range(0, len(self.x), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.x[idx]
            if self.shift:
                batch = random_shift(batch, self.shift, self.generator)
            yield batch, self.targets[idx]


class LengthGroupedBatches(BatchSource):
    """Batches of inputs of similar length, for padded sequences whose forward pass trims a
    batch to its longest member (:class:`~modelheist.models.text.TextNetwork`). Each epoch:
    a seeded shuffle, cut into pools of ``pool_batches`` batches; each pool sorted by length and
    cut into batches; the order of all the epoch's batches shuffled again. This is the bucketing
    of Hugging Face's ``group_by_length`` and AllenNLP's bucket iterator: every input still comes
    once an epoch in a random batch of similar-length neighbours, and the padding computed
    shrinks (the owner's quotations: 3.4x their tokens with shuffled batches of 32)."""

    def __init__(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        lengths: np.ndarray,
        pool_batches: int = 50,
    ):
        if len(lengths) != len(x):
            raise ModelheistError(f"{len(lengths)} lengths for {len(x)} inputs")
        self.x, self.targets = x, targets
        self.batch_size, self.generator = batch_size, generator
        self.lengths = torch.as_tensor(np.asarray(lengths, np.float64))
        self.pool = batch_size * pool_batches

    def __len__(self) -> int:
        return sum(
            -(-min(self.pool, len(self.x) - start) // self.batch_size)
            for start in range(0, len(self.x), self.pool)
        )

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator)
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start : start + self.pool]
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield self.x[batches[b]], self.targets[batches[b]]


@dataclass
class TrainingRun:
    """One training run as its protections see it.

    :meth:`TrainingProtection.prepare` may replace ``module``, ``optimizer`` or ``batches``
    (DP-SGD wraps all three); ``x`` and ``targets`` hold the whole training set, extra data
    included; ``notes`` keeps what a protection measures for its card entry; ``protections``
    are the run's, in order (one may ask the others, e.g. DP-SGD for their steps).
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    batches: BatchSource
    config: TrainConfig
    x: torch.Tensor
    targets: torch.Tensor
    generator: torch.Generator
    notes: dict[str, Any] = field(default_factory=dict)
    protections: Sequence[TrainingProtection] = ()

    @property
    def soft(self) -> bool:
        """Whether the targets are probability vectors (else integer labels)."""
        return self.targets.ndim == 2


class TrainingProtection(ABC):
    """A training-time protection: hooks into the :class:`Trainer` (docs/architecture.md,
    "The Trainer seam").

    Hyper-parameters go to the constructor (which does no work); the Trainer calls, in order,
    :meth:`replace_data` and :meth:`extra_data` once, :meth:`prepare` once (where one may ask
    the others' :meth:`private_steps`),
    :meth:`transform_batch` on every batch, :meth:`end_epoch` after every epoch, :meth:`finish`
    once the last step is taken, and :meth:`card_entry` when training is done. Every hook has a
    do-nothing default.
    """

    #: Registry name, written on the model card.
    name: ClassVar[str]

    def replace_data(
        self, x: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The owner's training data as this protection changes it (e.g. radioactive marking
        replaces some images with marked copies), in the same format; None to leave it."""
        return None

    def extra_data(
        self, x: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Inputs and targets to train on besides the owner's data (e.g. a watermark's trigger
        set, oversampled), in the training data's format; None for none."""
        return None

    def prepare(self, run: TrainingRun) -> None:
        """Change the run before the first step (wrap the model, optimizer or batches)."""
        return None

    def private_steps(self, run: TrainingRun) -> int:
        """How many steps this protection takes over the run (at most) through the run's
        optimizer when that is private, besides the data's batches: DP-SGD's accountant counts
        them as its own (and its ``cover_other_steps`` spends the budget over them too). Zero
        by default."""
        return 0

    def transform_batch(
        self, run: TrainingRun, x: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch the model is trained on in place of ``(x, targets)`` (e.g. adversarial
        examples of ``x`` under the current ``run.module``)."""
        return x, targets

    def end_epoch(self, run: TrainingRun, epoch: int) -> None:
        """Act between epochs (``epoch`` counts from 0), e.g. take steps of its own outside
        the run's optimizer (a watermark trained outside DP-SGD)."""
        return None

    def finish(self, run: TrainingRun) -> None:
        """Undo what :meth:`prepare` wrapped once the last step is taken (e.g. DP-SGD hands back
        the plain network, without per-example gradient hooks); called in reverse order."""
        return None

    def card_entry(self, run: TrainingRun) -> dict[str, Any]:
        """What the model card records of this protection: its name, its parameters and what
        it measured (e.g. the privacy budget spent)."""
        return {"name": self.name, **self.params()}

    def params(self) -> dict[str, Any]:
        """The protection's hyper-parameters (JSON values)."""
        return asdict(self) if is_dataclass(self) else {}


class Trainer:
    """The one training loop of every network in modelheist, victims and surrogates alike.

    AdamW (or SGD with momentum, ``TrainConfig.optimizer``) with a warm-up + cosine
    learning-rate schedule; cross-entropy on integer labels, or on
    probability vectors (soft labels, i.e. KL divergence up to a constant) with Hinton et al.'s
    ('15) distillation loss a * T^2 * CE(softmax(z / T), softmax(log p / T)) + (1 - a) * CE(z, p)
    when ``config.temperature`` T != 1 (a = ``config.temperature_weight``); optional
    random-shift augmentation; seeded shuffling; an optional Rich progress bar. Protections
    (:class:`TrainingProtection`) change the run through their hooks. Deterministic for a given
    ``config.seed`` on a given device; ``loss`` replaces the loss for a network trained to
    another end (e.g. a misinformation model, trained to be wrong): the steps run on :func:`training_device`
    (``MODELHEIST_DEVICE``; the CPU by default) and the network is back on the CPU afterwards.
    """

    def __init__(
        self,
        config: TrainConfig,
        protections: Sequence[TrainingProtection] = (),
        progress: Progress | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        lengths: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.config = config
        self.protections = list(protections)
        self.progress = progress
        self.loss = loss  # None: cross-entropy, or distillation against probability vectors
        self.lengths = lengths  # each input's length: batches grouped by it (padded sequences)

    def fit(
        self,
        module: nn.Module,
        x: np.ndarray,
        targets: np.ndarray,
        description: str = "training",
    ) -> TrainingRun:
        """Train ``module`` on ``x`` against integer labels (1-D) or probability vectors (2-D),
        or, with a custom ``loss``, against any float targets (images, for a translation
        network); return the finished run (its ``notes["loss"]`` holds each epoch's mean
        loss)."""
        config = self.config
        if len(x) == 0:
            raise ModelheistError("cannot train on an empty set")
        shift = default_shift(tuple(x.shape[1:])) if config.augment else 0
        for protection in self.protections:
            replaced = protection.replace_data(x, targets)
            if replaced is not None:
                x, targets = replaced
        for protection in self.protections:
            extra = protection.extra_data(x, targets)
            if extra is not None:
                x, targets = _appended(x, targets, *extra, protection.name)
        soft = targets.ndim == 2
        device = training_device()
        module.to(device)
        xs = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        # float targets: probability vectors, or what a custom loss compares outputs with (images)
        floating = soft or (self.loss is not None and targets.dtype.kind == "f")
        ts = torch.from_numpy(targets.astype(np.float32 if floating else np.int64))
        optimiser = config.optimiser(module.parameters())
        generator = torch.Generator().manual_seed(config.seed)
        batches = (
            ShuffledBatches(xs, ts, config.batch_size, generator, shift)
            if self.lengths is None
            else LengthGroupedBatches(xs, ts, config.batch_size, generator, self.lengths(x))
        )
        run = TrainingRun(
            module,
            optimiser,
            batches,
            config,
            xs,
            ts,
            generator,
            protections=tuple(self.protections),
        )
        for protection in self.protections:
            protection.prepare(run)
        steps_per_epoch = len(run.batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            run.optimizer, warmup_cosine(config.epochs * steps_per_epoch)
        )
        progress = self.progress
        task = (
            progress.add_task(description, total=config.epochs * steps_per_epoch)
            if progress is not None
            else None
        )
        history = []
        devices = [device.index or 0] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(config.seed)  # dropout masks
                run.module.train()
                for epoch in range(config.epochs):
                    total, seen = 0.0, 0
                    for batch, batch_targets in run.batches.epoch():
                        batch, batch_targets = batch.to(device), batch_targets.to(device)
                        for protection in self.protections:
                            batch, batch_targets = protection.transform_batch(
                                run, batch, batch_targets
                            )
                        loss = self._loss(run.module(batch), batch_targets, soft)
                        run.optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        run.optimizer.step()
                        schedule.step()
                        total += float(loss.detach()) * len(batch)
                        seen += len(batch)
                        if task is not None:
                            progress.advance(task)
                    history.append(total / max(seen, 1))
                    for protection in self.protections:
                        protection.end_epoch(run, epoch)
        finally:  # the network is back on the CPU however training ends
            run.module.eval()
            run.module.to("cpu")
            module.to("cpu")
        if task is not None:
            progress.remove_task(task)
        for protection in reversed(self.protections):
            protection.finish(run)
        run.notes["loss"] = history
        return run

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, soft: bool) -> torch.Tensor:
        if self.loss is not None:
            return self.loss(logits, targets)
        if soft:
            return distillation_loss(
                logits, targets, self.config.temperature, self.config.temperature_weight
            )
        return F.cross_entropy(logits, targets)

    def card_entries(self, run: TrainingRun) -> list[dict[str, Any]]:
        """The model card's record of the protections this run carried."""
        return [protection.card_entry(run) for protection in self.protections]


def _appended(
    x: np.ndarray, targets: np.ndarray, x_extra: np.ndarray, t_extra: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Training data with a protection's extra data appended; a clear error on a mismatch."""
    if x_extra.shape[1:] != x.shape[1:] or t_extra.shape[1:] != targets.shape[1:]:
        raise ModelheistError(
            f"{source}: extra data of shape {x_extra.shape[1:]} / targets {t_extra.shape[1:]} "
            f"does not match the training data's {x.shape[1:]} / {targets.shape[1:]}"
        )
    if len(x_extra) != len(t_extra):
        raise ModelheistError(f"{source}: {len(x_extra)} extra inputs but {len(t_extra)} targets")
    return (
        np.concatenate([x, x_extra.astype(x.dtype, copy=False)]),
        np.concatenate([targets, t_extra.astype(targets.dtype, copy=False)]),
    )


def train_network(
    module: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    config: TrainConfig,
    progress: Progress | None = None,
    description: str = "training",
    lengths: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[float]:
    """Train ``module`` with a plain :class:`Trainer` (no protection; batches grouped by
    ``lengths`` where given); return the mean loss of each epoch."""
    trainer = Trainer(config, progress=progress, lengths=lengths)
    return trainer.fit(module, x, targets, description).notes["loss"]


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
    protections: Sequence[TrainingProtection] = (),
) -> Classifier:
    """Train a victim of architecture ``arch`` on ``dataset.train`` with ``protections``;
    record its test accuracy and the protections it carries on its card."""
    config = config or TrainConfig()
    if arch not in architecture_names():
        raise ModelheistError(
            f"unknown architecture {arch!r}; choose one of: {', '.join(architecture_names())}"
        )
    if protections and arch in CLASSICAL_ARCHITECTURES:
        raise ModelheistError(f"training protections need a network, not {arch}")
    if dataset.kind == "text":
        raise ModelheistError(
            f"{dataset.name} holds text; the image and tabular architectures "
            f"({', '.join(architecture_names())}) cannot train on it"
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
            "split": dataset.split,
        },
        input_range=[0.0, 1.0] if dataset.kind == "image" else None,
    )
    model: Classifier
    if arch in CLASSICAL_ARCHITECTURES:
        model = _classical(arch, dataset, card, config.seed)
    else:
        net = build_network(arch, dataset.input_shape, dataset.num_classes, mean, std, config.seed)
        trainer = Trainer(config, protections, progress)
        run = trainer.fit(net, dataset.train.x, dataset.train.y, f"train {arch}")
        card.protections = trainer.card_entries(run)
        model = TorchClassifier(run.module, card)
    card.metrics["test_accuracy"] = accuracy(model, dataset.test.x, dataset.test.y)
    card.metrics["train_accuracy"] = accuracy(model, dataset.train.x, dataset.train.y)
    return model


def fine_tune(
    model: TorchClassifier,
    x: np.ndarray,
    targets: np.ndarray,
    config: TrainConfig,
    protections: Sequence[TrainingProtection] = (),
    progress: Progress | None = None,
) -> TorchClassifier:
    """A copy of ``model`` trained further on ``x`` (the original is left as it was); its card
    appends the fine-tuning configuration and any protections added."""
    if not isinstance(model, TorchClassifier):
        raise ModelheistError(f"only networks can be fine-tuned, not {model.card.architecture}")
    module = copy.deepcopy(model.module)
    trainer = Trainer(config, protections, progress)
    run = trainer.fit(module, x, targets, "fine-tune")
    history = [*model.card.training.get("fine_tuning", []), {**asdict(config), "inputs": len(x)}]
    card = replace(
        copy.deepcopy(model.card),
        training={**model.card.training, "fine_tuning": history},
        protections=[*model.card.protections, *trainer.card_entries(run)],
        metrics={},
    )
    return TorchClassifier(run.module, card)


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
