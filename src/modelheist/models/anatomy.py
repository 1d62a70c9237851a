"""A network's feature extractor and its final linear layer, for the white-box tests of
ownership schemes (radioactive data compares a classifier's rows with directions in feature
space, Sablayrolles et al., ICML '20, §4)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from modelheist.errors import ModelheistError


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The modules of nested ``nn.Sequential`` containers, in order; anything else is a leaf."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def split_head(module: nn.Module) -> tuple[nn.Sequential, nn.Linear]:
    """``module`` as (feature extractor, final linear layer): the network must be a chain of
    ``nn.Sequential`` containers whose last layer is an ``nn.Linear`` (every architecture of
    :mod:`modelheist.models.architectures` but an ensemble). The parts share ``module``'s
    weights."""
    leaves = _leaves(module)
    if len(leaves) < 2 or not isinstance(leaves[-1], nn.Linear):
        raise ModelheistError(
            f"a {type(module).__name__} does not end in a linear classifier layer behind a "
            "chain of layers (an ensemble has no single one)"
        )
    return nn.Sequential(*leaves[:-1]), leaves[-1]


def features(module: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The input of ``module``'s final linear layer for each row of ``x`` (eval mode)."""
    extractor, _ = split_head(module)
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            out = [
                extractor(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], np.float32)))
                for i in range(0, len(x), batch_size)
            ]
    finally:
        module.train(was_training)
    width = split_head(module)[1].in_features
    return torch.cat(out).reshape(-1, width).numpy() if out else np.zeros((0, width), np.float32)


def head_weights(module: nn.Module) -> np.ndarray:
    """The final linear layer's weight matrix, one row per class."""
    return split_head(module)[1].weight.detach().cpu().numpy().astype(np.float64)
