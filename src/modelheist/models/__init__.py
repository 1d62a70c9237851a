"""The model owner's side: architectures, training, the Classifier protocol, safe save/load."""

from modelheist.models.classifier import (
    Classifier,
    LinearModel,
    ModelCard,
    TorchClassifier,
    TreeModel,
    predict_labels,
)
from modelheist.models.store import load_model, save_model
from modelheist.models.training import TrainConfig, train_model, train_network

__all__ = [
    "Classifier",
    "LinearModel",
    "ModelCard",
    "TorchClassifier",
    "TrainConfig",
    "TreeModel",
    "load_model",
    "predict_labels",
    "save_model",
    "train_model",
    "train_network",
]
