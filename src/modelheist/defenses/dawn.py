"""``dawn``: Dynamic Adversarial Watermarking of Neural Networks (Szyller, Atli, Marchal and
Asokan, ACM MM '21, §4).

The API itself plants a watermark in whatever a client trains on its answers. For each query
x, HMAC-SHA256 under the owner's key over x's canonical bytes gives a 256-bit digest h(x). The
first 128 bits decide whether x is watermarked: when, read as an integer, they fall below
``rate`` x 2^128 (DAWN's r_w, 0.5% by default), about a fraction ``rate`` of all queries. A
watermarked query gets a wrong label derived from the other 128 bits: the model's label y
shifted by 1 + (h mod (C - 1)), so it is never y and is uniform over the other C - 1 classes;
with probabilities, the entries of y and of the wrong label are swapped, so the vector is the
model's own, permuted, and its arg-max is the wrong label (shared with another class only where
an earlier stage, e.g. rounding, left a tie at the top; the label returned is the wrong one).
Put ``dawn`` after the stages that change probabilities and before top-k or labels-only ones:
a later stage that changes labels (misinformation) would answer something other than the label
the client's watermark set records. Without the echo below, the same input always gets the
same answer (the decision and the label are functions of the key and the input alone), so
asking again reveals nothing. Each client's watermarked inputs, their wrong labels and their digests
are kept in that client's stage state, the client's watermark set, from which
:class:`~modelheist.ownership.dawn.DawnScheme` later tests a suspect.

Canonical bytes: the input as little-endian float32 in the model's input shape, with -0.0 made
+0.0 and every NaN (a missing value) the same NaN, prefixed by a domain string and the shape,
so that the whole input decides, not a prefix of it.

Deliberate deviations from the authors' code: it hashes a binarised internal activation (WRT's
version) or the first bytes of the raw input (the DAWN reference), so that near-duplicates
share a decision; modelheist hashes the whole input, as issue 11 asks (an attacker's
augmented copies of one image are different queries, each decided on its own). The reference
shuffles the probabilities above a threshold among themselves; swapping the two entries is the
smallest permutation that moves the arg-max to the wrong label. Queries with missing values
are never watermarked (a suspect could not be asked them again).

Neighbourhood echo (``radius``, an extension; off by default, 0): hashing the whole input lets
an attacker who asks many near-duplicates of one input (JBDA's and T-RND's synthetic steps, a
few hundredths to tenths of the input range away from their parents) outvote each watermarked
answer with truthful answers next to it, so that the surrogate never learns it. With ``radius``
r > 0, a query within L-infinity distance r of an input that carries a watermark's label (one
of the same client's watermarked inputs, or a kept echo) gets that label too (the nearest
one's, found exactly with faiss's flat L-infinity index), so that the label spreads along a
chain of small steps (inside one request, for at most ``ECHO_HOPS`` hops; across requests
without limit); the answer changes only where the model's own label differs. Echoes are
counted (``echoed``, the answers changed) and kept (``echo_inputs``, ``echo_labels``; only
those farther than r / 2 from every kept input, so that what is kept stays bounded) but are not
watermarks: the watermark set stays the hash-selected inputs, independent trials for the
verification test, whose null bound the echo does not touch. The radius is absolute, in the
input's units: the L-infinity ball separates an attacker's perturbations of images in [0, 1]
(every value moved by at most the step) from distinct natural images, which differ somewhere
by far more; for tabular inputs or streams of near-identical frames it would spread to honest
clients, and benchmarks/dawn.py measures what an honest client of the image API loses. Caveats:
answers given before a watermark cannot change, so the truthful answers to its ancestors still
pull a surrogate towards the model's label; an input asked before a watermark near it and
again after gets two different answers (re-asking reveals that a watermark is near), and two
colluding clients asking the same near-duplicate can see a difference; which label a query
inherits can depend on how the client batches its requests; the decision for a hash-selected
input is still the key's alone.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import ClassVar

import numpy as np

from modelheist.defenses.base import Capabilities, Defense, StageContext, require_probabilities
from modelheist.defenses.secrets import SecretFile, require_key_file
from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError
from modelheist.oracle.answer import Answer

DOMAIN = b"modelheist-dawn/1:"
#: Hops an echo's label passes on inside one request (each costs a search of the request).
ECHO_HOPS = 4
DIGEST_BYTES = 32


def canonical_rows(inputs: np.ndarray) -> np.ndarray:
    """``inputs`` as contiguous little-endian float32 with one zero and one NaN."""
    x = np.asarray(inputs, dtype="<f4") + np.float32(0.0)  # -0.0 + 0.0 is +0.0
    return np.ascontiguousarray(np.where(np.isnan(x), np.float32(np.nan), x), dtype="<f4")


def watermark_digests(key: bytes, inputs: np.ndarray) -> np.ndarray:
    """HMAC-SHA256(key, domain | shape | input bytes) of each input: (n, 32) uint8."""
    rows = canonical_rows(inputs)
    shape = ",".join(str(d) for d in rows.shape[1:]).encode() + b":"
    digests = b"".join(
        hmac.new(key, DOMAIN + shape + row.tobytes(), hashlib.sha256).digest() for row in rows
    )
    return np.frombuffer(digests, np.uint8).reshape(len(rows), DIGEST_BYTES)


def selected(digests: np.ndarray, rate: float) -> np.ndarray:
    """Which digests fall in the watermarked fraction: their first 128 bits below rate x 2^128."""
    bound = int(rate * 2**128)
    return np.array([int.from_bytes(bytes(d[:16]), "big") < bound for d in digests], bool)


def wrong_labels(digests: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The label each watermarked query gets: never its own, uniform over the other classes."""
    shifts = [1 + int.from_bytes(bytes(d[16:]), "big") % (num_classes - 1) for d in digests]
    return (np.asarray(labels, np.int64) + np.array(shifts, np.int64)) % num_classes


class Dawn(Defense):
    """``dawn:key_file=PATH,rate=0.005[,radius=R]`` (experiments: ``dawn:seed=N``); see the
    module docstring."""

    name: ClassVar[str] = "dawn"
    capabilities: ClassVar[Capabilities] = Capabilities(
        stateful=True,
        changes_labels=True,
        needs_probabilities=True,
        notes=("watermarked",),
        numeric_inputs=True,
    )

    def __init__(
        self,
        rate: float = 0.005,
        seed: int = 0,
        key_file: SecretFile | None = None,
        radius: float = 0.0,
    ):
        if not 0.0 < rate < 1.0:
            raise ModelheistError(f"dawn: rate must lie in (0, 1), got {rate}")
        if not 0.0 <= radius < float("inf"):
            raise ModelheistError(f"dawn: radius must be a finite number >= 0, got {radius}")
        self.rate = rate
        self.radius = radius
        self.seed = seed
        self.key_file = key_file

    def open(self) -> None:
        if self.key_file is not None:
            self.key_file.check()

    def check_model(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        if num_classes < 2:
            raise ModelheistError("dawn: a watermark needs a model with at least 2 classes")

    def check_serving(self) -> None:
        require_key_file(self.name, "watermark", self.key_file)

    def key(self) -> bytes:
        """The HMAC key: the key file's secret, or (experiments) one derived from the seed."""
        if self.key_file is not None:
            return self.key_file.read()
        return hashlib.sha256(f"modelheist-dawn-seed:{self.seed}".encode()).digest()

    def initial_values(self) -> dict[str, object]:
        return {"watermarked": 0, "echoed": 0, "classes": None}

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        p = require_probabilities(self, answer)
        complete = np.isfinite(np.asarray(inputs, np.float32).reshape(len(inputs), -1)).all(1)
        digests = watermark_digests(self.key(), inputs)
        chosen = np.flatnonzero(selected(digests, self.rate) & complete)
        labels = np.array(answer.labels, np.int64, copy=True)
        wrong = wrong_labels(digests[chosen], labels[chosen], p.shape[1])
        if len(chosen):
            state.append("inputs", canonical_rows(inputs[chosen]))
            state.append("labels", wrong)
            state.append("digests", digests[chosen])
            state.values["watermarked"] = int(state.values.get("watermarked", 0)) + len(chosen)
            state.values["classes"] = int(p.shape[1])
            context.note(f"watermarked:{len(chosen)}")
        echoes, echoed = self._echoes(inputs, complete, chosen, labels, state)
        if len(echoes):
            state.values["echoed"] = int(state.values.get("echoed", 0)) + len(echoes)
            context.note(f"echoed:{len(echoes)}")
        changed = np.concatenate([chosen, echoes]).astype(np.int64)
        if not len(changed):
            return answer
        new = np.concatenate([wrong, echoed]).astype(np.int64)
        probabilities = np.array(p, copy=True)
        own = probabilities[changed, labels[changed]]
        probabilities[changed, labels[changed]] = probabilities[changed, new]
        probabilities[changed, new] = own
        labels[changed] = new
        return Answer(labels, probabilities)

    def _echoes(
        self,
        inputs: np.ndarray,
        complete: np.ndarray,
        chosen: np.ndarray,
        labels: np.ndarray,
        state: StageState,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The queries (not themselves chosen) within ``radius`` of an input that carries a
        watermark's label (a watermark, this request's included, or a kept echo), whose label
        the nearest such input's would change; and those labels. Inside one request the label
        passes on for at most :data:`ECHO_HOPS` hops. A query found is kept as an echo only if
        no kept input lies within half the radius (a covering net: what is kept stays bounded
        however often a client asks near one point)."""
        none = np.empty(0, np.int64)
        if self.radius == 0.0 or not state.rows("labels"):
            return none, none
        import faiss

        candidates = np.flatnonzero(complete)
        candidates = candidates[~np.isin(candidates, chosen)]
        width = int(np.prod(np.shape(inputs)[1:]))
        queries = canonical_rows(inputs[candidates]).reshape(len(candidates), width)
        found = np.full(len(candidates), -1, np.int64)  # the label each candidate inherits
        closest = np.full(len(candidates), np.inf, np.float32)  # to a kept input, first hop
        members = [("inputs", "labels"), ("echo_inputs", "echo_labels")]
        sources = [
            (state.array(x).reshape(state.rows(x), -1), state.array(y))
            for x, y in members
            if state.rows(y)
        ]
        for hop in range(ECHO_HOPS):
            open_ = np.flatnonzero(found < 0)
            if not sources or not len(open_):
                break
            fresh = np.zeros(len(candidates), bool)
            nearest_now = np.full(len(open_), np.inf, np.float32)
            for marked, marked_labels in sources:
                index = faiss.IndexFlat(marked.shape[1], faiss.METRIC_Linf)
                index.add(np.ascontiguousarray(marked, np.float32))
                distances, nearest = index.search(np.ascontiguousarray(queries[open_]), 1)
                better = (distances[:, 0] <= self.radius) & (distances[:, 0] < nearest_now)
                nearest_now[better] = distances[better, 0]
                found[open_[better]] = marked_labels[nearest[better, 0]]
                fresh[open_[better]] = True
                if hop == 0:
                    closest[open_] = np.minimum(closest[open_], distances[:, 0])
            sources = [(queries[fresh], found[fresh])] if fresh.any() else []
        kept = (found >= 0) & (closest > self.radius / 2)
        if kept.any():
            state.append("echo_inputs", canonical_rows(inputs[candidates[kept]]))
            state.append("echo_labels", found[kept])
        change = (found >= 0) & (found != labels[candidates])
        return candidates[change], found[change]

    def spec(self) -> str:
        echo = f",radius={self.radius!r}" if self.radius else ""
        if self.key_file is not None:
            return f"{self.name}:rate={self.rate!r},key_file={self.key_file}{echo}"
        return f"{self.name}:rate={self.rate!r},seed={self.seed}{echo}"
