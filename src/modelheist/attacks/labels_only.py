"""Extracting a binary linear classifier from its labels alone (Tramèr et al. USENIX Sec '16,
§6: "Extraction given class labels only").

* :class:`LowdMeek` (``lowd-meek``): Lowd and Meek's (KDD '05) line-search algorithm. Find a
  point x_b on the decision boundary by bisection between a positive and a negative input; for
  each feature j move off the boundary by delta_j along e_j and line-search back along the
  direction u from the negative to the positive input: the distance t_j gives
  delta_j w_j + t_j (w . u) = 0, so w_j is proportional to -t_j / delta_j, and b = -w . x_b.
  The weights come out up to a positive scale, which labels cannot reveal: the surrogate's
  labels are exact (to the line searches' precision), its probabilities are not meaningful.
* :class:`AdaptiveRetraining` (``retrain``): Tramèr §6.1's adaptive retraining (active
  learning after Cohn et al.): query d + 1 random inputs, fit a logistic regression, then, round
  after round, query the d + 1 candidates the current model is least sure of and refit.
  Deliberate choice: candidates are the attacker's own unqueried inputs plus uniformly random
  ones in their range (Tramèr used uniform ones only), so that the queries resemble the
  inputs whose labels matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from rich.progress import Progress

from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack
from modelheist.attacks.equation_solving import attack_box, flat_features, surrogate_card
from modelheist.errors import BudgetExceededError, ModelheistError
from modelheist.models.classifier import Classifier, LinearModel
from modelheist.oracle import Oracle


def _require_binary(name: str, oracle: Oracle) -> None:
    if oracle.num_classes != 2:
        raise ModelheistError(
            f"{name} extracts binary classifiers; the API has {oracle.num_classes} classes"
        )


class _Labeler:
    """Labels of single inputs through the oracle, counting queries."""

    def __init__(self, oracle: Oracle):
        self.oracle = oracle
        self.queries = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, np.float32))
        if self.oracle.input_range is not None:  # probes stay in the API's domain
            x = np.clip(x, *self.oracle.input_range)
        self.queries += len(x)
        return self.oracle.query(x.reshape(len(x), *self.oracle.input_shape)).labels


@dataclass
class LowdMeek(ExtractionAttack):
    """Lowd-Meek line search against a binary linear classifier (``lowd-meek``)."""

    name: ClassVar[str] = "lowd-meek"
    title: ClassVar[str] = "Lowd-Meek"
    param_help: ClassVar[dict[str, str]] = {
        "steps": "Bisection steps per line search.",
        "delta": "Step off the boundary, as a fraction of each feature's spread.",
        "expansions": "Bracket doublings before a feature is declared unused.",
    }

    steps: int = 24  # bisection steps per line search (precision 2^-steps of the bracket)
    delta: float = 0.5  # move off the boundary, as a fraction of each feature's spread
    expansions: int = 12  # bracket doublings before a feature is declared unused

    def __post_init__(self) -> None:
        if self.steps < 1 or self.expansions < 1 or not 0 < self.delta < 1e6:
            raise ModelheistError(
                f"lowd-meek: steps and expansions must be >= 1 and delta positive, got "
                f"{self.steps}, {self.expansions}, {self.delta}"
            )

    def _extract(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Progress | None
    ) -> tuple[Classifier, np.ndarray, dict[str, Any]]:
        _require_binary(self.name, oracle)
        data = flat_features(knowledge)
        least = data.shape[1] * (self.steps + 2) + self.steps  # one bracket per feature at best
        budget = (
            knowledge.budget
            if oracle.remaining is None
            else min(knowledge.budget, oracle.remaining)
        )
        if budget < least:
            raise BudgetExceededError(
                f"lowd-meek needs at least {least} queries for {data.shape[1]} features "
                f"({self.steps} bisection steps each); the budget allows {budget}"
            )
        label = _Labeler(oracle)
        rng = np.random.default_rng(knowledge.seed)
        order = rng.permutation(len(data))
        found: dict[int, np.ndarray] = {}
        for start in range(0, len(order), 16):  # find one input of each class
            chunk = order[start : start + 16]
            for i, y in zip(chunk, label(data[chunk]), strict=True):
                found.setdefault(int(y), data[i])
            if len(found) == 2:
                break
        if len(found) < 2:
            raise ModelheistError("lowd-meek: the transfer set shows the API only one class")
        negative, positive = found[0], found[1]
        boundary = self._bisect(label, negative, positive)
        u = positive - negative
        u_norm = np.linalg.norm(u)
        u = u / u_norm
        spread = data.std(axis=0)
        spread = np.where(spread > 0, spread, 1.0)
        weights = np.zeros(data.shape[1])
        task = progress.add_task("lowd-meek: features", total=data.shape[1]) if progress else None
        for j in range(data.shape[1]):
            delta = self.delta * spread[j]
            y = boundary.copy()
            y[j] += delta
            t = self._crossing(label, y, u, scale=u_norm)
            weights[j] = 0.0 if t is None else -t / delta
            if progress is not None and task is not None:
                progress.advance(task)
        bias = -float(weights @ boundary)
        scale = np.linalg.norm(weights) or 1.0
        details = {"queries": label.queries, "unused_features": int((weights == 0).sum())}
        card = surrogate_card(oracle, "logreg", self.name, **details)
        model = LinearModel((weights / scale)[None], np.array([bias / scale]), card)
        return model, np.zeros(0, np.int64), details

    def _bisect(self, label: _Labeler, negative: np.ndarray, positive: np.ndarray) -> np.ndarray:
        low, high = 0.0, 1.0  # fraction of the way from negative to positive
        for _ in range(self.steps):
            mid = (low + high) / 2
            if label(negative + mid * (positive - negative))[0] == 1:
                high = mid
            else:
                low = mid
        return negative + (low + high) / 2 * (positive - negative)

    def _crossing(
        self, label: _Labeler, y: np.ndarray, u: np.ndarray, scale: float
    ) -> float | None:
        """The t at which y + t u crosses the boundary, or None if it never does nearby."""
        side = label(y)[0]
        direction = -1.0 if side == 1 else 1.0  # towards the other class along u
        reach = scale / 8
        for _ in range(self.expansions):
            if label(y + direction * reach * u)[0] != side:
                break
            reach *= 2
        else:
            return None
        low, high = 0.0, reach
        for _ in range(self.steps):
            mid = (low + high) / 2
            if label(y + direction * mid * u)[0] == side:
                low = mid
            else:
                high = mid
        return direction * (low + high) / 2


@dataclass
class AdaptiveRetraining(ExtractionAttack):
    """Tramèr '16 §6.1 adaptive retraining of a logistic regression (``retrain``)."""

    name: ClassVar[str] = "retrain"
    title: ClassVar[str] = "Adaptive retraining"
    param_help: ClassVar[dict[str, str]] = {
        "rounds": "Adaptive rounds after the first d + 1 queries.",
        "candidates": "Uniform candidates added to the attacker's unqueried inputs.",
    }

    rounds: int = 9  # after the first d + 1 queries; the budget caps the total
    candidates: int = 5000  # uniform candidates added to the attacker's unqueried inputs

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.candidates < 0:
            raise ModelheistError(
                f"retrain: rounds must be >= 1 and candidates >= 0, got {self.rounds}, "
                f"{self.candidates}"
            )

    def _extract(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Progress | None
    ) -> tuple[Classifier, np.ndarray, dict[str, Any]]:
        from sklearn.linear_model import LogisticRegression

        _require_binary(self.name, oracle)
        data = flat_features(knowledge)
        d = data.shape[1]
        rng = np.random.default_rng(knowledge.seed)
        low, high = attack_box(oracle, data)
        pool = np.vstack([data, rng.uniform(low, high, size=(self.candidates, d))]).astype(
            np.float32
        )
        mean, std = data.mean(axis=0), np.where(data.std(axis=0) > 0, data.std(axis=0), 1.0)
        label = _Labeler(oracle)
        budget = (
            knowledge.budget
            if oracle.remaining is None
            else min(knowledge.budget, oracle.remaining)
        )
        batch = d + 1
        chosen = list(rng.choice(len(data), min(batch, budget, len(data)), replace=False))
        labels = list(label(pool[chosen]))
        model = None
        task = progress.add_task("retrain: rounds", total=self.rounds) if progress else None
        for _ in range(self.rounds):
            if len(set(labels)) == 2:
                model = LogisticRegression(C=1e4, max_iter=5000).fit(
                    (pool[chosen] - mean) / std, labels
                )
            left = budget - len(chosen)
            if left <= 0:
                break
            unqueried = np.setdiff1d(np.arange(len(pool)), chosen)
            if model is None:  # one class so far: keep sampling the attacker's data
                picks = rng.choice(unqueried, min(batch, left), replace=False)
            else:
                margin = np.abs(model.decision_function((pool[unqueried] - mean) / std))
                picks = unqueried[np.argsort(margin)[: min(batch, left)]]
            chosen.extend(int(i) for i in picks)
            labels.extend(label(pool[picks]))
            if progress is not None and task is not None:
                progress.advance(task)
        if len(set(labels)) < 2:
            raise ModelheistError("retrain: every answer had the same label; nothing to fit")
        model = LogisticRegression(C=1e4, max_iter=5000).fit((pool[chosen] - mean) / std, labels)
        coef = model.coef_ / std
        intercept = model.intercept_ - (model.coef_ * mean / std).sum(axis=1)
        details = {"queries": label.queries}
        card = surrogate_card(oracle, "logreg", self.name, **details)
        natural = np.array([i for i in chosen if i < len(data)], np.int64)
        return LinearModel(coef, intercept, card), natural, details
