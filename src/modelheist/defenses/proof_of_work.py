"""``pow``: calibrated proof-of-work (Dziedzic et al., "Increasing the Cost of Model Extraction
with Calibrated Proof of Work", ICLR '22, §3).

Before a request is answered, the server may require a hashcash-style proof of work: a
counter such that SHA-256(nonce || digest(inputs) || counter) starts with ``bits`` zero bits,
for a nonce the server issued to this client (single use, expiring) and the exact inputs of
the request. The difficulty grows with how much the client's answers have revealed beyond what
a regular user's would: each answered query's cost is the entropy of its probability vector
(normalised by log C), a client's excess is the z-score of its total cost against ``n``
queries of a regular user (``benign_mean``, ``benign_std``, measured on held-out
in-distribution data, :func:`calibrate_costs`), and

    bits = min(max_bits, floor(bits_per_sigma * (z - free_sigma))) + ceil(log2(batch))

once z exceeds ``free_sigma`` (else no proof is needed), so that a regular user almost never
works, an attacker's work per query doubles with each ``1 / bits_per_sigma`` standard
deviations of excess up to 2^max_bits hashes, and a batch costs its size times a query's work
(large batches buy no discount). The difficulty is read from the client's committed costs when
a request is admitted; requests of one client queued together pass at the same difficulty. Deviation from the paper, stated: it calibrates to each query's privacy
cost under PATE, which needs the owner's PATE teachers; the entropy of the answer is the
per-query information estimate that any served classifier gives. The challenge/response
contract (HTTP 428 with the challenge, the ``X-Proof-Of-Work`` header) is in the OpenAPI schema.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from modelheist.defenses.base import Capabilities, Defense, StageContext, require_probabilities
from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError
from modelheist.oracle.answer import Answer
from modelheist.oracle.inputs import batch_digest

#: The header a client puts its proof in: ``NONCE_HEX:COUNTER``.
PROOF_HEADER = "X-Proof-Of-Work"


def inputs_digest(x: np.ndarray) -> bytes:
    """SHA-256 of a batch as the service sees it (:func:`~modelheist.oracle.inputs.batch_digest`:
    its shape, then its float32 C-order bytes, or a text batch's strings); a proof is bound to
    it, so it cannot be reused for other inputs."""
    return batch_digest(x)


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def proof_digest(nonce: bytes, digest: bytes, counter: int) -> bytes:
    return hashlib.sha256(nonce + digest + counter.to_bytes(8, "big")).digest()


def solve(nonce: bytes, digest: bytes, bits: int) -> int:
    """The first counter whose proof has ``bits`` leading zero bits (2^bits tries expected)."""
    prefix = hashlib.sha256(nonce + digest)
    target = 1 << (256 - bits)
    counter = 0
    while True:
        h = prefix.copy()
        h.update(counter.to_bytes(8, "big"))
        if int.from_bytes(h.digest(), "big") < target:
            return counter
        counter += 1


def solve_challenge(challenge: dict[str, object], x: np.ndarray) -> str:
    """The ``X-Proof-Of-Work`` header value answering ``challenge`` for the batch ``x``."""
    try:
        nonce = bytes.fromhex(str(challenge["nonce"]))
        bits = int(challenge["bits"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        raise ModelheistError(f"the server sent a malformed challenge: {challenge!r}") from None
    if not 0 <= bits <= 64:
        raise ModelheistError(f"the server asks for a {bits}-bit proof of work; refusing")
    return f"{nonce.hex()}:{solve(nonce, inputs_digest(x), bits)}"


def answer_costs(probabilities: np.ndarray) -> np.ndarray:
    """Each answer's entropy divided by log C (0: certain, 1: uniform)."""
    p = np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1) / math.log(p.shape[1])


def calibrate_costs(probabilities: np.ndarray) -> tuple[float, float]:
    """The mean and standard deviation of the per-query cost of held-out in-distribution
    answers: a regular user's, which ``pow`` charges nothing for."""
    costs = answer_costs(probabilities)
    if len(costs) < 2:
        raise ModelheistError("calibration needs at least two held-out answers")
    return float(costs.mean()), float(max(costs.std(ddof=1), 1e-6))


@dataclass(frozen=True)
class Challenge:
    """What a client must solve before its request is answered."""

    nonce: str  # hex
    bits: int
    expires: float  # Unix time

    def to_json(self) -> dict[str, object]:
        return {
            "nonce": self.nonce,
            "bits": self.bits,
            "expires": self.expires,
            "algorithm": "sha256(nonce || D || counter:u64be); D = sha256(repr(shape) || "
            "float32 bytes) for arrays, sha256(repr((n,)) || per text: len:u64be || utf8) "
            "for texts",
            "header": PROOF_HEADER,
        }


class ProofOfWork(Defense):
    """``pow:benign_mean=M,benign_std=S,bits_per_sigma=1,free_sigma=3,max_bits=16`` (see the
    module docstring). Place it before any top-k or labels-only stage (it reads the
    probabilities the model gave)."""

    name: ClassVar[str] = "pow"
    capabilities: ClassVar[Capabilities] = Capabilities(stateful=True, needs_probabilities=True)

    def __init__(
        self,
        benign_mean: float,
        benign_std: float,
        bits_per_sigma: float = 1.0,
        free_sigma: float = 3.0,
        max_bits: int = 16,
        expires: float = 120.0,
    ):
        if not 0.0 <= benign_mean <= 1.0 or not benign_std > 0:
            raise ModelheistError(
                "pow: benign_mean must lie in [0, 1] and benign_std be > 0 (calibrate them on "
                "held-out data)"
            )
        if bits_per_sigma <= 0 or free_sigma < 0 or not 1 <= max_bits <= 24 or expires <= 0:
            raise ModelheistError(
                "pow: bits_per_sigma must be > 0, free_sigma >= 0, max_bits (per query) in "
                "1..24, expires > 0"
            )
        self.benign_mean = benign_mean
        self.benign_std = benign_std
        self.bits_per_sigma = bits_per_sigma
        self.free_sigma = free_sigma
        self.max_bits = max_bits
        self.expires = expires

    def initial_values(self) -> dict[str, object]:
        return {"queries": 0, "cost": 0.0}

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        costs = answer_costs(require_probabilities(self, answer))
        values = state.values
        values["queries"] = int(values.get("queries", 0)) + len(costs)
        values["cost"] = float(values.get("cost", 0.0)) + float(costs.sum())
        return answer

    def excess(self, state: StageState) -> float:
        """The z-score of the client's total cost against a regular user's."""
        n = int(state.values.get("queries", 0))
        if n == 0:
            return 0.0
        total = float(state.values.get("cost", 0.0))
        return (total - n * self.benign_mean) / (self.benign_std * math.sqrt(n))

    def required_bits(self, state: StageState, batch: int) -> int:
        """The difficulty of the proof a request of ``batch`` inputs needs (0: none)."""
        z = self.excess(state)
        if z <= self.free_sigma:
            return 0
        per_query = min(self.max_bits, math.floor(self.bits_per_sigma * (z - self.free_sigma)))
        if per_query <= 0:
            return 0
        return per_query + math.ceil(math.log2(max(batch, 1)))

    def spec(self) -> str:
        return (
            f"{self.name}:benign_mean={self.benign_mean!r},benign_std={self.benign_std!r},"
            f"bits_per_sigma={self.bits_per_sigma!r},free_sigma={self.free_sigma!r},"
            f"max_bits={self.max_bits},expires={self.expires!r}"
        )
