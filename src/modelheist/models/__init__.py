"""The model owner's side: architectures, the Trainer and its protections, the Classifier
protocol, safe save/load. Names are imported on first use (:mod:`modelheist._lazy`)."""

from typing import TYPE_CHECKING

from modelheist._lazy import lazy_exports

_EXPORTS = {
    "PgdAdversarialTraining": "adversarial_training",
    "adversarial_accuracy": "adversarial_training",
    "Classifier": "classifier",
    "LinearModel": "classifier",
    "ModelCard": "classifier",
    "TorchClassifier": "classifier",
    "TreeModel": "classifier",
    "accuracy": "classifier",
    "predict_labels": "classifier",
    "DpSgd": "privacy",
    "load_model": "store",
    "save_model": "store",
    "TrainConfig": "training",
    "Trainer": "training",
    "TrainingProtection": "training",
    "fine_tune": "training",
    "train_model": "training",
    "train_network": "training",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from modelheist.models.adversarial_training import (
        PgdAdversarialTraining,
        adversarial_accuracy,
    )
    from modelheist.models.classifier import (
        Classifier,
        LinearModel,
        ModelCard,
        TorchClassifier,
        TreeModel,
        accuracy,
        predict_labels,
    )
    from modelheist.models.privacy import DpSgd
    from modelheist.models.store import load_model, save_model
    from modelheist.models.training import (
        TrainConfig,
        Trainer,
        TrainingProtection,
        fine_tune,
        train_model,
        train_network,
    )
