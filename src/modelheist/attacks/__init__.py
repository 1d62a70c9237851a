"""The malicious client's side: extraction attacks through the Oracle."""

from modelheist.attacks.base import (
    AttackerKnowledge,
    BudgetedOracle,
    ExtractionAttack,
    ExtractionResult,
)
from modelheist.attacks.knockoff import KnockoffNets

ATTACKS: dict[str, type[ExtractionAttack]] = {KnockoffNets.name: KnockoffNets}

__all__ = [
    "ATTACKS",
    "AttackerKnowledge",
    "BudgetedOracle",
    "ExtractionAttack",
    "ExtractionResult",
    "KnockoffNets",
]
