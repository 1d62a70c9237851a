"""API-side defenses: stages of the prediction API's output pipeline."""

from modelheist.defenses.base import Defense, check_pipeline
from modelheist.defenses.granularity import LabelsOnly, Rounding, TopK
from modelheist.defenses.perturbation import GaussianNoise, ReverseSigmoid
from modelheist.defenses.registry import DEFENSES, parse_defense, parse_output

__all__ = [
    "DEFENSES",
    "Defense",
    "GaussianNoise",
    "LabelsOnly",
    "ReverseSigmoid",
    "Rounding",
    "TopK",
    "check_pipeline",
    "parse_defense",
    "parse_output",
]
