"""``prada``: PRADA's extraction detector (Juuti et al., "PRADA: Protecting against DNN Model
Stealing Attacks", EuroS&P '19, §IV, Algorithm 1).

For each query x that the model assigns to class c, PRADA measures the minimum L2 distance d
from x to the client's growing set G_c (the first query of a class founds G_c). Every such d
enters the distance set D; when d exceeds the class threshold T_c, x joins G_c and
T_c = max(T_c, mean(D_Gc) - std(D_Gc)) over the distances at which G_c's members joined (the
founder counted as 0). Natural queries give distances that look normally distributed; the
synthetic queries of JBDA, T-RND or Tramèr-style attacks, each a small step from an earlier
query or uniformly random, do not. Every ``test_every`` queries the Shapiro-Wilk statistic W is
computed over D, restricted to the classes with at least ``min_class_distances`` distances and
with the distances farther than ``outlier_std`` standard deviations from the mean dropped, once
D holds more than ``min_distances`` of them; W < ``delta`` raises an alarm about the client,
which the service records (``policy=flag``) or also answers by refusing the client from then on
(``policy=block``).

Faithful to the authors' ``growing_set.py`` (SSG Aalto, 2019) in the rules above, which the
paper leaves implicit: the founder's distance 0 in D_Gc, the per-class minimum of 10 distances,
the 3-standard-deviation outlier rule, the test at every 10th query, and a verdict that follows
the latest test (a client whose distances look normal again is no longer "attacking"; each
crossing below ``delta`` raises one alarm; with ``policy=block`` every failing test does, so
that a client an administrator cleared is blocked again while its distances still look
synthetic). Deliberate deviations, none of which changes a decision:

* exact nearest neighbours with ``faiss.knn`` (brute-force L2, SIMD) over the class's growing
  set as one array, instead of a Python loop over its members; a request's queries are searched
  against the set as the request found it in one call per class, and only against the members
  the request itself added one by one; the nearest candidates' distances are summed again in
  float64, so that they do not depend on batching or threads (faiss's own sums do);
* the state is each client's, kept by the service (append-only arrays, committed with the
  audit log) instead of one global object, so it survives restarts and never mixes clients;
* inputs are compared as float32 in the model's input space (the reference reads uint8 images,
  whose differences wrap around).
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np

from modelheist.defenses.base import Capabilities, Defense, StageContext, check_policy
from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError
from modelheist.oracle.answer import Answer

#: Candidates faiss returns per query; their distances are then computed again exactly.
_CANDIDATES = 8


def nearest_squared(members: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The squared L2 distance from each of ``queries`` (k, d) to its nearest row of
    ``members`` (n, d). faiss finds the few nearest candidates (its sums are rounded in ways
    that depend on the batch size, the set's size and the number of threads: BLAS or SIMD);
    each candidate's distance is then summed again in float64, so a value does not depend on
    how the queries were batched or on the machine (unless more than ``_CANDIDATES`` members
    tie with the nearest within float32 rounding)."""
    import faiss

    queries = np.ascontiguousarray(queries, np.float32)
    k = min(_CANDIDATES, len(members))
    _, candidates = faiss.knn(queries, np.ascontiguousarray(members, np.float32), k)
    out = np.empty(len(queries), np.float64)
    for i, rows in enumerate(candidates):
        diff = members[rows[rows >= 0]].astype(np.float64) - queries[i].astype(np.float64)
        out[i] = float(np.einsum("ij,ij->i", diff, diff).min())
    return out


def shapiro_statistic(
    distances: np.ndarray,
    classes: np.ndarray,
    min_class_distances: int,
    outlier_std: float,
    min_distances: int,
) -> float | None:
    """PRADA's W over ``distances`` (the classes with enough of them, outliers dropped), or None
    while too few remain to test."""
    from scipy import stats

    if len(distances) <= min_distances:
        return None
    counts = np.bincount(classes)
    kept = distances[counts[classes] >= min_class_distances].astype(np.float64)
    if len(kept) <= min_distances:
        return None
    kept = kept[np.abs(kept - kept.mean()) < outlier_std * kept.std()]
    if len(kept) <= min_distances:
        return None  # (equal distances have no spread: none is within 3 std of their mean)
    with warnings.catch_warnings():  # past 5,000 values scipy warns that the p-value may be
        warnings.simplefilter("ignore", UserWarning)  # inaccurate: PRADA reads W, not p
        return float(stats.shapiro(kept).statistic)


class Prada(Defense):
    """PRADA's growing-set distance test (``prada:delta=0.95``); see the module docstring."""

    name: ClassVar[str] = "prada"
    capabilities: ClassVar[Capabilities] = Capabilities(
        stateful=True, raises_alarms=True, numeric_inputs=True
    )

    def __init__(
        self,
        delta: float = 0.95,
        min_distances: int = 100,
        test_every: int = 10,
        min_class_distances: int = 10,
        outlier_std: float = 3.0,
        policy: str = "flag",
    ):
        if not 0.0 < delta < 1.0:
            raise ModelheistError(f"prada: delta must lie in (0, 1), got {delta}")
        if min_distances < 3 or test_every < 1 or min_class_distances < 1 or outlier_std <= 0:
            raise ModelheistError(
                "prada: min_distances must be >= 3, test_every and min_class_distances >= 1, "
                "outlier_std > 0"
            )
        self.delta = delta
        self.min_distances = min_distances
        self.test_every = test_every
        self.min_class_distances = min_class_distances
        self.outlier_std = outlier_std
        self.policy = check_policy(self.name, policy)

    def initial_values(self) -> dict[str, object]:
        return {"thresholds": {}, "processed": 0, "alarmed": False, "statistic": None}

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        flat = np.ascontiguousarray(np.asarray(inputs, np.float32).reshape(len(inputs), -1))
        labels = np.asarray(answer.labels, np.int64)
        values = state.values
        thresholds = {int(c): float(t) for c, t in dict(values.get("thresholds", {})).items()}
        processed = int(values.get("processed", 0))
        alarmed = bool(values.get("alarmed", False))
        statistic = values.get("statistic")
        finite = np.isfinite(flat).all(axis=1)
        before = self._nearest_before(state, flat, labels, finite)
        grown = {int(c): state.rows(f"set{c}") for c in np.unique(labels)}
        for x, c, measured, squared in zip(flat, labels, finite, before, strict=True):
            if not measured:  # an incomplete query (missing values): not measured
                processed += 1
                continue
            members = state.array(f"set{c}")
            if members is None:
                state.append(f"set{c}", x[None, :])
                state.append(f"joined{c}", np.zeros(1, np.float32))
                thresholds[int(c)] = 0.0
            else:
                joined_here = members[grown[int(c)] :]  # members this request added
                if len(joined_here):
                    squared = min(squared, float(nearest_squared(joined_here, x[None, :])[0]))
                distance = float(np.sqrt(max(squared, 0.0)))
                state.append("distances", np.array([distance], np.float32))
                state.append("distance_classes", np.array([c], np.int64))
                if distance > thresholds.get(int(c), 0.0):
                    state.append(f"set{c}", x[None, :])
                    state.append(f"joined{c}", np.array([distance], np.float32))
                    joined = state.array(f"joined{c}").astype(np.float64)
                    candidate = float(joined.mean() - joined.std())
                    thresholds[int(c)] = max(thresholds.get(int(c), 0.0), candidate)
            if processed % self.test_every == 0 and state.rows("distances"):
                tested = shapiro_statistic(
                    state.array("distances"),
                    state.array("distance_classes"),
                    self.min_class_distances,
                    self.outlier_std,
                    self.min_distances,
                )
                if tested is None:  # too few distances: the last verdict stands
                    processed += 1
                    continue
                statistic = tested
                now = statistic < self.delta
                if now and (not alarmed or self.policy == "block"):
                    context.alarm(
                        f"PRADA: Shapiro-Wilk W = {statistic:.4f} < delta = {self.delta} "
                        f"after {processed + 1} queries",
                        statistic,
                    )
                    values.setdefault("first_alarm_query", processed + 1)
                alarmed = now
            processed += 1
        values["thresholds"] = {str(c): t for c, t in sorted(thresholds.items())}
        values["processed"] = processed
        values["alarmed"] = alarmed
        values["statistic"] = statistic
        return answer

    @staticmethod
    def _nearest_before(
        state: StageState, flat: np.ndarray, labels: np.ndarray, finite: np.ndarray
    ) -> np.ndarray:
        """Each query's squared distance to its class's growing set as the request found it
        (inf where the class has none yet): one search per class instead of one per query;
        members the request itself adds are compared in ``apply``."""
        squared = np.full(len(flat), np.inf)
        for c in np.unique(labels):
            members = state.array(f"set{c}")
            rows = np.flatnonzero((labels == c) & finite)
            if members is not None and len(rows):
                squared[rows] = nearest_squared(members, flat[rows])
        return squared

    def spec(self) -> str:
        return (
            f"{self.name}:delta={self.delta},min_distances={self.min_distances},"
            f"test_every={self.test_every},min_class_distances={self.min_class_distances},"
            f"outlier_std={self.outlier_std},policy={self.policy}"
        )
