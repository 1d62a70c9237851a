"""API-side defenses: stages of the prediction API's output pipeline."""

from modelheist.defenses.base import Defense
from modelheist.defenses.granularity import LabelsOnly, Rounding, TopK
from modelheist.defenses.registry import DEFENSES, parse_defense, parse_output

__all__ = ["DEFENSES", "Defense", "LabelsOnly", "Rounding", "TopK", "parse_defense", "parse_output"]
