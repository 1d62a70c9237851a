"""Radioactive data (Sablayrolles, Douze, Schmid and Jégou, "Radioactive data: tracing through
training", ICML '20).

Marking (§3, :class:`RadioactiveMarking`): the owner draws one random unit direction, a
*carrier*, per class in the feature space of a marking network of its own, and nudges a
fraction ``q`` of its training images, within an L-infinity distortion bound, so that their
features move along their class's carrier. The loss of the reference implementation, per image
x with original x0, features f = phi(aug(x)), f0 = phi(aug(x0)) under the same random
augmentation, and carrier u:

    -(f - f0) . u  +  lambda_ft * ||f - f0||  +  lambda_img * ||x - x0||^2

A network trained on the marked data learns classifier rows aligned with the carriers.
:class:`RadioactiveData` is the training protection that puts the marked images in place of
their originals.

Detection, white-box (§4, :meth:`RadioactiveScheme._white_box`): the suspect's feature space is
aligned to the marker's by a linear map fitted by least squares on unmarked images; each class's
classifier row, carried into the marker's space, is compared with its carrier by their cosine.
A model that never saw the marked data has rows independent of the carriers (which are drawn
at random, independently of everything else), so each cosine is that of a fixed vector with a
uniformly random unit vector in d dimensions: P(cos >= c) = 1/2 * I_{1-c^2}((d-1)/2, 1/2) for
c >= 0, an exact null. The per-class p-values are independent and are combined with Fisher's
method (chi-square with 2C degrees of freedom), in log space (asymptotic tails where SciPy's
would underflow). The alignment is fitted on unmarked images of the owner's training set (the
reference implementation uses held-out images; either is unmarked, which is what matters).

Detection, black-box (§5.5; the loss difference is the metric in Szyller & Asokan's conflict
table, arXiv 2207.01991): the suspect's cross-entropy on a marked image's original minus its
cross-entropy on the marked image, averaged over published marked images. Deliberate deviation
from the paper, which reports the difference without a test: to turn it into a p-value, the
owner withholds a random part of its marked images from training (*controls*). The published
and the control images are a random partition of one marked set, so for any model trained on
neither, their loss differences are exchangeable, and a one-sided Mann-Whitney test of
published > control is valid whatever the suspect. It detects a model trained on the published
images themselves (the data's provenance, what radioactive data is for), not a model distilled
from one.

Deliberate deviations: the marking network is a network the owner trains on its own data (the
paper uses an ImageNet-pretrained ResNet-18; nothing pretrained is available offline); the
augmentation is the project's random shift (the paper: random resized crops and flips); the
optimiser is Adam on the perturbation with step ``lr`` (the reference: SGD with lr 1.0 in
normalised pixel space), projected after each step onto the distortion ball and the pixel range,
and the result is rounded to 8-bit levels inside the ball.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from rich.progress import Progress
from scipy.special import betaln, gammaln
from scipy.stats import beta, chi2, mannwhitneyu
from torch import nn

from modelheist.errors import ModelheistError
from modelheist.models.anatomy import features, head_weights, split_head
from modelheist.models.classifier import TorchClassifier
from modelheist.models.store import load_model, save_model
from modelheist.models.training import TrainingProtection, TrainingRun, default_shift, random_shift
from modelheist.oracle import Oracle
from modelheist.ownership.base import (
    CannotVerify,
    Finding,
    ModelKind,
    OwnershipScheme,
    check_suspect_fits,
)
from modelheist.ownership.secret_folder import read_secret, write_secret

MARK_FORMAT = "modelheist-radioactive-mark/2"
MARK_ARRAYS = "mark.safetensors"
MARK_CARD = "mark.json"
MARKER_FOLDER = "marker"
_ARRAYS = (
    "carriers",
    "indices",
    "marked",
    "originals",
    "labels",
    "control_indices",
    "control_marked",
    "control_originals",
    "control_labels",
    "alignment",
)


@dataclass(frozen=True, eq=False)
class RadioactiveMark:
    """The owner's secret: the carriers, the marked images published for training (with their
    originals, labels and positions in the training set), the withheld control images, unmarked
    images for aligning feature spaces, and the marking network."""

    carriers: np.ndarray  # (C, d), unit rows, in the marker's feature space
    indices: np.ndarray
    marked: np.ndarray
    originals: np.ndarray
    labels: np.ndarray
    control_indices: np.ndarray
    control_marked: np.ndarray
    control_originals: np.ndarray
    control_labels: np.ndarray
    alignment: np.ndarray
    marker: TorchClassifier
    epsilon: float
    fraction: float
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.carriers)

    @property
    def digest(self) -> str:
        """SHA-256 of every array of the mark and of the marking network's weights (what the
        owner's model card records): neither the controls nor the alignment images nor the
        marker can be swapped after the fact."""
        h = hashlib.sha256()
        for name in _ARRAYS:
            value = np.ascontiguousarray(getattr(self, name))
            h.update(f"{name}:{value.dtype}:{value.shape}".encode())
            h.update(value.tobytes())
        for name, tensor in sorted(self.marker.module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def psnr(self) -> float:
        """Mean peak signal-to-noise ratio (dB, peak 1) of the published marked images."""
        err = ((self.marked - self.originals) ** 2).reshape(len(self.marked), -1).mean(axis=1)
        return float(np.mean(10 * np.log10(1.0 / np.maximum(err, 1e-12))))

    def save(self, folder: str | Path) -> Path:
        """Write the mark to a new folder (safetensors + JSON + the marker's model folder)."""
        card = {
            "format": MARK_FORMAT,
            "epsilon": self.epsilon,
            "fraction": self.fraction,
            "seed": self.seed,
            "params": self.params,
            "sha256": self.digest,
        }
        arrays = {k: getattr(self, k) for k in _ARRAYS}
        folder = write_secret(folder, MARK_ARRAYS, arrays, MARK_CARD, card)
        save_model(self.marker, folder / MARKER_FOLDER)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> RadioactiveMark:
        """Read a mark written by :meth:`save`; a damaged or altered one is refused."""
        folder = Path(folder)
        card, arrays = read_secret(folder, MARK_ARRAYS, MARK_CARD, MARK_FORMAT, "radioactive-mark")
        marker = load_model(folder / MARKER_FOLDER)
        if not isinstance(marker, TorchClassifier):
            raise ModelheistError(f"{folder / MARKER_FOLDER} is not a network")
        try:
            mark = cls(
                **{k: arrays[k] for k in _ARRAYS},
                marker=marker,
                epsilon=float(card["epsilon"]),
                fraction=float(card["fraction"]),
                seed=int(card["seed"]),
                params=dict(card.get("params", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelheistError(f"{folder} holds an incomplete radioactive mark: {exc}") from None
        mark.check()
        if mark.digest != card.get("sha256"):
            raise ModelheistError(f"{folder}: the mark does not match its recorded digest")
        return mark

    def check(self) -> None:
        """A one-line error unless the arrays fit together and the marker."""
        width = split_head(self.marker.module)[1].in_features
        shape = self.marked.shape[1:]
        problems = [
            self.carriers.ndim != 2 or self.carriers.shape[1] != width,
            self.carriers.shape[0] != self.marker.card.num_classes,
            not len(self.indices) == len(self.marked) == len(self.originals) == len(self.labels),
            not len(self.control_indices)
            == len(self.control_marked)
            == len(self.control_originals)
            == len(self.control_labels),
            any(
                a.shape[1:] != shape
                for a in (self.originals, self.control_marked, self.control_originals)
            ),
            self.alignment.ndim != len(shape) + 1 or self.alignment.shape[1:] != shape,
            len(self.control_labels) < 2 or len(self.labels) < 1 or len(self.alignment) < 2,
        ]
        if any(problems):
            raise ModelheistError("the radioactive mark's arrays do not fit together")


@dataclass(frozen=True)
class RadioactiveMarking:
    """How to mark: the fraction ``fraction`` (q) of the training set to mark, the L-infinity
    bound ``epsilon`` (the paper's 10/255), ``steps`` optimisation steps (the reference's 90
    epochs over the images), Adam's step ``lr``, the loss weights ``feature_weight``
    (lambda_ft, 0.01) and ``image_weight`` (lambda_img, 0.0005), ``control`` marked images
    withheld from training for the black-box test, ``alignment`` unmarked images kept for
    aligning feature spaces (None: 2,000, or what the training set leaves), and ``seed`` (None: a fresh secret one) for the carriers and the
    choice of images."""

    fraction: float = 0.1
    epsilon: float = 10 / 255
    steps: int = 90
    lr: float = 0.005
    feature_weight: float = 0.01
    image_weight: float = 0.0005
    control: int = 500
    alignment: int | None = None
    batch_size: int = 500
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ModelheistError(f"the marked fraction must lie in (0, 1], got {self.fraction}")
        if not 0.0 < self.epsilon < 1.0:
            raise ModelheistError(
                f"the distortion bound epsilon must lie in (0, 1) (pixels in [0, 1]), got "
                f"{self.epsilon}"
            )
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ModelheistError("steps and batch size must be >= 1 and lr > 0")
        if self.control < 2 or (self.alignment is not None and self.alignment < 2):
            raise ModelheistError("control and alignment need at least 2 images each")
        if self.feature_weight < 0 or self.image_weight < 0:
            raise ModelheistError("the loss weights must be >= 0")

    def make(
        self,
        marker: TorchClassifier,
        x: np.ndarray,
        y: np.ndarray,
        progress: Progress | None = None,
    ) -> RadioactiveMark:
        """Mark ``fraction`` of the training set ``(x, y)`` with ``marker``'s feature space."""
        if x.ndim != 4:
            raise ModelheistError(f"radioactive data marks images (N, C, H, W), got {x.shape}")
        if not isinstance(marker, TorchClassifier):
            raise ModelheistError("the marking network must be a network (cnn or mlp)")
        split_head(marker.module)  # a clear error for a network without one linear head
        seed = secrets.randbits(63) if self.seed is None else self.seed
        rng = np.random.default_rng(seed)
        n, classes = len(x), marker.card.num_classes
        count = max(1, int(round(self.fraction * n)))
        kept = min(2000, n - count - self.control) if self.alignment is None else self.alignment
        if count + self.control + max(kept, 2) > n:
            raise ModelheistError(
                f"marking {count} images, withholding {self.control} controls and keeping "
                f"{max(kept, 2)} unmarked for alignment needs more than the {n} training images"
            )
        order = rng.permutation(n)
        chosen = np.sort(order[:count])
        control = np.sort(order[count : count + self.control])
        aligned = np.sort(order[count + self.control : count + self.control + kept])
        width = split_head(marker.module)[1].in_features
        carriers = rng.standard_normal((classes, width))
        carriers /= np.linalg.norm(carriers, axis=1, keepdims=True)
        both = np.concatenate([chosen, control])
        marked = self._mark(marker.module, x[both], y[both], carriers, seed, progress)
        return RadioactiveMark(
            carriers=carriers,
            indices=chosen.astype(np.int64),
            marked=marked[:count],
            originals=x[chosen].astype(np.float32),
            labels=y[chosen].astype(np.int64),
            control_indices=control.astype(np.int64),
            control_marked=marked[count:],
            control_originals=x[control].astype(np.float32),
            control_labels=y[control].astype(np.int64),
            alignment=x[aligned].astype(np.float32),
            marker=marker,
            epsilon=self.epsilon,
            fraction=self.fraction,
            seed=seed,
            params={
                "steps": self.steps,
                "lr": self.lr,
                "feature_weight": self.feature_weight,
                "image_weight": self.image_weight,
            },
        )

    def _mark(
        self,
        module: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        carriers: np.ndarray,
        seed: int,
        progress: Progress | None,
    ) -> np.ndarray:
        """The marked copies of ``x`` (see the module docstring for the loss)."""
        extractor, _ = split_head(module)
        module.eval()
        shift = default_shift(tuple(x.shape[1:]))
        generator = torch.Generator().manual_seed(seed % 2**63)
        directions = torch.from_numpy(carriers.astype(np.float32))
        out = np.empty_like(x, dtype=np.float32)
        task = (
            progress.add_task("radioactive marking", total=len(x)) if progress is not None else None
        )
        for i in range(0, len(x), self.batch_size):
            x0 = torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch_size], np.float32))
            u = directions[torch.from_numpy(y[i : i + self.batch_size].astype(np.int64))]
            delta = torch.zeros_like(x0, requires_grad=True)
            optimiser = torch.optim.Adam([delta], lr=self.lr)
            for _ in range(self.steps):
                state = generator.get_state()
                with torch.no_grad():
                    f0 = extractor(random_shift(x0, shift, generator)).flatten(1)
                generator.set_state(state)  # the same shifts for the marked copies
                f = extractor(random_shift(x0 + delta, shift, generator)).flatten(1)
                moved = f - f0
                loss = (
                    -(moved * u).sum()
                    + self.feature_weight * moved.norm(dim=1).sum()
                    + self.image_weight * (delta**2).sum()
                )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                with torch.no_grad():
                    delta.clamp_(-self.epsilon, self.epsilon)
                    delta.copy_((x0 + delta).clamp(0.0, 1.0) - x0)
            with torch.no_grad():
                levels = torch.round((x0 + delta) * 255) / 255
                inside = torch.minimum(torch.maximum(levels, x0 - self.epsilon), x0 + self.epsilon)
                out[i : i + len(x0)] = inside.clamp(0.0, 1.0).numpy()
            if task is not None:
                progress.advance(task, len(x0))
        if task is not None:
            progress.remove_task(task)
        return out


@dataclass
class RadioactiveData(TrainingProtection):
    """Train on the owner's data with the marked images in place of their originals and the
    control images left out (they must stay unseen for the black-box test)."""

    name: ClassVar[str] = "radioactive-data"

    mark: RadioactiveMark

    def replace_data(
        self, x: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        mark = self.mark
        positions = np.concatenate([mark.indices, mark.control_indices])
        if len(positions) and positions.max() >= len(x):
            raise ModelheistError(
                f"the radioactive mark was made for a training set of more than {len(x)} images"
            )
        if not np.array_equal(x[mark.indices], mark.originals) or not np.array_equal(
            x[mark.control_indices], mark.control_originals
        ):
            raise ModelheistError(
                "the training data is not the one the radioactive mark was made for"
            )
        marked = np.array(x, copy=True)
        marked[mark.indices] = mark.marked
        keep = np.ones(len(x), bool)
        keep[mark.control_indices] = False
        return marked[keep], targets[keep]

    def card_entry(self, run: TrainingRun) -> dict[str, Any]:
        return {
            "name": self.name,
            "fraction": self.mark.fraction,
            "epsilon": self.mark.epsilon,
            "marked": len(self.mark.indices),
            "withheld": len(self.mark.control_indices),
            "sha256": self.mark.digest,
        }

    def params(self) -> dict[str, Any]:
        return {"fraction": self.mark.fraction, "epsilon": self.mark.epsilon}


def cosine_log_sf(cosine: float, dimension: int) -> float:
    """log P(cos >= ``cosine``) for the cosine between a fixed vector and a uniformly random
    unit vector in ``dimension`` dimensions: 1/2 * I_{1-c^2}((d-1)/2, 1/2) for c >= 0. Where
    the tail underflows (SciPy's logsf is log(sf)), the leading term of the incomplete beta's
    series, I_x(a, b) ~ x^a (1-x)^b / (a B(a, b)) for small x, keeps it finite."""
    a, b = (dimension - 1) / 2, 0.5
    tail = float(beta.sf(cosine**2, b, a))  # P(cos^2 >= c^2) = I_{1-c^2}(a, b)
    if tail > 0:
        half = math.log(tail) + math.log(0.5)
    else:
        x = max(1.0 - cosine**2, 1e-300)
        half = a * math.log(x) + b * math.log1p(-x) - math.log(a) - betaln(a, b) + math.log(0.5)
    if cosine >= 0:
        return float(half)
    return float(math.log1p(-math.exp(half)))


def fisher_log_p(log_ps: np.ndarray) -> float:
    """Fisher's combination of independent p-values given as logs: log P(chi2_{2k} >= -2 sum).
    Where the tail underflows, the leading term of the upper incomplete gamma function,
    Gamma(s, y) ~ y^(s-1) e^(-y), keeps it finite."""
    statistic, dof = -2.0 * float(np.sum(log_ps)), 2 * len(log_ps)
    tail = float(chi2.sf(statistic, dof))
    if tail > 0:
        return math.log(tail)
    s, y = dof / 2, statistic / 2
    return float((s - 1) * math.log(y) - y - gammaln(s))


@dataclass
class RadioactiveScheme(OwnershipScheme):
    """Test whether a suspect was trained on the owner's radioactive data.

    ``mode``: ``white-box`` (the suspect's weights, :attr:`Oracle.network`; no query),
    ``black-box`` (its probabilities on marked and original images; ``images`` published
    images at most, each asked twice, plus the controls), or ``auto`` (white-box when the
    weights are at hand). ``commitment``: the mark's SHA-256 as the owner's model card
    recorded it; a mark that does not match it cannot verify anything.
    """

    name: ClassVar[str] = "radioactive"
    applies_to: ClassVar[frozenset[ModelKind]] = frozenset({"image"})  # it marks images

    mark: RadioactiveMark
    mode: Literal["auto", "white-box", "black-box"] = "auto"
    images: int = 1000
    commitment: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "white-box", "black-box"):
            raise ModelheistError(f"mode must be auto, white-box or black-box, got {self.mode!r}")
        if self.images < 1:
            raise ModelheistError(
                f"the black-box test needs >= 1 published image, got {self.images}"
            )

    def _test(self, suspect: Oracle, progress: Progress | None) -> Finding:
        mark = self.mark
        if self.commitment is not None and self.commitment != mark.digest:
            raise CannotVerify(
                "the radioactive mark is not the one the owner's model card records (its "
                "SHA-256 differs)"
            )
        check_suspect_fits(suspect, mark.marked.shape[1:], mark.num_classes, "the marked data's")
        white = self.mode == "white-box" or (self.mode == "auto" and suspect.network is not None)
        if white:
            if suspect.network is None:
                raise CannotVerify(
                    "the white-box test needs the suspect's weights (a model folder)"
                )
            finding = self._white_box(suspect.network)
        elif suspect.output_kind != "probabilities":
            raise CannotVerify(
                f"the black-box test needs probabilities; the suspect returns {suspect.output_kind}"
            )
        else:
            finding = self._black_box(suspect)
        finding.details["commitment_checked"] = self.commitment is not None
        return finding

    def _white_box(self, network: nn.Module) -> Finding:
        mark = self.mark
        try:
            rows = head_weights(network)
            suspect_features = features(network, mark.alignment).astype(np.float64)
        except (ModelheistError, RuntimeError) as exc:  # no linear head; other inputs
            raise CannotVerify(f"the white-box test cannot read the suspect: {exc}") from None
        marker_features = features(mark.marker.module, mark.alignment).astype(np.float64)
        design = np.hstack([marker_features, np.ones((len(marker_features), 1))])
        mapping = np.linalg.lstsq(design, suspect_features, rcond=None)[0][:-1]  # (d0, d)
        in_marker_space = rows @ mapping.T  # (C, d0)
        norms = np.linalg.norm(in_marker_space, axis=1)
        if np.any(norms == 0):
            raise CannotVerify("some class's classifier row vanishes in the marker's feature space")
        cosines = (in_marker_space * mark.carriers).sum(axis=1) / norms
        dimension = mark.carriers.shape[1]
        log_ps = np.array([cosine_log_sf(float(c), dimension) for c in cosines])
        log_p = fisher_log_p(log_ps)
        return Finding(
            "mean cosine",
            float(cosines.mean()),
            math.exp(log_p),
            {
                "mode": "white-box",
                "log10_p": log_p / math.log(10),
                "cosines": [round(float(c), 6) for c in cosines],
                "dimension": dimension,
                "alignment_images": len(mark.alignment),
            },
        )

    def _black_box(self, suspect: Oracle) -> Finding:
        mark = self.mark
        rng = np.random.default_rng([mark.seed, 1])  # a stream apart from the marking's
        take = np.sort(rng.permutation(len(mark.indices))[: self.images])
        published = self._loss_differences(
            suspect, mark.originals[take], mark.marked[take], mark.labels[take]
        )
        control = self._loss_differences(
            suspect, mark.control_originals, mark.control_marked, mark.control_labels
        )
        test = mannwhitneyu(published, control, alternative="greater")
        separated = mannwhitneyu(
            np.arange(len(published)) + len(control), np.arange(len(control)), alternative="greater"
        )
        return Finding(
            "loss difference",
            float(published.mean()),
            float(test.pvalue),
            {
                "mode": "black-box",
                "control_loss_difference": float(control.mean()),
                "published_images": len(published),
                "control_images": len(control),
                "mann_whitney_u": float(test.statistic),
            },
            smallest_p_value=float(separated.pvalue),
        )

    @staticmethod
    def _loss_differences(
        suspect: Oracle, originals: np.ndarray, marked: np.ndarray, labels: np.ndarray
    ) -> np.ndarray:
        """Per image: the suspect's cross-entropy on the original minus on the marked copy."""
        low, high = suspect.input_range or (-np.inf, np.inf)
        answer = suspect.query(np.clip(np.concatenate([originals, marked]), low, high))
        if answer.probabilities is None:
            raise CannotVerify("the suspect returned no probabilities")
        picked = answer.probabilities[np.arange(2 * len(labels)), np.tile(labels, 2)]
        loss = -np.log(np.clip(picked.astype(np.float64), 1e-12, 1.0))
        return loss[: len(labels)] - loss[len(labels) :]


def parse_marking(spec: str) -> RadioactiveMarking:
    """The marking a ``--mark`` spec names: ``radioactive[:fraction=Q,epsilon=E,steps=S,
    control=N,seed=S]`` (defaults: 10% marked, 10/255, 90 steps, 500 controls, a fresh
    secret seed)."""
    kind, _, args = spec.strip().partition(":")
    if kind != "radioactive":
        raise ModelheistError(f"unknown data mark {kind!r}; known: radioactive")
    casts: dict[str, type] = {
        "fraction": float,
        "epsilon": float,
        "steps": int,
        "control": int,
        "seed": int,
    }
    options: dict[str, Any] = {}
    for token in filter(None, (t.strip() for t in args.split(","))):
        key, eq, value = token.partition("=")
        if not eq or key not in casts:
            raise ModelheistError(
                f"radioactive: bad argument {token!r}; use {', '.join(f'{k}=...' for k in casts)}"
            )
        try:
            options[key] = casts[key](value)
        except ValueError:
            raise ModelheistError(f"radioactive: {key} must be a number, got {value!r}") from None
    return RadioactiveMarking(**options)


def recorded_mark(card_protections: list[dict[str, Any]]) -> str:
    """The radioactive mark's SHA-256 that an owner's model card recorded, or a one-line error."""
    for entry in reversed(card_protections):
        if entry.get("name") == RadioactiveData.name and "sha256" in entry:
            return str(entry["sha256"])
    raise ModelheistError("the owner's model card records no radioactive data")
