"""Training the misinformation function of adaptive misinformation (Kariyappa & Qureshi,
CVPR '20, §4.2): a network of the victim's task trained on the owner's data to minimise
-log(1 - f_hat(x)_y), i.e. to put as little probability as it can on the true class. Saved like
any model; served by the ``misinform`` stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rich.progress import Progress

from modelheist.data.registry import Dataset
from modelheist.models.architectures import build_network, normalisation_stats
from modelheist.models.classifier import ModelCard, TorchClassifier, accuracy
from modelheist.models.training import TrainConfig, Trainer


def misinformation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log(1 - softmax(z)_y), computed stably as -logsumexp over the other classes' log
    probabilities."""
    log_p = F.log_softmax(logits, dim=1)
    others = log_p.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return -torch.logsumexp(others, dim=1).mean()


def train_misinformation_model(
    dataset: Dataset,
    arch: str = "cnn",
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> TorchClassifier:
    """A network trained on ``dataset.train`` to be wrong; its card records its (near zero)
    accuracy on the evaluation split."""
    config = config or TrainConfig(epochs=3)
    mean, std = normalisation_stats(dataset.train.x)
    net = build_network(arch, dataset.input_shape, dataset.num_classes, mean, std, config.seed)
    Trainer(config, progress=progress, loss=misinformation_loss).fit(
        net, dataset.train.x, dataset.train.y, "misinformation model"
    )
    card = ModelCard(
        architecture=arch,
        dataset=f"{dataset.name} (misinformation)",
        classes=list(dataset.classes),
        input_shape=list(dataset.input_shape),
        normalisation={"mean": mean, "std": std},
        training={"loss": "-log(1 - p_y)", "epochs": config.epochs, "seed": config.seed},
        input_range=[0.0, 1.0] if dataset.kind == "image" else None,
    )
    model = TorchClassifier(net, card)
    card.metrics["test_accuracy"] = accuracy(model, dataset.test.x, dataset.test.y)
    return model
