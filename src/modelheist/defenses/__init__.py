"""API-side defenses: stages of the prediction API's pipeline."""

from modelheist.defenses.base import (
    Alarm,
    Capabilities,
    Defense,
    StageContext,
    check_pipeline,
)
from modelheist.defenses.granularity import LabelsOnly, Rounding, TopK
from modelheist.defenses.history import InputHistory
from modelheist.defenses.perturbation import GaussianNoise, ReverseSigmoid
from modelheist.defenses.registry import DEFENSES, parse_defense, parse_output, register_defense
from modelheist.defenses.secrets import SecretFile
from modelheist.defenses.state import StageState

__all__ = [
    "DEFENSES",
    "Alarm",
    "Capabilities",
    "Defense",
    "GaussianNoise",
    "InputHistory",
    "LabelsOnly",
    "ReverseSigmoid",
    "Rounding",
    "SecretFile",
    "StageContext",
    "StageState",
    "TopK",
    "check_pipeline",
    "parse_defense",
    "parse_output",
    "register_defense",
]
