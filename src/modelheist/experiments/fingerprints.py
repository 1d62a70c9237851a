"""The models a conferrable-adversarial-example fingerprint is generated against (Lukas et al.,
ICLR '21, §4): surrogates extracted from the owner's model by the project's own Knockoff Nets
(random sampling from the attacker's split, probabilities), and reference models trained
independently on the same split with its true labels. They live here, in the experiments
layer, because ownership schemes never import the attacks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from rich.progress import Progress

from modelheist.attacks.knockoff import KnockoffNets
from modelheist.data.registry import Dataset
from modelheist.errors import ModelheistError
from modelheist.experiments.extraction import measure_extraction
from modelheist.models.classifier import TorchClassifier
from modelheist.models.training import TrainConfig, train_model
from modelheist.ownership.cae import CAEGeneration, Fingerprint, generate_fingerprint


def extracted_surrogates(
    owner: TorchClassifier,
    data: Dataset,
    count: int,
    budget: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[TorchClassifier]:
    """``count`` Knockoff Nets surrogates of ``owner``, ``budget`` queries each, seeds
    ``seed``, ``seed + 1``, ..."""
    surrogates = []
    for index in range(count):
        result, _ = measure_extraction(
            owner,
            KnockoffNets(),
            data.pool.x,
            None,
            min(budget, len(data.pool.x)),
            "probs",
            data.name,
            seed + index,
            progress=progress,
        )
        if not isinstance(result.surrogate, TorchClassifier):
            raise ModelheistError("a CAE ensemble member must be a network")
        surrogates.append(result.surrogate)
    return surrogates


def independent_references(
    owner: TorchClassifier,
    data: Dataset,
    count: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[TorchClassifier]:
    """``count`` models of ``owner``'s architecture and epochs trained on the attacker's split
    with its true labels (never on the owner's data, never from its answers)."""
    epochs = int(owner.card.training.get("epochs", 5))
    split = replace(data, train=data.pool)
    models = []
    for index in range(count):
        model = train_model(
            split, owner.card.architecture, TrainConfig(epochs=epochs, seed=seed + index), progress
        )
        if not isinstance(model, TorchClassifier):
            raise ModelheistError("a CAE ensemble member must be a network")
        models.append(model)
    return models


def make_fingerprint(
    owner: TorchClassifier,
    data: Dataset,
    settings: CAEGeneration,
    surrogates: int = 5,
    references: int = 5,
    budget: int = 5000,
    candidates: int = 1000,
    seeds: tuple[int, int, int] = (0, 10_000, 0),
    progress: Progress | None = None,
    ensemble: tuple[list[TorchClassifier], list[TorchClassifier]] | None = None,
) -> Fingerprint:
    """The whole generation of Lukas et al. (§4): ``surrogates`` Knockoff Nets surrogates of
    ``budget`` queries and ``references`` independent models (:func:`extracted_surrogates`,
    :func:`independent_references`), then :func:`generate_fingerprint` from ``candidates`` of
    the owner's training images. ``seeds``: the surrogates', the references' and the choice
    of candidates. ``ensemble``: the (surrogates, references) made earlier, used instead of
    training them (the first two seeds then unused)."""
    if ensemble is None:
        ensemble = (
            extracted_surrogates(owner, data, surrogates, budget, seeds[0], progress),
            independent_references(owner, data, references, seeds[1], progress),
        )
    pick = np.random.default_rng(seeds[2]).permutation(len(data.train.x))[:candidates]
    return generate_fingerprint(
        owner.module,
        [m.module for m in ensemble[0]],
        [m.module for m in ensemble[1]],
        data.train.x[pick],
        settings,
        tuple(owner.card.input_range) if owner.card.input_range else None,
        progress,
    )
