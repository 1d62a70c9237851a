"""Conferrable adversarial examples (Lukas, Zhang and Kerschbaum, "Deep Neural Network
Fingerprinting by Conferrable Adversarial Examples", ICLR '21).

A fingerprint is a set of adversarial examples of the owner's model that transfer to its
surrogates (models derived from it, e.g. by extraction) but not to independently trained
reference models. Generation (§4, :func:`generate_fingerprint`) optimises a perturbation of
each source image within an L-infinity ball against an ensemble of surrogates S and references
R. The *conferrability* of x' for class t is

    C_t(x') = mean_S S(x')_t * (1 - mean_R R(x')_t)

and the loss, with H the cross-entropy and M the owner's model, is

    alpha * H(1, max_t C_t(x'))  -  beta * H(M(x0), M(x'))  +  gamma * H(M(x'), mean_S S(x'))

(conferrable; an adversarial example of M; surrogates agree with M on it). Each step drops
ensemble members at random (the paper's dropout, 0.3), so that no single member is overfitted.
Examples whose conferrability under the full ensemble reaches ``threshold`` (0.85 in the paper)
are kept; the fingerprint is their inputs and the labels M gives them.

Verification (:class:`CAEScheme`): the suspect's *fingerprint retention*, the fraction of
fingerprints it labels as M does. The paper decides by a threshold on retention chosen on
reference models not used in generation. Deliberate deviation, for a p-value: the references'
retentions are the null sample. The unit of chance is the model, not the fingerprint (a model
that happens to agree more than the references do would agree on many fingerprints at once,
so a binomial test over fingerprints would accuse it). The test is a Student-t prediction test
on logit retention: t = (logit r_s - mean) / (sd * sqrt(1 + 1/k)) with k - 1 degrees of
freedom over k >= 3 references (sd never below the binomial sampling spread of a logit at the
references' mean retention, so that references that all retain nothing do not make it zero), exact if the references' logit retentions and an independent
suspect's are normal draws of one population (the assumption; the rank p-value, exact under
exchangeability alone but never below 1/(k + 1), is reported beside it). Without references
the scheme cannot decide, and says so.

The optimiser is Adam on the perturbation, projected after each step onto the ball and the
input domain. Deliberate deviations in the defaults, for 28x28 grey images: epsilon 0.2 (the
paper's 0.025 is for CIFAR-10's colour images; chosen among 0.1, 0.15 and 0.2 on validation
models of the Fashion-MNIST victim by benchmarks/cae_validation.py: at 0.1 almost no candidate
reaches the paper's threshold 0.85) and learning rate 0.01 over 200 steps (the paper's 5e-4
takes thousands). An example is kept when its conferrability *for the label the
owner's model gives it* reaches the threshold, so that surrogates share that label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from scipy.stats import t as student_t
from torch import nn

from modelheist.errors import ModelheistError
from modelheist.oracle import Oracle
from modelheist.ownership.base import (
    CannotVerify,
    Finding,
    ModelKind,
    OwnershipScheme,
    check_suspect_fits,
)
from modelheist.ownership.secret_folder import read_secret, write_secret

FINGERPRINT_FORMAT = "modelheist-cae-fingerprint/1"
FINGERPRINT_ARRAYS = "fingerprint.safetensors"
FINGERPRINT_CARD = "fingerprint.json"


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """The owner's fingerprint: adversarial inputs, the labels the owner's model gives them,
    their conferrability scores under the generation ensemble, and how they were made."""

    inputs: np.ndarray
    labels: np.ndarray
    conferrability: np.ndarray
    num_classes: int
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels) or len(self.labels) == 0:
            raise ModelheistError("a fingerprint needs as many labels as inputs, and some")

    def __len__(self) -> int:
        return len(self.labels)

    def save(self, folder: str | Path) -> Path:
        arrays = {
            "inputs": self.inputs,
            "labels": self.labels,
            "conferrability": self.conferrability,
        }
        card = {
            "format": FINGERPRINT_FORMAT,
            "num_classes": self.num_classes,
            "params": self.params,
        }
        return write_secret(folder, FINGERPRINT_ARRAYS, arrays, FINGERPRINT_CARD, card)

    @classmethod
    def load(cls, folder: str | Path) -> Fingerprint:
        card, arrays = read_secret(
            folder, FINGERPRINT_ARRAYS, FINGERPRINT_CARD, FINGERPRINT_FORMAT, "fingerprint"
        )
        try:
            return cls(
                arrays["inputs"].astype(np.float32),
                arrays["labels"].astype(np.int64),
                arrays["conferrability"].astype(np.float64),
                int(card["num_classes"]),
                dict(card.get("params", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelheistError(f"{folder} holds an incomplete fingerprint: {exc}") from None


@dataclass(frozen=True)
class CAEGeneration:
    """Hyper-parameters of :func:`generate_fingerprint`: the L-infinity bound ``epsilon``,
    ``steps`` Adam steps of ``lr``, the loss weights ``alpha``, ``beta``, ``gamma``, the
    members' ``dropout``, the conferrability ``threshold`` an example must reach, how many
    examples to keep (``size``) and how many candidates are optimised together
    (``batch_size``). ``min_size`` makes the fingerprint's size less a matter of chance (a
    deviation from the paper, whose rule is ``min_size=0``): when fewer examples reach the
    threshold, the most conferrable adversarial examples below it fill the fingerprint up to
    ``min_size`` (at most ``size``). The default 50 was chosen on validation models
    (benchmarks/cae_validation.py) and beats the paper's rule on the evaluation models of all
    three seeds of benchmarks/cae.py (docs/benchmarks.md)."""

    epsilon: float = 0.2
    steps: int = 200
    lr: float = 0.01
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    dropout: float = 0.3
    threshold: float = 0.85
    size: int = 100
    batch_size: int = 100
    seed: int = 0
    min_size: int = 50

    def __post_init__(self) -> None:
        if not 0.0 < self.epsilon < 1.0 or self.steps < 1 or self.lr <= 0 or self.size < 1:
            raise ModelheistError("CAE needs epsilon in (0, 1), steps and size >= 1, lr > 0")
        if self.batch_size < 1:
            raise ModelheistError("CAE needs a batch size >= 1")
        if self.min_size < 0:
            raise ModelheistError(f"CAE's min_size must be at least 0, got {self.min_size}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 < self.threshold < 1.0:
            raise ModelheistError("CAE needs dropout in [0, 1) and a threshold in (0, 1)")


def _mean_softmax(
    members: Sequence[nn.Module], x: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    kept = [member for member, on in zip(members, keep.tolist(), strict=True) if on]
    return torch.stack([torch.softmax(member(x), dim=1) for member in kept]).mean(dim=0)


def _keep(count: int, dropout: float, generator: torch.Generator) -> torch.Tensor:
    """Which ensemble members take part in a step (at least one)."""
    keep = torch.rand(count, generator=generator) >= dropout
    if not keep.any():
        keep[torch.randint(count, (1,), generator=generator)] = True
    return keep


def conferrability(
    surrogates: Sequence[nn.Module],
    references: Sequence[nn.Module],
    x: np.ndarray,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """Each input's conferrability under the whole ensemble (no dropout): for ``labels`` where
    given, else for its most conferrable class."""
    for member in (*surrogates, *references):
        member.eval()
    with torch.inference_mode():
        xs = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        every_s = torch.ones(len(surrogates), dtype=torch.bool)
        every_r = torch.ones(len(references), dtype=torch.bool)
        scores = _mean_softmax(surrogates, xs, every_s) * (
            1 - _mean_softmax(references, xs, every_r)
        )
    if labels is None:
        return scores.max(dim=1).values.double().numpy()
    return scores[torch.arange(len(xs)), torch.from_numpy(labels)].double().numpy()


def _optimise(
    source: nn.Module,
    surrogates: Sequence[nn.Module],
    references: Sequence[nn.Module],
    start: torch.Tensor,
    settings: CAEGeneration,
    bounds: tuple[float, float],
    generator: torch.Generator,
    advance: Callable[[], None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of candidates through ``settings.steps`` Adam steps of the CAE loss (module
    docstring); the perturbed batch and the owner's original probabilities on it."""
    low, high = bounds
    with torch.no_grad():
        original = torch.softmax(source(start), dim=1)
    delta = (torch.rand(start.shape, generator=generator) * 2 - 1) * settings.epsilon * 0.1
    delta.requires_grad_(True)
    optimiser = torch.optim.Adam([delta], lr=settings.lr)
    for _ in range(settings.steps):
        x = start + delta
        s_mean = _mean_softmax(surrogates, x, _keep(len(surrogates), settings.dropout, generator))
        r_mean = _mean_softmax(references, x, _keep(len(references), settings.dropout, generator))
        confer = (s_mean * (1 - r_mean)).max(dim=1).values
        log_source = F.log_softmax(source(x), dim=1)
        loss = (
            settings.alpha * -torch.log(confer.clamp_min(1e-12))
            - settings.beta * -(original * log_source).sum(dim=1)
            + settings.gamma * -(log_source.exp() * torch.log(s_mean.clamp_min(1e-12))).sum(1)
        ).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            delta.clamp_(-settings.epsilon, settings.epsilon)
            delta.copy_((start + delta).clamp(low, high) - start)
        advance()
    return (start + delta).detach(), original


def select_conferrable(
    scores: np.ndarray,
    threshold: float,
    size: int,
    min_size: int = 0,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the ``size`` most conferrable ``eligible`` examples at or above
    ``threshold``, most conferrable first; when fewer than ``min_size`` reach it, the most
    conferrable eligible ones below it fill up to ``min_size`` (CAEGeneration.min_size).
    Empty when none qualifies."""
    eligible = np.ones(len(scores), bool) if eligible is None else eligible
    passing = np.flatnonzero((scores >= threshold) & eligible)
    if len(passing) < min_size:
        below = np.flatnonzero((scores < threshold) & eligible)
        fill = below[np.argsort(-scores[below], kind="stable")[: min_size - len(passing)]]
        passing = np.concatenate([passing, fill])
    return passing[np.argsort(-scores[passing], kind="stable")[:size]]


def generate_fingerprint(
    source: nn.Module,
    surrogates: Sequence[nn.Module],
    references: Sequence[nn.Module],
    x0: np.ndarray,
    settings: CAEGeneration,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    progress: Progress | None = None,
) -> Fingerprint:
    """Optimise conferrable adversarial examples from the candidates ``x0`` and keep the
    ``settings.size`` most conferrable of those that change the owner's label, at or above the
    threshold, filled up to ``settings.min_size`` (:func:`select_conferrable`). Candidates are
    optimised ``settings.batch_size`` at a time (each example's loss is its own, so batches
    are independent; small batches run about three times faster on a CPU than one large)."""
    if not surrogates or not references:
        raise ModelheistError("CAE needs at least one surrogate and one reference model")
    if len(x0) == 0:
        raise ModelheistError("CAE needs candidate images to start from")
    low, high = bounds or (-np.inf, np.inf)
    generator = torch.Generator().manual_seed(settings.seed)
    for member in (source, *surrogates, *references):
        member.eval()
        for parameter in member.parameters():
            parameter.requires_grad_(False)
    batches = range(0, len(x0), settings.batch_size)
    total = settings.steps * len(batches)
    task = progress.add_task("conferrable examples", total=total) if progress else None

    def advance() -> None:
        if task is not None:
            progress.advance(task)

    perturbed, originals = [], []
    try:
        for first in batches:
            start = torch.from_numpy(
                np.ascontiguousarray(x0[first : first + settings.batch_size], np.float32)
            )
            x, original = _optimise(
                source, surrogates, references, start, settings, (low, high), generator, advance
            )
            perturbed.append(x)
            originals.append(original)
    finally:
        for member in (source, *surrogates, *references):
            for parameter in member.parameters():
                parameter.requires_grad_(True)
        if task is not None:
            progress.remove_task(task)
    original = torch.cat(originals)
    candidates = torch.cat(perturbed).numpy()
    with torch.inference_mode():
        labels = source(torch.from_numpy(candidates)).argmax(1).numpy()
    scores = conferrability(surrogates, references, candidates, labels)
    changed = labels != original.argmax(1).numpy()  # adversarial for the owner's model
    kept = select_conferrable(scores, settings.threshold, settings.size, settings.min_size, changed)
    if len(kept) == 0:
        best = scores[changed].max() if changed.any() else None
        raise ModelheistError(
            f"no candidate reached conferrability {settings.threshold} as an adversarial "
            f"example of the owner's model ("
            + ("none changed its label" if best is None else f"best {best:.3f}")
            + "); try more candidates, steps or a larger epsilon"
        )
    return Fingerprint(
        candidates[kept].astype(np.float32),
        labels[kept].astype(np.int64),
        scores[kept],
        int(original.shape[1]),
        {
            "epsilon": settings.epsilon,
            "steps": settings.steps,
            "surrogates": len(surrogates),
            "references": len(references),
            "candidates": len(x0),
            "threshold": settings.threshold,
            "min_size": settings.min_size,
            "batch_size": settings.batch_size,
            "seed": settings.seed,
        },
    )


def retention(fingerprint: Fingerprint, suspect: Oracle) -> tuple[int, int]:
    """How many fingerprints ``suspect`` labels as the owner's model does, out of how many."""
    check_suspect_fits(
        suspect, fingerprint.inputs.shape[1:], fingerprint.num_classes, "the fingerprint's"
    )
    low, high = suspect.input_range or (-np.inf, np.inf)
    answer = suspect.query(np.clip(fingerprint.inputs, low, high))
    return int((answer.labels == fingerprint.labels).sum()), len(fingerprint)


def reference_retentions(fingerprint: Fingerprint, references: Sequence[Oracle]) -> list[float]:
    """The retention of each independent reference model (not used in generation): the null
    sample of :class:`CAEScheme`."""
    values = []
    for index, reference in enumerate(references):
        try:
            matches, total = retention(fingerprint, reference)
        except CannotVerify as exc:
            raise ModelheistError(f"reference model {index + 1}: {exc}") from None
        values.append(matches / total)
    return values


def _logit(retained: float, total: int) -> float:
    """The logit of a retention, with the half-count correction (finite at 0 and 1)."""
    matches = retained * total
    return math.log((matches + 0.5) / (total - matches + 0.5))


@dataclass
class CAEScheme(OwnershipScheme):
    """Test a suspect's fingerprint retention against ``references``, the retentions of
    independent reference models not used in generation (:func:`reference_retentions`; at
    least 3), by a Student-t prediction test on logit retention (module docstring)."""

    name: ClassVar[str] = "cae"
    applies_to: ClassVar[frozenset[ModelKind]] = frozenset({"image"})  # it marks images

    fingerprint: Fingerprint
    references: tuple[float, ...] = ()

    def _test(self, suspect: Oracle, progress: Progress | None) -> Finding:
        k = len(self.references)
        if k < 3:
            raise CannotVerify(
                "CAE needs the retention of at least 3 independent reference models "
                f"(--reference DIR, models not used in generation); got {k}"
            )
        total = len(self.fingerprint)
        null = np.array([_logit(r, total) for r in self.references])
        mean_matches = float(np.mean(self.references)) * total
        sampling = math.sqrt(1 / (mean_matches + 0.5) + 1 / (total - mean_matches + 0.5))
        spread = max(float(null.std(ddof=1)), sampling)  # never below the binomial noise
        matches, _ = retention(self.fingerprint, suspect)
        observed = _logit(matches / total, total)
        t = (observed - float(null.mean())) / (spread * math.sqrt(1 + 1 / k))
        rank = (1 + int((null >= observed).sum())) / (k + 1)
        return Finding(
            "fingerprint retention",
            matches / total,
            float(student_t.sf(t, k - 1)),
            {
                "matches": matches,
                "fingerprints": total,
                "references": k,
                "reference_retention_mean": float(np.mean(self.references)),
                "reference_retention_max": float(np.max(self.references)),
                "t": t,
                "rank_p_value": rank,
            },
        )
