"""The owner's victim of any kind, by architecture name: image and tabular models through
:func:`~modelheist.models.training.train_model`, text models through
:mod:`modelheist.models.text` (MiniLM fine-tuned) or :mod:`modelheist.models.vader` (VADER,
not trained). One entry point for ``modelheist train`` and the scenario runner.
"""

from __future__ import annotations

from rich.progress import Progress

from modelheist.data.registry import Dataset
from modelheist.errors import ModelheistError
from modelheist.models.classifier import Classifier
from modelheist.models.training import TrainConfig, train_model

#: The text classifiers' architectures (modelheist.models.text and modelheist.models.vader).
TEXT_ARCHITECTURES = ("minilm", "vader")


def train_victim(
    data: Dataset,
    arch: str,
    epochs: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> Classifier:
    """The owner's model of architecture ``arch`` on ``data.train``: text architectures on text
    (their own recipe, ``epochs`` and ``seed`` from the caller), the others through
    :func:`train_model` with ``TrainConfig(epochs=epochs, seed=seed)``."""
    if (data.kind == "text") != (arch in TEXT_ARCHITECTURES):
        raise ModelheistError(
            f"{data.name} holds {data.kind}: train {' or '.join(TEXT_ARCHITECTURES)} on text, "
            "the other architectures on images or tables"
        )
    if arch == "vader":
        from modelheist.models.vader import vader_model

        return vader_model(data.name)
    if arch == "minilm":
        from modelheist.models.text import text_train_config, train_text_model

        return train_text_model(data, text_train_config(epochs, seed), progress=progress)
    return train_model(data, arch, TrainConfig(epochs=epochs, seed=seed), progress)
