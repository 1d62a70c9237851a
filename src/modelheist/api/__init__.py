"""The inference API: answers, the PredictionService and the Oracle boundary."""

from modelheist.api.answer import Answer, OutputKind
from modelheist.api.oracle import LocalOracle, Oracle
from modelheist.api.service import ClientState, PredictionService

__all__ = ["Answer", "ClientState", "LocalOracle", "Oracle", "OutputKind", "PredictionService"]
