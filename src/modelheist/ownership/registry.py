"""Every ownership scheme by its registry name (``modelheist verify NAME``)."""

from __future__ import annotations

from modelheist.ownership.base import OwnershipScheme
from modelheist.ownership.cae import CAEScheme
from modelheist.ownership.dataset_inference import DatasetInferenceScheme
from modelheist.ownership.dawn import DawnScheme
from modelheist.ownership.radioactive import RadioactiveScheme
from modelheist.ownership.watermark import BackdoorWatermarkScheme

SCHEMES: dict[str, type[OwnershipScheme]] = {
    cls.name: cls
    for cls in (
        BackdoorWatermarkScheme,
        DawnScheme,
        RadioactiveScheme,
        DatasetInferenceScheme,
        CAEScheme,
    )
}
