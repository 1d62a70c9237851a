"""Saving and loading models as safetensors weights plus a JSON card; never pickle.

A model folder holds ``weights.safetensors`` (tensors only) and ``card.json`` (a
:class:`ModelCard` plus a format tag). Loading validates both and turns any corruption or foreign
file into a one-line :class:`ModelLoadError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from modelheist.errors import ModelheistError, ModelLoadError
from modelheist.models.architectures import TORCH_ARCHITECTURES, build_network
from modelheist.models.classifier import (
    Classifier,
    LinearModel,
    ModelCard,
    TorchClassifier,
    TreeModel,
)
from modelheist.models.text import ARCHITECTURE as TEXT_ARCHITECTURE  # no transformers yet
from modelheist.models.vader import ARCHITECTURE as VADER_ARCHITECTURE  # no vaderSentiment yet

FORMAT = "modelheist-model/1"
WEIGHTS = "weights.safetensors"
CARD = "card.json"
_TREE_ARRAYS = ("children_left", "children_right", "feature", "threshold", "value")


def save_model(model: Classifier, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` to ``folder`` (created; an existing non-empty folder is refused)."""
    folder = Path(folder)
    if model.card.training.get("quantized"):
        raise ModelheistError(
            f"this is the model's {model.card.training['quantized']} copy, made for serving; "
            "save the model it was made from"
        )
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ModelheistError(f"output folder {folder} already exists and is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    if model.card.translates:  # an image-to-image network
        state = {k: v.detach().contiguous() for k, v in model.module.state_dict().items()}  # type: ignore[attr-defined]
        save_torch(state, str(folder / WEIGHTS))
    elif model.card.architecture == TEXT_ARCHITECTURE:  # the head and tuned layers only
        save_torch(model.module.tuned_state(), str(folder / WEIGHTS))  # type: ignore[attr-defined]
    elif model.card.architecture == VADER_ARCHITECTURE:  # its stated calibration
        save_numpy(model.calibration(), str(folder / WEIGHTS))  # type: ignore[attr-defined]
    elif isinstance(model, TorchClassifier):
        state = {k: v.detach().contiguous() for k, v in model.module.state_dict().items()}
        save_torch(state, str(folder / WEIGHTS))
    elif isinstance(model, LinearModel):
        save_numpy({"coef": model.coef, "intercept": model.intercept}, str(folder / WEIGHTS))
    elif isinstance(model, TreeModel):
        save_numpy(
            {k: np.ascontiguousarray(getattr(model, k)) for k in _TREE_ARRAYS},
            str(folder / WEIGHTS),
        )
    else:
        raise ModelheistError(f"cannot save a {type(model).__name__}")
    card = {"format": FORMAT, **asdict(model.card)}
    (folder / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return folder


def load_card(folder: str | Path) -> ModelCard:
    """Read and validate ``card.json`` of a model folder."""
    folder = Path(folder)
    path = folder / CARD
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{folder} is not a modelheist model folder (no {CARD})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is corrupt: {exc}") from None
    if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
        raise ModelLoadError(f"{path} is not a {FORMAT} model card")
    names = {f.name for f in fields(ModelCard)}
    try:
        return ModelCard(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise ModelLoadError(f"{path} is missing fields: {exc}") from None


def load_model(folder: str | Path) -> Classifier:
    """Load a model folder written by :func:`save_model`."""
    folder = Path(folder)
    card = load_card(folder)
    path = folder / WEIGHTS
    if not path.is_file():
        raise ModelLoadError(f"{folder} has no {WEIGHTS}")
    try:
        if card.translates:
            from modelheist.models.translation import load_translation_model

            return load_translation_model(load_torch(str(path)), card)  # type: ignore[return-value]
        if card.architecture == TEXT_ARCHITECTURE:
            from modelheist.models.text import load_text_model  # imports transformers

            return load_text_model(load_torch(str(path)), card)
        if card.architecture in TORCH_ARCHITECTURES:
            state = load_torch(str(path))
            norm = card.normalisation
            net = build_network(
                card.architecture,
                card.input_shape,
                card.num_classes,
                norm["mean"],
                norm["std"],
                members=card.members,
            )
            net.load_state_dict(state, strict=True)
            return TorchClassifier(net, card)
        arrays = load_numpy(str(path))
        if card.architecture == VADER_ARCHITECTURE:
            from modelheist.models.vader import load_vader

            return load_vader(arrays, card)
        if card.architecture == "logreg":
            return LinearModel(arrays["coef"], arrays["intercept"], card)
        if card.architecture == "tree":
            return TreeModel(*(arrays[k] for k in _TREE_ARRAYS), card=card)
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"{path} is not a valid safetensors file: {exc}") from None
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{path} does not match its card ({card.architecture}): {first}"
        ) from None
    raise ModelLoadError(f"{folder / CARD} names an unknown architecture {card.architecture!r}")


__all__ = ["load_card", "load_model", "save_model"]
