"""Datasets: the registry of named datasets, their seeded splits and file readers."""

from modelheist.data.registry import (
    Dataset,
    Split,
    attacker_transfer_set,
    dataset_available,
    dataset_names,
    load_dataset,
)
from modelheist.data.transforms import fit_to_shape

__all__ = [
    "Dataset",
    "Split",
    "attacker_transfer_set",
    "dataset_available",
    "dataset_names",
    "fit_to_shape",
    "load_dataset",
]
