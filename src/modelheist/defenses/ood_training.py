"""Training the owner's out-of-distribution classifier (Atli et al., AAAI-EDSMLS 2020, §5):
a binary network, in (0) = the owner's own training images, out (1) = a public pool of other
images, balanced by oversampling the smaller side. Saved like any model (safetensors and a
card); served by the ``ood-classifier`` stage."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from rich.progress import Progress

from modelheist.errors import ModelheistError
from modelheist.models.architectures import build_network, normalisation_stats
from modelheist.models.classifier import ModelCard, TorchClassifier
from modelheist.models.training import TrainConfig, Trainer


def train_ood_classifier(
    inside: np.ndarray,
    outside: Mapping[str, np.ndarray],
    arch: str = "cnn",
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> TorchClassifier:
    """A binary in/out network trained on ``inside`` against every pool of ``outside`` (by
    name, each in the inputs' shape); the card records the pools and their sizes."""
    config = config or TrainConfig(epochs=5)
    pools = {name: np.asarray(x, np.float32) for name, x in outside.items() if len(x)}
    if len(inside) == 0 or not pools:
        raise ModelheistError("an OOD classifier needs in-distribution and outside images")
    for name, x in pools.items():
        if x.shape[1:] != inside.shape[1:]:
            raise ModelheistError(
                f"OOD pool {name!r} has inputs of shape {x.shape[1:]}, the owner's data "
                f"{inside.shape[1:]}"
            )
    out = np.concatenate(list(pools.values()))
    rng = np.random.default_rng(config.seed)
    larger = max(len(inside), len(out))
    x_in = inside[rng.choice(len(inside), larger, replace=len(inside) < larger)]
    x_out = out[rng.choice(len(out), larger, replace=len(out) < larger)]
    x = np.concatenate([x_in, x_out]).astype(np.float32)
    y = np.concatenate([np.zeros(larger, np.int64), np.ones(larger, np.int64)])
    mean, std = normalisation_stats(x)
    shape = tuple(inside.shape[1:])
    net = build_network(arch, shape, 2, mean, std, config.seed)
    Trainer(config, progress=progress).fit(net, x, y, "OOD classifier")
    card = ModelCard(
        architecture=arch,
        dataset="ood-detector",
        classes=["in", "out"],
        input_shape=list(shape),
        normalisation={"mean": mean, "std": std},
        training={
            "inside": len(inside),
            "outside": {name: len(p) for name, p in pools.items()},
            "epochs": config.epochs,
            "seed": config.seed,
        },
        input_range=[0.0, 1.0],
    )
    return TorchClassifier(net, card)
