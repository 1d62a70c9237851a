"""The malicious client's side: extraction attacks through the Oracle."""

from modelheist.attacks.base import (
    AttackerKnowledge,
    BudgetedOracle,
    ExtractionAttack,
    ExtractionResult,
)
from modelheist.attacks.equation_solving import LogisticEquationSolving, MlpEquationSolving
from modelheist.attacks.knockoff import KnockoffNets
from modelheist.attacks.labels_only import AdaptiveRetraining, LowdMeek
from modelheist.attacks.synthetic import (
    JacobianAugmentation,
    NonTargetedIfgsm,
    TargetedRandom,
)
from modelheist.attacks.tree_path import TreePathFinding

ATTACKS: dict[str, type[ExtractionAttack]] = {
    cls.name: cls
    for cls in (
        KnockoffNets,
        LogisticEquationSolving,
        MlpEquationSolving,
        LowdMeek,
        AdaptiveRetraining,
        TreePathFinding,
        JacobianAugmentation,
        TargetedRandom,
        NonTargetedIfgsm,
    )
}

__all__ = [
    "ATTACKS",
    "AdaptiveRetraining",
    "LowdMeek",
    "AttackerKnowledge",
    "BudgetedOracle",
    "ExtractionAttack",
    "ExtractionResult",
    "KnockoffNets",
    "LogisticEquationSolving",
    "MlpEquationSolving",
    "NonTargetedIfgsm",
    "TargetedRandom",
    "TreePathFinding",
    "JacobianAugmentation",
]
