"""Dataset inference (Maini, Yaghini and Papernot, "Dataset Inference: Ownership Resolution in
Machine Learning", ICLR '21).

A model trained on the owner's private data, or derived from a model that was, sits farther
from its decision boundary on that data than on data it never saw. The owner measures that
distance with an embedding per sample, trains a regressor on its own model's embeddings that
scores private samples high and public ones low, and reveals ``m`` private and ``m`` public
samples to the judge; the judge embeds them through the suspect and tests whether the private
ones score higher (one-sided Welch t-test, §5).

Embedding, *Blind Walk* (§4.2, black-box: labels suffice; :class:`BlindWalk`): from each sample,
walk along a random direction in growing steps until the suspect's label changes; the distance
walked, in the norm the direction was drawn for, is one feature. The reference code draws 10
directions for each of three noise types (L-inf: uniform in +-0.005 per pixel; L2: Gaussian,
standard deviation 0.005; L1: Laplace, scale 0.01), up to 50 steps: 30 features. A walk that
never changes the label stops at the last step (its distance is censored there).

Embedding, *MinGD* (§4.1, white-box: the suspect's weights; :class:`MinGD`): for each class, the
size of the smallest perturbation steepest descent finds that makes the suspect predict it,
in each of the three norms; 3 x C features, sorted within each norm as the notebooks do.

The regressor (the reference notebooks): Linear(30, 100), ReLU, Linear(100, 1), tanh, trained
full-batch by SGD (learning rate 0.1, 1,000 epochs) on the loss -mean(s * out), s = +1 for a
private sample and -1 for a public one, on features standardised per noise type with the
owner's statistics.

As in the reference, a walked point is clipped into the model's input domain (an API refuses
anything outside it). The revealed samples are disjoint from those the regressor was trained on
(as in the notebooks, which train on the first 500 and test on the rest). Deliberate deviation,
for validity: the decision rests on one Welch test over the ``m`` revealed pairs, a calibrated
p-value under the null (for a suspect that saw neither the private nor the public samples,
they are exchangeable, provided the public samples are a random draw from the distribution the
private ones came from). The notebooks' aggregate, the harmonic mean of the p-values of 100
draws of ``m`` from the held-out samples, is not a p-value (it is smaller than a valid one); on
request (``draws``), it is reported beside the decision as ``paper_aggregate``, never decided
on, at the cost of embedding every revealed sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from rich.progress import Progress
from scipy.stats import hmean, ttest_ind
from torch import nn

from modelheist.errors import ModelheistError
from modelheist.oracle import Oracle
from modelheist.ownership.base import CannotVerify, Finding, OwnershipScheme, check_suspect_fits
from modelheist.ownership.secret_folder import read_secret, write_secret

SECRET_FORMAT = "modelheist-dataset-inference/1"
SECRET_ARRAYS = "dataset-inference.safetensors"
SECRET_CARD = "dataset-inference.json"
NOISE_TYPES = ("linf", "l2", "l1")


@dataclass(frozen=True)
class BlindWalk:
    """The Blind Walk embedding: ``directions`` random directions per noise type, at most
    ``steps`` steps each; ``scale`` multiplies the reference's noise scales (1: its CIFAR
    values, for images in [0, 1]); ``seed`` draws the directions."""

    directions: int = 10
    steps: int = 50
    scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.directions < 1 or self.steps < 1 or self.scale <= 0:
            raise ModelheistError("Blind Walk needs >= 1 direction and step and a scale > 0")

    kind: ClassVar[str] = "blind-walk"

    def per_type(self, num_classes: int) -> int:
        """Features per noise type."""
        return self.directions

    def params(self) -> dict[str, float | int]:
        return {
            "directions": self.directions,
            "steps": self.steps,
            "scale": self.scale,
            "seed": self.seed,
        }

    def _noise(self, kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        if kind == "linf":
            return rng.uniform(-0.005 * self.scale, 0.005 * self.scale, shape)
        if kind == "l2":
            return rng.normal(0.0, 0.005 * self.scale, shape)
        return rng.laplace(0.0, 0.01 * self.scale, shape)

    def embed(
        self,
        oracle: Oracle,
        x: np.ndarray,
        y: np.ndarray,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, float]:
        """Each sample's distances, (n, 3 * directions), ordered noise type by noise type,
        and the fraction of walks censored at the last step."""
        if len(x) == 0:
            return np.zeros((0, len(NOISE_TYPES) * self.directions)), 0.0
        rng = np.random.default_rng(self.seed)
        low, high = oracle.input_range or (-np.inf, np.inf)
        columns, censored = [], 0
        task = (
            progress.add_task("blind walk", total=len(NOISE_TYPES) * self.directions)
            if progress is not None
            else None
        )
        for kind in NOISE_TYPES:
            order = {"linf": np.inf, "l2": 2, "l1": 1}[kind]
            # a noise type's walks go together, one request per step for all of them: far
            # fewer round trips than a walk at a time, the same queries in another order (a
            # stateless API's answers are unchanged)
            steps = np.empty((self.directions * len(x), *x.shape[1:]), dtype=np.float32)
            for direction in range(self.directions):
                rows = slice(direction * len(x), (direction + 1) * len(x))
                steps[rows] = self._noise(kind, x.shape, rng)
            distance, open_walks = self._walk(
                oracle,
                np.concatenate([x] * self.directions),
                np.concatenate([y] * self.directions),
                steps,
                low,
                high,
                order,
            )
            columns.extend(distance.reshape(self.directions, len(x)))
            censored += open_walks
            if task is not None:
                progress.advance(task, self.directions)
        if task is not None:
            progress.remove_task(task)
        return np.stack(columns, axis=1), censored / (len(x) * len(columns))

    def _walk(
        self,
        oracle: Oracle,
        x: np.ndarray,
        y: np.ndarray,
        step: np.ndarray,
        low: float,
        high: float,
        order: float,
    ) -> tuple[np.ndarray, int]:
        """The distance walked from each row of ``x`` along ``step`` until its label is no
        longer ``y``, and how many walks never got there."""
        distance = np.zeros(len(x))
        walking = np.arange(len(x))
        for k in range(1, self.steps + 1):
            moved = np.clip(x[walking] + k * step[walking], low, high)
            displacement = (moved - x[walking]).reshape(len(walking), -1)
            distance[walking] = np.linalg.norm(displacement, ord=order, axis=1)
            labels = oracle.query(moved).labels
            walking = walking[labels == y[walking]]
            if len(walking) == 0:
                break
        return distance, len(walking)


@dataclass(frozen=True)
class MinGD:
    """The MinGD embedding (§4.1, white-box: the suspect's weights): for each class t and each
    of the three norms, the size of the smallest perturbation that steepest descent on the
    margin (largest logit minus t's logit) finds to make the suspect predict t, at most
    ``iterations`` steps of ``step`` (L-inf: sign steps; L2: normalised gradient; L1: the
    ``top_k`` largest gradient coordinates, step / top_k each, among pixels not within ``gap``
    of the bound they are pushed toward), clipped to the input domain.
    The reference's steps: 0.001, 0.01 and 1.0 per norm, 500 iterations, k = 100. Each norm's
    C distances are sorted (the notebooks), so that features do not depend on which class is
    the true one (its distance is 0)."""

    iterations: int = 500
    step_linf: float = 0.001
    step_l2: float = 0.01
    step_l1: float = 1.0
    top_k: int = 100
    gap: float = 0.001
    kind: ClassVar[str] = "mingd"

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.top_k < 1:
            raise ModelheistError("MinGD needs >= 1 iteration and top_k >= 1")
        if min(self.step_linf, self.step_l2, self.step_l1) <= 0:
            raise ModelheistError("MinGD's steps must be > 0")

    def per_type(self, num_classes: int) -> int:
        return num_classes

    def params(self) -> dict[str, float | int]:
        return {
            "iterations": self.iterations,
            "step_linf": self.step_linf,
            "step_l2": self.step_l2,
            "step_l1": self.step_l1,
            "top_k": self.top_k,
            "gap": self.gap,
        }

    def embed(
        self,
        oracle: Oracle,
        x: np.ndarray,
        y: np.ndarray,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, float]:
        """Each sample's sorted distances, (n, 3 * C), and the fraction of searches that never
        reached their class."""
        network = oracle.network
        if network is None:
            raise CannotVerify("MinGD needs the suspect's weights (a model folder)")
        classes = oracle.num_classes
        if len(x) == 0:
            return np.zeros((0, len(NOISE_TYPES) * classes)), 0.0
        low, high = oracle.input_range or (-np.inf, np.inf)
        was_training = network.training
        network.eval()
        groups, failed = [], 0
        task = (
            progress.add_task("MinGD", total=len(NOISE_TYPES) * classes)
            if progress is not None
            else None
        )
        try:
            for kind in NOISE_TYPES:
                columns = []
                for target in range(classes):
                    distance, open_searches = self._search(network, x, target, kind, low, high)
                    columns.append(distance)
                    failed += open_searches
                    if task is not None:
                        progress.advance(task)
                groups.append(np.sort(np.stack(columns, axis=1), axis=1))
        except RuntimeError as exc:  # weights made for other inputs
            raise CannotVerify(f"MinGD cannot run the suspect's network: {exc}") from None
        finally:
            network.train(was_training)
            if task is not None:
                progress.remove_task(task)
        return np.concatenate(groups, axis=1), failed / (len(x) * 3 * classes)

    def _search(
        self, network: nn.Module, x: np.ndarray, target: int, kind: str, low: float, high: float
    ) -> tuple[np.ndarray, int]:
        xs = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        delta = torch.zeros_like(xs)
        flat = xs[0].numel()
        k = min(self.top_k, flat)
        searching = torch.arange(len(xs))
        for _ in range(self.iterations):
            with torch.no_grad():
                reached = network(xs[searching] + delta[searching]).argmax(1) == target
            searching = searching[~reached]
            if len(searching) == 0:
                break
            part = delta[searching].clone().requires_grad_(True)
            logits = network(xs[searching] + part)
            margin = (logits.max(1).values - logits[:, target]).sum()
            (grad,) = torch.autograd.grad(margin, part)
            grad = -grad  # descend the margin
            with torch.no_grad():
                if kind == "linf":
                    move = self.step_linf * grad.sign()
                elif kind == "l2":
                    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                    move = self.step_l2 * grad / norms.view(-1, *([1] * (grad.dim() - 1)))
                else:  # the reference's l1_dir_topk: saturated pixels cannot move further
                    here = (xs[searching] + part).flatten(1)
                    flat_grad = grad.flatten(1).clone()
                    stuck = ((flat_grad < 0) & (here <= low + self.gap)) | (
                        (flat_grad > 0) & (here >= high - self.gap)
                    )
                    flat_grad[stuck] = 0.0
                    threshold = flat_grad.abs().topk(k, dim=1).values[:, -1:]
                    chosen = (flat_grad.abs() >= threshold).float() * flat_grad.sign()
                    move = (self.step_l1 / k) * chosen.view_as(grad)
                moved = (xs[searching] + part + move).clamp(low, high)
                delta[searching] = moved - xs[searching]
        order = {"linf": np.inf, "l2": 2, "l1": 1}[kind]
        distance = np.linalg.norm(delta.flatten(1).numpy(), ord=order, axis=1)
        return distance, len(searching)


Embedding = BlindWalk | MinGD
EMBEDDINGS: dict[str, type[BlindWalk] | type[MinGD]] = {"blind-walk": BlindWalk, "mingd": MinGD}


def regressor_network(width: int) -> nn.Sequential:
    """The notebooks' regressor: Linear(width, 100), ReLU, Linear(100, 1), tanh."""
    return nn.Sequential(nn.Linear(width, 100), nn.ReLU(), nn.Linear(100, 1), nn.Tanh())


@dataclass(frozen=True, eq=False)
class DatasetInferenceSecret:
    """What the owner prepares and reveals: the regressor (weights and the feature statistics
    it expects), the embedding it was trained on, and the ``m`` private and public samples
    revealed to the judge (with their labels)."""

    weights: dict[str, np.ndarray]
    feature_mean: np.ndarray  # one per noise type
    feature_std: np.ndarray
    embedding: Embedding
    private_x: np.ndarray
    private_y: np.ndarray
    public_x: np.ndarray
    public_y: np.ndarray
    num_classes: int

    @classmethod
    def prepare(
        cls,
        owner: Oracle,
        private: tuple[np.ndarray, np.ndarray],
        public: tuple[np.ndarray, np.ndarray],
        revealed: int,
        embedding: Embedding | None = None,
        regressor_samples: int = 500,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> DatasetInferenceSecret:
        """Train the regressor on the owner's model (``owner``; with its weights for MinGD)
        with ``regressor_samples`` private and as many public samples, and keep ``revealed``
        others of each for the judge. ``private``: (inputs, labels) the owner trained on;
        ``public``: from the same distribution, never trained on. The embedding defaults to
        Blind Walk."""
        embedding = embedding or BlindWalk(seed=seed)
        need = regressor_samples + revealed
        if revealed < 2 or regressor_samples < 2:
            raise ModelheistError(
                "dataset inference needs at least 2 revealed and 2 training samples"
            )
        if len(private[0]) < need or len(public[0]) < need:
            raise ModelheistError(
                f"dataset inference needs {need} private and {need} public samples; got "
                f"{len(private[0])} and {len(public[0])}"
            )
        rng = np.random.default_rng(seed)
        p_pick = rng.permutation(len(private[0]))[:need]
        q_pick = rng.permutation(len(public[0]))[:need]
        train_p, show_p = p_pick[:regressor_samples], p_pick[regressor_samples:]
        train_q, show_q = q_pick[:regressor_samples], q_pick[regressor_samples:]
        x = np.concatenate([private[0][train_p], public[0][train_q]])
        y = np.concatenate([private[1][train_p], public[1][train_q]])
        try:
            embedded, _ = embedding.embed(owner, x, y, progress)
        except CannotVerify as exc:
            raise ModelheistError(str(exc)) from None
        mean, std = noise_type_statistics(embedded)
        signs = np.concatenate([np.ones(regressor_samples), -np.ones(regressor_samples)])
        weights = train_regressor(standardised(embedded, mean, std), signs, seed)
        return cls(
            weights=weights,
            feature_mean=mean,
            feature_std=std,
            embedding=embedding,
            private_x=private[0][show_p].astype(np.float32),
            private_y=private[1][show_p].astype(np.int64),
            public_x=public[0][show_q].astype(np.float32),
            public_y=public[1][show_q].astype(np.int64),
            num_classes=owner.num_classes,
        )

    def score(self, embedded: np.ndarray) -> np.ndarray:
        """The regressor's score of each embedding row (higher: more like the owner's private
        data as its own model sees it)."""
        return score_rows(self.weights, standardised(embedded, self.feature_mean, self.feature_std))

    def save(self, folder: str | Path) -> Path:
        """Write the secret to a new folder (safetensors + JSON)."""
        arrays = {
            **{f"regressor.{k}": np.ascontiguousarray(v) for k, v in self.weights.items()},
            "feature_mean": self.feature_mean,
            "feature_std": self.feature_std,
            "private_x": self.private_x,
            "private_y": self.private_y,
            "public_x": self.public_x,
            "public_y": self.public_y,
        }
        card = {
            "format": SECRET_FORMAT,
            "num_classes": self.num_classes,
            "embedding": {"kind": self.embedding.kind, **self.embedding.params()},
        }
        return write_secret(folder, SECRET_ARRAYS, arrays, SECRET_CARD, card)

    @classmethod
    def load(cls, folder: str | Path) -> DatasetInferenceSecret:
        """Read a secret written by :meth:`save`; a damaged one is refused."""
        card, arrays = read_secret(
            folder, SECRET_ARRAYS, SECRET_CARD, SECRET_FORMAT, "dataset-inference"
        )
        try:
            secret = cls(
                weights={
                    k.removeprefix("regressor."): v
                    for k, v in arrays.items()
                    if k.startswith("regressor.")
                },
                feature_mean=arrays["feature_mean"],
                feature_std=arrays["feature_std"],
                embedding=_embedding(card["embedding"]),
                private_x=arrays["private_x"],
                private_y=arrays["private_y"],
                public_x=arrays["public_x"],
                public_y=arrays["public_y"],
                num_classes=int(card["num_classes"]),
            )
            width = len(NOISE_TYPES) * secret.embedding.per_type(secret.num_classes)
            secret.score(np.zeros((1, width)))  # the weights fit the regressor
            if (
                len(secret.private_x) != len(secret.private_y)
                or len(secret.public_x) != len(secret.public_y)
                or secret.private_x.shape[1:] != secret.public_x.shape[1:]
                or secret.feature_mean.shape != (len(NOISE_TYPES),)
                or secret.feature_std.shape != (len(NOISE_TYPES),)
            ):
                raise ValueError("the revealed samples or feature statistics do not fit")
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelheistError(
                f"{folder} holds an incomplete dataset-inference secret: {exc}"
            ) from None
        return secret


def _embedding(card: dict) -> Embedding:
    """The embedding a secret's card names (a one-line error for an unknown kind)."""
    params = dict(card)
    kind = params.pop("kind", None)
    if kind not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {kind!r}")
    return EMBEDDINGS[kind](**params)


def noise_type_statistics(embedded: np.ndarray, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The mean and standard deviation of an (n, 3 k) embedding per noise type, over samples
    and directions (the statistics the regressor's features are standardised with)."""
    grouped = embedded.reshape(len(embedded), len(NOISE_TYPES), -1)
    return grouped.mean(axis=(0, 2)), np.maximum(grouped.std(axis=(0, 2), ddof=ddof), 1e-12)


def score_rows(weights: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The regressor with ``weights`` applied to standardised ``rows``: one score each."""
    net = regressor_network(rows.shape[1])
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    with torch.inference_mode():
        return net(torch.from_numpy(rows.astype(np.float32))).squeeze(1).double().numpy()


def standardised(embedded: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """An (n, 3 k) embedding standardised per noise type with ``mean`` and ``std``."""
    grouped = embedded.reshape(len(embedded), len(NOISE_TYPES), -1)
    return (
        ((grouped - mean[None, :, None]) / std[None, :, None])
        .reshape(len(embedded), -1)
        .astype(np.float32)
    )


def train_regressor(features: np.ndarray, signs: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The notebooks' regressor and loop: full-batch SGD, learning rate 0.1, 1,000 epochs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = regressor_network(features.shape[1])
        optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
        inputs = torch.from_numpy(features)
        target = torch.from_numpy(signs.astype(np.float32))
        for _ in range(1000):
            optimiser.zero_grad()
            loss = -(target * net(inputs).squeeze(1)).mean()
            loss.backward()
            optimiser.step()
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


@dataclass
class DatasetInferenceScheme(OwnershipScheme):
    """Test whether a suspect's distances to its decision boundary single out the owner's
    revealed private samples (see the module docstring). ``m`` revealed pairs at most are used
    (None: all); ``draws`` > 0 also reports the paper's aggregate over that many draws of
    ``m`` (every revealed sample is then embedded)."""

    name: ClassVar[str] = "dataset-inference"

    secret: DatasetInferenceSecret
    m: int | None = None
    draws: int = 0

    def __post_init__(self) -> None:
        if self.draws < 0:
            raise ModelheistError(f"draws must be >= 0, got {self.draws}")

    def _test(self, suspect: Oracle, progress: Progress | None) -> Finding:
        secret = self.secret
        check_suspect_fits(
            suspect, secret.private_x.shape[1:], secret.num_classes, "the revealed samples'"
        )
        available = min(len(secret.private_x), len(secret.public_x))
        m = available if self.m is None else self.m
        if m < 2 or m > available:
            raise CannotVerify(
                f"the test needs between 2 and {available} revealed samples of each kind, asked {m}"
            )
        aggregate = self.draws > 0 and available > m
        n = available if aggregate else m  # the aggregate draws from every revealed sample
        x = np.concatenate([secret.private_x[:n], secret.public_x[:n]])
        y = np.concatenate([secret.private_y[:n], secret.public_y[:n]])
        embedded, censored = secret.embedding.embed(suspect, x, y, progress)
        scores = secret.score(embedded)
        private, public = scores[:n], scores[n:]
        test = ttest_ind(private[:m], public[:m], equal_var=False, alternative="greater")
        details = {
            "m": m,
            "mean_private_score": float(private[:m].mean()),
            "mean_public_score": float(public[:m].mean()),
            "embedding": secret.embedding.kind,
            "censored": censored,
        }
        if aggregate:
            details["paper_aggregate"] = self._paper_aggregate(private, public, m)
        return Finding(
            "score difference",
            float(private[:m].mean() - public[:m].mean()),
            finite_p_value(test.pvalue),
            details,
        )

    def _paper_aggregate(self, private: np.ndarray, public: np.ndarray, m: int) -> float:
        """The notebooks' number: the harmonic mean of the Welch p-values of ``draws`` random
        draws of ``m`` pairs from every revealed sample (not a valid p-value; reported only)."""
        return harmonic_mean_of_draws(private, public, m, self.draws, np.random.default_rng(0))


def harmonic_mean_of_draws(
    private: np.ndarray, public: np.ndarray, m: int, draws: int, rng: np.random.Generator
) -> float:
    """The notebooks' aggregate (``get_p_values``, ``hmean``): the harmonic mean of the
    one-sided Welch p-values of ``draws`` draws of ``m`` positions, the same on both sides, of
    the scores ``private`` and ``public`` (not a valid p-value)."""
    p_values = []
    for _ in range(draws):
        pick = rng.permutation(len(private))[:m]
        result = ttest_ind(private[pick], public[pick], equal_var=False, alternative="greater")
        p_values.append(max(finite_p_value(result.pvalue), 1e-300))
    return float(hmean(p_values))


def finite_p_value(value: float) -> float:
    """A t-test's p-value; NaN (no spread in either sample) counts as no evidence."""
    return float(value) if math.isfinite(value) else 1.0
