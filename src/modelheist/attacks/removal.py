"""Watermark removal by a malicious suspect: change a stolen copy so that the owner's watermark
no longer shows, at the least cost in accuracy.

The methods of Adi et al. (USENIX Security '18, §5.2) and the pruning and noise of the
watermark-robustness literature (Uchida et al. ICMR '17, §4.3; Lukas et al. S&P '22):

* ``ftll`` — fine-tune the last layer only; ``ftal`` — fine-tune all layers;
* ``rtll`` / ``rtal`` — re-initialise the last layer, then train it alone / all layers;
* ``prune:RATE`` — global magnitude pruning: the fraction RATE of the smallest weights of every
  linear and convolution layer set to zero (:mod:`torch.nn.utils.prune`, made permanent);
* ``noise:SIGMA`` — every parameter tensor plus Gaussian noise of SIGMA times that tensor's own
  standard deviation (a scale-free strength, so one SIGMA suits every layer).

Fine-tuning trains on the suspect's own labelled data (the attacker's split, true labels), as
in Adi et al.; re-distillation into a fresh network (``extract``) needs an oracle and lives in
:mod:`modelheist.experiments.removal`. "Last layer": the final linear layer of the network, or
of each member of an ensemble. Deviation: Adi et al. fine-tune with the original training's
last learning rate; here the Trainer's warm-up and cosine schedule runs with ``lr`` as its peak
(default half the training default), the same loop every network in the project trains with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from rich.progress import Progress
from torch import nn
from torch.nn.utils import prune

from modelheist.errors import ModelheistError
from modelheist.models.architectures import MeanOfMembers
from modelheist.models.classifier import TorchClassifier
from modelheist.models.training import TrainConfig, Trainer, TrainingProtection, TrainingRun

FINE_TUNING = ("ftll", "ftal", "rtll", "rtal")
METHODS = (*FINE_TUNING, "prune", "noise", "extract")


@dataclass(frozen=True)
class Removal:
    """One removal attack and its strength (pruning rate, noise scale; None otherwise)."""

    method: str
    strength: float | None = None

    def __str__(self) -> str:
        return self.method if self.strength is None else f"{self.method}:{self.strength:g}"


def parse_removal(spec: str) -> Removal:
    """``ftll|ftal|rtll|rtal|prune:RATE|noise:SIGMA|extract`` → a :class:`Removal`."""
    method, colon, value = spec.strip().partition(":")
    if method not in METHODS:
        raise ModelheistError(
            f"unknown removal {method!r}; use ftll, ftal, rtll, rtal, prune:RATE, noise:SIGMA "
            "or extract"
        )
    if method in ("prune", "noise"):
        try:
            strength = float(value)
        except ValueError:
            raise ModelheistError(f"{method} needs a number, e.g. {method}:0.5") from None
        if method == "prune" and not 0.0 <= strength < 1.0:
            raise ModelheistError(f"a pruning rate lies in [0, 1), got {strength}")
        if method == "noise" and not strength >= 0.0:
            raise ModelheistError(f"a noise scale is at least 0, got {strength}")
        return Removal(method, strength)
    if colon:
        raise ModelheistError(f"{method} takes no value")
    return Removal(method)


def last_layers(module: nn.Module) -> list[nn.Linear]:
    """The output layer of the network, or of each member of an ensemble."""
    members = [m for m in module.modules() if isinstance(m, MeanOfMembers)]
    roots = list(members[0].members) if members else [module]
    layers = []
    for root in roots:
        linear = [m for m in root.modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise ModelheistError("the network has no linear output layer")
        layers.append(linear[-1])
    return layers


def fine_tune_removal(
    model: TorchClassifier,
    method: str,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    progress: Progress | None = None,
) -> TorchClassifier:
    """A copy of ``model`` fine-tuned on (``x``, ``y``) by ``method`` (one of FINE_TUNING)."""
    if method not in FINE_TUNING:
        raise ModelheistError(f"{method} is not a fine-tuning removal")
    module = copy.deepcopy(model.module)
    outputs = last_layers(module)
    if method.startswith("rt"):
        generator = torch.Generator().manual_seed(config.seed)
        for layer in outputs:
            bound = 1.0 / np.sqrt(layer.in_features)  # nn.Linear's own initialisation
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    hooks = [LastLayerOnly(outputs)] if method.endswith("ll") else []
    run = Trainer(config, hooks, progress).fit(module, x, y, f"removal {method}")
    for parameter in run.module.parameters():
        parameter.requires_grad_(True)
    return _copy_with(model, run.module, str(Removal(method)))


def prune_weights(model: TorchClassifier, rate: float) -> TorchClassifier:
    """A copy of ``model`` with the ``rate`` smallest-magnitude weights of its linear and
    convolution layers, ranked together, set to zero."""
    module = copy.deepcopy(model.module)
    targets = [(m, "weight") for m in module.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if rate > 0:
        with torch.no_grad():  # torch's pruning flattens with view(): it needs contiguous weights
            for layer, name in targets:
                getattr(layer, name).data = getattr(layer, name).data.contiguous()
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=rate)
        for layer, name in targets:
            prune.remove(layer, name)
    return _copy_with(model, module, str(Removal("prune", rate)))


def add_noise(model: TorchClassifier, sigma: float, seed: int) -> TorchClassifier:
    """A copy of ``model`` whose every parameter tensor gets Gaussian noise of ``sigma`` times
    its own standard deviation (seeded)."""
    module = copy.deepcopy(model.module)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.numel() > 1:
                scale = sigma * float(parameter.std())
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(noise * scale)
    return _copy_with(model, module, str(Removal("noise", sigma)))


def apply_removal(
    model: TorchClassifier,
    removal: Removal,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    progress: Progress | None = None,
) -> TorchClassifier:
    """Apply a model-only removal (every method but ``extract``)."""
    if not isinstance(model, TorchClassifier):
        raise ModelheistError(f"removal attacks need a network, not {model.card.architecture}")
    if removal.method in FINE_TUNING:
        return fine_tune_removal(model, removal.method, x, y, config, progress)
    if removal.method == "prune":
        return prune_weights(model, float(removal.strength or 0.0))
    if removal.method == "noise":
        return add_noise(model, float(removal.strength or 0.0), config.seed)
    raise ModelheistError(f"{removal} needs an oracle: use experiments.removal")


def _copy_with(model: TorchClassifier, module: nn.Module, removal: str) -> TorchClassifier:
    module.eval()
    history = [*model.card.training.get("removals", []), removal]
    card = replace(
        copy.deepcopy(model.card),
        training={**model.card.training, "removals": history},
        metrics={},
    )
    return TorchClassifier(module, card)


@dataclass
class LastLayerOnly(TrainingProtection):
    """The Trainer hook that trains only ``layers``: the optimiser gets their parameters alone,
    and the rest of the network stays in evaluation mode (its batch-norm statistics and dropout
    belong to the frozen part)."""

    name: ClassVar[str] = "last-layer-only"

    layers: list[nn.Linear]

    def prepare(self, run: TrainingRun) -> None:
        for parameter in run.module.parameters():
            parameter.requires_grad_(False)
        trainable = [p for layer in self.layers for p in layer.parameters()]
        for parameter in trainable:
            parameter.requires_grad_(True)
        config = run.config
        run.optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)

    def transform_batch(
        self, run: TrainingRun, x: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        run.module.eval()
        return x, targets

    def params(self) -> dict[str, Any]:
        return {"layers": len(self.layers)}
