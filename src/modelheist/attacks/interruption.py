"""What an attack keeps when the API stops answering before the attack is done.

An exhausted budget, a server that goes away, a revoked key, a user's Ctrl-C: the answers already
bought are the adversary's most expensive asset, so :meth:`ExtractionAttack.run` never drops
them. Every answered query is kept in a :class:`~modelheist.oracle.QueryLog`; when a query fails (any
:class:`ModelheistError` from the oracle, or an interrupt) after at least one answer, the run
raises :class:`AttackInterrupted` carrying the log. Its :meth:`AttackInterrupted.partial_surrogate`
then trains a network on every answer obtained so far: for a classifier, Knockoff-style,
whatever the attack was (an equation-solving attack cut short has no exact solution to offer,
but its answers still teach a network something); for a text or image-to-image API, the
attack's own network and recipe. The CLI writes the log to disk *before* that training starts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.progress import Progress

from modelheist.errors import ModelheistError
from modelheist.models.architectures import (
    IMAGE_ARCHITECTURES,
    TORCH_ARCHITECTURES,
    build_network,
    normalisation_stats,
)
from modelheist.models.classifier import Classifier, ModelCard, TorchClassifier
from modelheist.models.training import TrainConfig, train_network
from modelheist.oracle import Answer, QueryLog


class AttackInterrupted(ModelheistError):
    """The API stopped answering mid-attack (``reason``); the answers bought are in ``log``."""

    def __init__(
        self,
        attack: str,
        reason: ModelheistError,
        log: QueryLog,
        classes: list[str],
        architecture: str,
        seed: int,
        params: dict[str, Any],
    ):
        self.attack = attack
        self.reason = reason
        self.log = log
        self.classes = classes
        self.architecture = architecture
        self.seed = seed
        self.params = params
        super().__init__(f"{attack} stopped after {len(log)} answered queries: {reason}")

    def partial_surrogate(self, progress: Progress | None = None) -> Classifier | None:
        """The attacker's network trained on every complete input of the log (None if none)."""
        return partial_surrogate(
            self.log, self.classes, self.architecture, self.seed, progress, self.params
        )


def partial_surrogate(
    log: QueryLog,
    classes: list[str],
    architecture: str,
    seed: int,
    progress: Progress | None = None,
    params: dict[str, Any] | None = None,
) -> Classifier | None:
    """A surrogate trained on every complete input of ``log`` (None if there is none); a text or
    translation surrogate takes its recipe from the attack's ``params`` where they give one."""
    x, answer = log.joined()
    if x.dtype == object:  # a text API's strings: the attacker's encoder, fine-tuned
        return _partial_text_surrogate(x, answer, classes, seed, progress, len(log), params or {})
    if answer.images is not None:  # an image-to-image API's outputs
        return _partial_translation_surrogate(
            x, answer.images, architecture, seed, progress, params or {}
        )
    complete = np.isfinite(x.reshape(len(x), -1)).all(axis=1)  # incomplete queries hold NaN
    if not complete.any():
        return None
    x = x[complete]
    targets = answer.take(np.flatnonzero(complete)).soft_targets(len(classes))
    mean, std = normalisation_stats(x)
    shape = list(x.shape[1:])
    if architecture not in TORCH_ARCHITECTURES or (
        architecture in IMAGE_ARCHITECTURES and len(shape) != 3
    ):
        architecture = "cnn" if len(shape) == 3 else "mlp"  # a network that fits the inputs
    net = build_network(architecture, shape, len(classes), mean, std, seed)
    steps_per_epoch = -(-len(x) // 64)
    config = TrainConfig(
        epochs=max(30, -(-300 // steps_per_epoch)),
        batch_size=64,
        lr=2e-3,
        augment=len(shape) == 3,
        seed=seed,
    )
    train_network(net, x, targets, config, progress, "partial surrogate")
    card = ModelCard(
        architecture=architecture,
        dataset="surrogate",
        classes=list(classes),
        input_shape=shape,
        normalisation={"mean": mean, "std": std},
        training={"partial": True, "queries": len(log), "output": answer.kind},
    )
    return TorchClassifier(net, card)


def _partial_text_surrogate(
    x: np.ndarray,
    answer: Answer,
    classes: list[str],
    seed: int,
    progress: Progress | None,
    queries: int,
    params: dict[str, Any],
) -> Classifier:
    """The text encoder (its top layers and a head) fine-tuned on the answers bought, with the
    attack's recipe (Thieves' ``lr``, ``epochs``, ``batch_size``, ``tuned_layers``) where
    ``params`` hold it, else the owner's text recipe."""
    from modelheist.models.text import (
        TEXT_BATCH,
        TEXT_EPOCHS,
        TEXT_LR,
        TUNED_LAYERS,
        TextClassifier,
        build_text_network,
        fit_text_network,
        text_card,
    )

    tuned_layers = int(params.get("tuned_layers", TUNED_LAYERS))  # 0 is a real choice here
    network = build_text_network(len(classes), tuned_layers, seed=seed)
    config = TrainConfig(  # a 0 or a missing value means the default, as for translation
        epochs=int(params.get("epochs") or TEXT_EPOCHS),
        lr=float(params.get("lr") or TEXT_LR),
        batch_size=int(params.get("batch_size") or TEXT_BATCH),
        seed=seed,
    )
    fit_text_network(
        network, x, answer.soft_targets(len(classes)), config, progress, "partial surrogate"
    )
    card = text_card(
        "surrogate",
        classes,
        tuned_layers,
        {"partial": True, "queries": queries, "output": answer.kind, "epochs": config.epochs},
    )
    return TextClassifier(network, card)


def _partial_translation_surrogate(
    x: np.ndarray,
    images: np.ndarray,
    architecture: str,
    seed: int,
    progress: Progress | None,
    params: dict[str, Any],
) -> Classifier:
    """The attacker's translation network (the attack's ``arch``, else ``architecture``, else
    ESPCN) trained on the images bought, with the attack's recipe (``epochs``, ``lr``,
    ``batch_size``) where ``params`` hold it, else its defaults (SURROGATE_EPOCHS,
    SURROGATE_LR, TRANSLATION_BATCH)."""
    from modelheist.models.translation import (
        ARCHITECTURES,
        SURROGATE_ARCHITECTURE,
        SURROGATE_EPOCHS,
        SURROGATE_LR,
        TRANSLATION_BATCH,
        TranslationModel,
        build_translation_network,
        fit_translation_network,
        translation_card,
        translation_train_config,
    )

    if params.get("arch") in ARCHITECTURES:  # the network the attack trains
        architecture = str(params["arch"])
    if architecture not in ARCHITECTURES:
        architecture = SURROGATE_ARCHITECTURE
    input_shape, output_shape = tuple(x.shape[1:]), tuple(images.shape[1:])
    module = build_translation_network(architecture, input_shape, output_shape, seed)
    config = translation_train_config(
        int(params.get("epochs") or SURROGATE_EPOCHS),
        seed,
        float(params.get("lr") or SURROGATE_LR),
        int(params.get("batch_size") or TRANSLATION_BATCH),
    )
    fit_translation_network(module, x, images, config, progress, "partial surrogate")
    card = translation_card(
        architecture,
        "surrogate",
        input_shape,
        output_shape,
        {"partial": True, "queries": len(x), "output": "images", "epochs": config.epochs},
    )
    return TranslationModel(module, card)  # type: ignore[return-value]
