"""Datasets: the registry of named datasets, their seeded splits and file readers. Names are
imported on first use (:mod:`modelheist._lazy`)."""

from typing import TYPE_CHECKING

from modelheist._lazy import lazy_exports

_EXPORTS = {
    "Dataset": "registry",
    "Split": "registry",
    "attacker_transfer_set": "registry",
    "dataset_available": "registry",
    "dataset_names": "registry",
    "load_dataset": "registry",
    "fit_to_shape": "transforms",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from modelheist.data.registry import (
        Dataset,
        Split,
        attacker_transfer_set,
        dataset_available,
        dataset_names,
        load_dataset,
    )
    from modelheist.data.transforms import fit_to_shape
