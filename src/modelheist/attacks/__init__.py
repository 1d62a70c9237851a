"""The malicious client's side: extraction attacks through the Oracle. Names are imported on
first use (:mod:`modelheist._lazy`)."""

from typing import TYPE_CHECKING

from modelheist._lazy import lazy_exports

_EXPORTS = {
    "ATTACKS": "registry",
    "AttackerKnowledge": "base",
    "ExtractionAttack": "base",
    "ExtractionResult": "base",
    "AttackInterrupted": "interruption",
    "LogisticEquationSolving": "equation_solving",
    "MlpEquationSolving": "equation_solving",
    "KnockoffNets": "knockoff",
    "AdaptiveRetraining": "labels_only",
    "LowdMeek": "labels_only",
    "JacobianAugmentation": "synthetic",
    "NonTargetedIfgsm": "synthetic",
    "TargetedRandom": "synthetic",
    "TreePathFinding": "tree_path",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack, ExtractionResult
    from modelheist.attacks.equation_solving import LogisticEquationSolving, MlpEquationSolving
    from modelheist.attacks.interruption import AttackInterrupted
    from modelheist.attacks.knockoff import KnockoffNets
    from modelheist.attacks.labels_only import AdaptiveRetraining, LowdMeek
    from modelheist.attacks.registry import ATTACKS
    from modelheist.attacks.synthetic import (
        JacobianAugmentation,
        NonTargetedIfgsm,
        TargetedRandom,
    )
    from modelheist.attacks.tree_path import TreePathFinding
