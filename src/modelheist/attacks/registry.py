"""Every extraction attack by its registry name (``modelheist attack NAME``)."""

from __future__ import annotations

from modelheist.attacks.base import ExtractionAttack
from modelheist.attacks.equation_solving import LogisticEquationSolving, MlpEquationSolving
from modelheist.attacks.knockoff import KnockoffNets
from modelheist.attacks.labels_only import AdaptiveRetraining, LowdMeek
from modelheist.attacks.synthetic import JacobianAugmentation, NonTargetedIfgsm, TargetedRandom
from modelheist.attacks.thieves import ThievesAttack
from modelheist.attacks.translate import TranslationExtraction
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
        ThievesAttack,
        TranslationExtraction,
    )
}
