"""User-facing errors.

Every error a user can cause (an unknown name, a corrupt file, an exhausted budget) is a
``ModelheistError`` whose message is one clear line; the CLI prints it and exits non-zero
without a traceback. Anything else is a bug.
"""


class ModelheistError(Exception):
    """Base class of errors caused by input, configuration or environment, not by a bug."""


class DatasetUnavailableError(ModelheistError):
    """A dataset is unknown, or known but not present on this machine."""


class ModelLoadError(ModelheistError):
    """A model folder is missing, corrupt or not a modelheist model."""


class InvalidQueryError(ModelheistError):
    """A query batch has the wrong shape, dtype or non-finite values."""


class BudgetExceededError(ModelheistError):
    """A client asked for more queries than its budget allows; nothing was answered."""


class IncompatibleOutputError(ModelheistError):
    """An attack cannot use the output granularity the API returns."""


class AuthenticationError(ModelheistError):
    """No API key, or one the service does not know (HTTP 401)."""


class ForbiddenError(ModelheistError):
    """A known client asked for something its role or policy does not allow (HTTP 403)."""


class RateLimitedError(ModelheistError):
    """A client sent requests faster than its rate limit (HTTP 429)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class ApiUnreachableError(ModelheistError):
    """An HTTP API could not be reached (connection refused or reset, timeout, bad address)."""


class ServiceUnavailableError(ModelheistError):
    """The service could not record an answer (e.g. its state database failed): nothing was
    answered or counted (HTTP 503)."""


class QueryRefusedError(ModelheistError):
    """A defense stage refused a client's request by policy (HTTP 403 ``refused``); nothing was
    answered, counted or learned."""


class BlockedError(ForbiddenError):
    """A detector whose alarm policy is ``block`` raised an alarm about the client: its
    requests are refused until an administrator clears it (HTTP 403)."""


class ProofOfWorkRequired(ModelheistError):
    """The request must carry a proof of work for ``challenge`` (HTTP 428); nothing was
    answered or counted."""

    def __init__(self, message: str, challenge: dict[str, object]):
        super().__init__(message)
        self.challenge = challenge


class InvalidProofError(ForbiddenError):
    """A proof of work that is wrong, for other inputs, expired or already used (HTTP 403);
    nothing was answered or counted."""


class UnderReviewError(ForbiddenError):
    """A client's saved defense state could not be read, so the client is held for an
    administrator's review instead of being silently reset (HTTP 403)."""


class StateCorruptError(ModelheistError):
    """Saved per-client defense state does not decode (a damaged or foreign state database)."""
