"""The contracts between the prediction side and its users: what an API answers (``Answer``),
the black-box boundary (``Oracle``) and a hard budget around it (``BudgetedOracle``)."""

from modelheist.oracle.answer import Answer, OutputKind, concatenate
from modelheist.oracle.base import Oracle, WhiteBoxOracle
from modelheist.oracle.budgeted import BudgetedOracle, QueryLog

__all__ = [
    "Answer",
    "BudgetedOracle",
    "Oracle",
    "OutputKind",
    "QueryLog",
    "WhiteBoxOracle",
    "concatenate",
]
