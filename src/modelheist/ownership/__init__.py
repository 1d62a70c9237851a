"""The verifier's side: ownership schemes that decide, from a suspect's answers, whether it
derives from the owner's model. Names are imported on first use (:mod:`modelheist._lazy`)."""

from typing import TYPE_CHECKING

from modelheist._lazy import lazy_exports

_EXPORTS = {
    "CannotVerify": "base",
    "Evidence": "base",
    "Finding": "base",
    "OwnershipScheme": "base",
    "SCHEMES": "registry",
    "BackdoorWatermark": "watermark",
    "BackdoorWatermarkScheme": "watermark",
    "DawnScheme": "dawn",
    "CAEScheme": "cae",
    "Fingerprint": "cae",
    "BlindWalk": "dataset_inference",
    "MinGD": "dataset_inference",
    "DatasetInferenceScheme": "dataset_inference",
    "DatasetInferenceSecret": "dataset_inference",
    "RadioactiveData": "radioactive",
    "RadioactiveMark": "radioactive",
    "RadioactiveMarking": "radioactive",
    "RadioactiveScheme": "radioactive",
    "TriggerSet": "watermark",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from modelheist.ownership.base import CannotVerify, Evidence, Finding, OwnershipScheme
    from modelheist.ownership.cae import CAEScheme, Fingerprint
    from modelheist.ownership.dataset_inference import (
        BlindWalk,
        DatasetInferenceScheme,
        DatasetInferenceSecret,
        MinGD,
    )
    from modelheist.ownership.dawn import DawnScheme
    from modelheist.ownership.radioactive import (
        RadioactiveData,
        RadioactiveMark,
        RadioactiveMarking,
        RadioactiveScheme,
    )
    from modelheist.ownership.registry import SCHEMES
    from modelheist.ownership.watermark import (
        BackdoorWatermark,
        BackdoorWatermarkScheme,
        TriggerSet,
    )
