"""The inference API: the PredictionService, its ledger, and its in-process and HTTP
transports. Names are imported on first use (:mod:`modelheist._lazy`)."""

from typing import TYPE_CHECKING

from modelheist._lazy import lazy_exports

_EXPORTS = {
    "ClientState": "service",
    "PredictionService": "service",
    "Receipt": "service",
    "LocalOracle": "local",
    "Ledger": "ledger",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from modelheist.api.ledger import Ledger
    from modelheist.api.local import LocalOracle
    from modelheist.api.service import ClientState, PredictionService, Receipt
