"""Equation-solving extraction (Tramèr et al., "Stealing Machine Learning Models via Prediction
APIs", USENIX Security '16, §4.1).

* :class:`LogisticEquationSolving` (``tramer-lr``): a logistic or softmax regression returns
  p = softmax(W x + b), so log(p_i / p_r) = (w_i - w_r) . x + (b_i - b_r) is linear in x and
  each query with full probabilities gives c - 1 linear equations. d + 1 queries determine the
  model up to its invariance (adding one vector to every class): the minimum. Tramèr solved the
  multiclass case with c (d + 1) queries and BFGS; we solve the log-ratio system directly.
  Deliberate design: the d + 1 queries are a centre taken from the attacker's data and the
  centre moved along each coordinate, so the system is diagonal (w_j = (L_j - L_0) / step_j)
  and needs no matrix inversion whatever the features' scales. Under rounded probabilities the
  equations are inexact: the attack then spends its budget on random queries and retrains a
  softmax regression on the rounded vectors (soft cross-entropy), reporting the excess
  cross-entropy (Tramèr §8 found rounding to 2-5 decimals slows but does not stop extraction).
* :class:`MlpEquationSolving` (``tramer-mlp``): for a network with one hidden layer (the
  attacker knows the architecture: d inputs, h tanh units, c outputs) the equations are not
  linear; as Tramèr, the attack queries ``alpha`` times as many inputs as there are unknown
  parameters k and solves the system of log-probability equations numerically
  (L-BFGS in float64 on the centred log-probabilities, which are the logits up to the softmax's
  invariance), restarting from another seed while the residual stays large. Deliberate
  deviation: Tramèr drew the queries uniformly from the input domain; we draw
  ``natural_share`` of them from the attacker's own data and the rest uniformly, because an
  under-determined fit generalises to natural inputs from natural queries (on breast-cancer at
  alpha = 1: 1-R_test 0.982 with uniform queries only).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack, rounding_decimals
from modelheist.errors import BudgetExceededError, ModelheistError
from modelheist.models.architectures import Standardize, mlp1, normalisation_stats
from modelheist.models.classifier import Classifier, LinearModel, ModelCard, TorchClassifier
from modelheist.oracle import Oracle
from modelheist.oracle.answer import Answer

log = logging.getLogger(__name__)

#: Probabilities at or below this are treated as rounded to zero (their logarithm is unusable).
_TINY = 1e-300


def flat_features(knowledge: AttackerKnowledge) -> np.ndarray:
    """The attacker's natural inputs as a float64 matrix (n, d)."""
    x = np.asarray(knowledge.transfer_set, np.float64)
    return x.reshape(len(x), -1)


def attack_box(oracle: Oracle, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where random queries are drawn: the attacker's data range, within the API's domain."""
    low, high = data.min(axis=0), data.max(axis=0)
    if oracle.input_range is not None:
        low = np.clip(low, *oracle.input_range)
        high = np.clip(high, *oracle.input_range)
    return low, high


def surrogate_card(oracle: Oracle, architecture: str, attack: str, **training: Any) -> ModelCard:
    return ModelCard(
        architecture=architecture,
        dataset="extracted",
        classes=oracle.classes,
        input_shape=list(oracle.input_shape),
        training={"attack": attack, **training},
    )


def linear_model_from_log_ratios(theta: np.ndarray, card: ModelCard) -> LinearModel:
    """A LinearModel from (d + 1, c) log-ratio coefficients (last row: intercepts).

    Two classes give the binary form (coef of class 1 against class 0).
    """
    weights, bias = theta[:-1].T, theta[-1]
    if theta.shape[1] == 2:
        return LinearModel((weights[1] - weights[0])[None], np.array([bias[1] - bias[0]]), card)
    return LinearModel(weights, bias, card)


def fit_softmax_regression(x: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit (d + 1, c) coefficients of softmax(x W + b) to probability vectors by minimising the
    soft cross-entropy (L-BFGS, float64, on standardised features); return them and the excess
    cross-entropy over the targets' own entropy (0: a perfect fit)."""
    keep = probs.sum(axis=1) > 0  # a vector rounded to all zeros says nothing
    if not keep.any():
        raise ModelheistError("every answer was rounded to zeros; nothing to fit")
    x, probs = x[keep], probs[keep]
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    inputs = torch.from_numpy((x - mean) / std)
    target = torch.from_numpy(probs / probs.sum(axis=1, keepdims=True))
    weights = torch.zeros(x.shape[1], probs.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(probs.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weights, bias], max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-15,
        history_size=50, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def loss_fn() -> torch.Tensor:
        log_q = torch.log_softmax(inputs @ weights + bias, dim=1)
        return -(target * log_q).sum(dim=1).mean()

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        entropy = -(target * torch.log(target.clamp_min(1e-300))).sum(dim=1).mean()
        excess = float(loss_fn() - entropy)
    w = weights.detach().numpy() / std[:, None]
    b = bias.detach().numpy() - mean @ w
    return np.vstack([w, b[None]]), excess


@dataclass
class LogisticEquationSolving(ExtractionAttack):
    """Tramèr '16 §4.1.1 equation solving for logistic and softmax regression (``tramer-lr``).

    ``step`` is the coordinate move, as a fraction of each feature's spread in the attacker's
    data; ``centre`` is the index of the transfer-set input used as the centre (default: the one
    nearest the data's median).
    """

    name: ClassVar[str] = "tramer-lr"
    title: ClassVar[str] = "Equation solving (LR)"
    param_help: ClassVar[dict[str, str]] = {
        "step": "Coordinate step, fraction of a feature's spread.",
        "centre": "Index of the transfer-set input the steps start from (default: the one "
        "nearest the median).",
    }
    supported_outputs: ClassVar[frozenset] = frozenset({"probabilities"})

    step: float = 0.1
    centre: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.step <= 1:
            raise ModelheistError(f"tramer-lr: step must lie in (0, 1], got {self.step}")
        if self.centre is not None and self.centre < 0:
            raise ModelheistError(f"tramer-lr: centre is an index, >= 0; got {self.centre}")

    def _extract(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Progress | None
    ) -> tuple[Classifier, np.ndarray, dict[str, Any]]:
        data = flat_features(knowledge)
        d, _c = data.shape[1], oracle.num_classes
        if knowledge.budget < d + 1 or (oracle.remaining is not None and oracle.remaining < d + 1):
            raise BudgetExceededError(
                f"tramer-lr needs d + 1 = {d + 1} queries for {d} features; the budget allows "
                f"{min(knowledge.budget, oracle.remaining or knowledge.budget)}"
            )
        index = self.centre
        if index is None:
            index = int(np.argmin(np.abs(data - np.median(data, axis=0)).sum(axis=1)))
        centre = data[index].astype(np.float32)
        spread = data.std(axis=0)
        spread = np.where(spread > 0, spread, np.maximum(np.abs(centre), 1.0))
        move = self.step * spread
        if oracle.input_range is not None:  # step inwards where a step outwards leaves the domain
            low, high = oracle.input_range
            up, down = high - centre, centre - low  # room on each side
            within = np.where(up >= down, up, -down) * self.step  # step <= 1: stays inside
            move = np.where(centre + move <= high, move, -move)
            move = np.where((centre + move >= low) & (centre + move <= high), move, within)
        design = np.repeat(centre[None], d + 1, axis=0)
        design[np.arange(1, d + 1), np.arange(d)] += move.astype(np.float32)
        design64 = design.astype(np.float64)  # the float32 inputs the API sees, exactly
        probs = _probabilities(oracle.query(design.reshape(d + 1, *oracle.input_shape)))
        decimals = rounding_decimals(probs)
        details: dict[str, Any] = {"queries_exact_system": d + 1, "rounded_to": decimals}
        if decimals is None and (probs > _TINY).all():
            logs = np.log(probs)
            ratios = logs - logs[:, :1]  # against class 0
            steps = design64[np.arange(1, d + 1), np.arange(d)] - design64[0]
            weights = (ratios[1:] - ratios[0]) / steps[:, None]
            bias = ratios[0] - design64[0] @ weights
            theta = np.vstack([weights, bias[None]])
            details["method"] = "exact"
        else:
            theta, extra = self._least_squares(oracle, knowledge, data, design64, probs)
            details.update(extra)
        card = surrogate_card(oracle, "logreg", self.name, **details)
        return linear_model_from_log_ratios(theta, card), np.array([index], np.int64), details

    def _least_squares(
        self,
        oracle: Oracle,
        knowledge: AttackerKnowledge,
        data: np.ndarray,
        design: np.ndarray,
        probs: np.ndarray,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Rounded answers: spend the rest of the budget on random inputs and fit a softmax
        regression to the returned vectors (Tramèr §4.1's retraining fallback)."""
        rng = np.random.default_rng(knowledge.seed)
        extra = knowledge.budget - len(design)
        if oracle.remaining is not None:
            extra = min(extra, oracle.remaining)
        low, high = attack_box(oracle, data)
        if extra > 0:
            more = rng.uniform(low, high, size=(extra, data.shape[1])).astype(np.float32)
            answers = oracle.query(more.reshape(extra, *oracle.input_shape))
            design = np.vstack([design, more.astype(np.float64)])
            probs = np.vstack([probs, _probabilities(answers)])
        theta, loss = fit_softmax_regression(design, probs)
        return theta, {
            "method": "retraining on rounded probabilities",
            "queries_total": len(design),
            "cross_entropy_excess": loss,
        }


def _probabilities(answer: Answer) -> np.ndarray:
    """The probability vectors exactly as the API returned them (not renormalised)."""
    assert answer.probabilities is not None  # supported_outputs guarantees it
    return np.asarray(answer.probabilities, np.float64)


@dataclass
class MlpEquationSolving(ExtractionAttack):
    """Tramèr '16 §4.1: extract a one-hidden-layer network from its probabilities
    (``tramer-mlp``), with ``alpha`` x (unknown parameters) uniformly random queries."""

    name: ClassVar[str] = "tramer-mlp"
    title: ClassVar[str] = "Equation solving (MLP)"
    param_help: ClassVar[dict[str, str]] = {
        "hidden": "Hidden units of the victim (known).",
        "alpha": "Queries per unknown parameter.",
        "iterations": "Most L-BFGS iterations per restart.",
        "restarts": "Most random restarts of the solver.",
        "tolerance": "Residual below which no further restart is tried.",
        "natural_share": "Share of the queries drawn from the attacker's data (rest uniform).",
    }
    supported_outputs: ClassVar[frozenset] = frozenset({"probabilities"})

    hidden: int = 20
    alpha: float = 1.0
    iterations: int = 3000
    restarts: int = 4
    tolerance: float = 1e-8
    natural_share: float = 0.5

    def __post_init__(self) -> None:
        if self.hidden < 1 or not 0 < self.alpha < 1e6 or self.restarts < 1:
            raise ModelheistError("tramer-mlp: hidden and restarts must be >= 1, alpha in (0, 1e6)")
        if self.iterations < 1 or not self.tolerance >= 0 or not 0 <= self.natural_share <= 1:
            raise ModelheistError(
                "tramer-mlp: iterations must be >= 1, tolerance >= 0, natural_share in [0, 1]"
            )

    def unknowns(self, d: int, c: int) -> int:
        return d * self.hidden + self.hidden + self.hidden * c + c

    def _extract(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Progress | None
    ) -> tuple[Classifier, np.ndarray, dict[str, Any]]:
        data = flat_features(knowledge)
        d, c = data.shape[1], oracle.num_classes
        k = self.unknowns(d, c)
        n = min(math.ceil(self.alpha * k), knowledge.budget)
        if oracle.remaining is not None:
            n = min(n, oracle.remaining)
        rng = np.random.default_rng(knowledge.seed)
        low, high = attack_box(oracle, data)
        natural = min(int(round(self.natural_share * n)), len(data))
        picked = rng.choice(len(data), natural, replace=False)
        x = np.vstack([data[picked], rng.uniform(low, high, size=(n - natural, d))]).astype(
            np.float32
        )
        answer = oracle.query(x.reshape(n, *oracle.input_shape))
        probs = np.clip(_probabilities(answer), 1e-300, None)
        target = np.log(probs)
        target -= target.mean(axis=1, keepdims=True)
        shape = tuple(oracle.input_shape)
        mean, std = normalisation_stats(data.astype(np.float32).reshape(len(data), *shape))
        task = progress.add_task("tramer-mlp: solving", total=self.restarts) if progress else None
        best: tuple[float, nn.Module] | None = None
        for restart in range(self.restarts):
            net, loss = self._solve(
                x.reshape(n, *shape), target, mean, std, knowledge.seed + restart
            )
            log.info("tramer-mlp restart %d: residual %.3g", restart, loss)
            if best is None or loss < best[0]:
                best = (loss, net)
            if progress is not None and task is not None:
                progress.advance(task)
            if loss < self.tolerance:
                break
        assert best is not None
        details = {"unknowns": k, "queries": n, "residual": best[0]}
        card = surrogate_card(oracle, "mlp1", self.name, **details)
        card.normalisation = {"mean": list(mean), "std": list(std)}
        return TorchClassifier(best[1].float(), card), picked, details

    def _solve(
        self, x: np.ndarray, target: np.ndarray, mean: list[float], std: list[float], seed: int
    ) -> tuple[nn.Module, float]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = nn.Sequential(
                Standardize(mean, std, x.shape[1:]),
                mlp1(x.shape[1:], target.shape[1], self.hidden),
            ).double()
        inputs = torch.from_numpy(x.astype(np.float64))
        goal = torch.from_numpy(target)
        optimiser = torch.optim.LBFGS(
            net.parameters(),
            lr=1.0,
            max_iter=self.iterations,
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            out = net(inputs)
            loss = ((out - out.mean(dim=1, keepdim=True) - goal) ** 2).mean()
            loss.backward()
            return loss

        optimiser.step(closure)
        with torch.no_grad():
            out = net(inputs)
            loss = float(((out - out.mean(dim=1, keepdim=True) - goal) ** 2).mean())
        return net, loss
