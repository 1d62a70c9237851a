"""Backdoor watermarking (Adi et al., "Turning Your Weakness Into a Strength: Watermarking Deep
Neural Networks by Backdooring", USENIX Security '18).

The owner chooses a trigger set of out-of-distribution inputs with labels of its own choosing,
trains the model on them alongside its data (:class:`BackdoorWatermark`, a training
protection), and keeps the trigger set secret, apart from the model folder
(:meth:`TriggerSet.save`). To verify (:class:`BackdoorWatermarkScheme`) it queries a suspect
with the triggers and counts how many get their chosen label.

The test: each trigger's label is drawn uniformly at random from the C classes, independently
of everything else, so for any model trained without the trigger set the number of matches
among n triggers follows Binomial(n, 1/C), whatever the model predicts on those inputs. The
p-value is the upper tail of that law at the observed count (exact, :func:`scipy.stats.binomtest`).
Deliberate deviation from Adi et al., who draw labels among the wrong classes and compare the
trigger accuracy to a threshold: uniform labels give an exact null distribution for any
independent model, hence a p-value, at the cost of about n / C triggers that carry their
natural label.

Triggers come from uniform noise (``source="noise"``) or from another registered dataset
(``source="mnist5k"``), fitted to the model's input shape, drawn from fresh randomness unless a
seed is given (experiments): a set anyone could regenerate from a public seed would be no
secret, and two owners with the same defaults would share one watermark.

The binding between a trigger set and a model is, for now, the set's SHA-256 recorded on the
owner's model card when the watermark is embedded (``commitment``): verification refuses a set
that does not match it. Without a signed, timestamped commitment (issue 11) an accuser could
still fabricate a card with a set of its own; this module is the scheme's core.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from scipy.stats import binomtest

from modelheist.data.registry import Dataset, dataset_names, load_dataset
from modelheist.data.transforms import fit_to_shape
from modelheist.errors import ModelheistError
from modelheist.models.classifier import ModelCard
from modelheist.models.training import TrainingProtection, TrainingRun
from modelheist.oracle import Oracle
from modelheist.ownership.base import (
    CannotVerify,
    Finding,
    OwnershipScheme,
    check_suspect_fits,
)
from modelheist.ownership.secret_folder import read_secret, write_secret

TRIGGER_FORMAT = "modelheist-trigger-set/1"
TRIGGERS = "triggers.safetensors"
TRIGGER_CARD = "trigger-set.json"
#: A trigger source ``DATASET`` + this suffix keeps the images' own labels (Szyller & Asokan's
#: watermark: out-of-distribution images with their labels); plain ``DATASET`` draws labels.
#: Such a set is for measuring a watermark's accuracy (the conflicts table): a model that never
#: saw it may still label the images as their labels say, so verifying it needs reference
#: models for the chance level, and it never counts as derived from its seed.
OWN_LABELS = "+own-labels"


@dataclass(frozen=True)
class TriggerSet:
    """A watermark's secret: trigger inputs and the label chosen for each."""

    inputs: np.ndarray
    labels: np.ndarray
    num_classes: int
    source: str
    seed: int

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels) or len(self.labels) == 0:
            raise ModelheistError("a trigger set needs as many labels as inputs, and some")
        if self.labels.min() < 0 or self.labels.max() >= self.num_classes:
            raise ModelheistError(f"trigger labels must lie in [0, {self.num_classes})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def digest(self) -> str:
        """SHA-256 of the inputs and labels: what a model card records instead of the set."""
        h = hashlib.sha256(np.ascontiguousarray(self.inputs, np.float32).tobytes())
        h.update(np.ascontiguousarray(self.labels, np.int64).tobytes())
        return h.hexdigest()

    @classmethod
    def generate(
        cls,
        n: int,
        input_shape: tuple[int, ...],
        num_classes: int,
        source: str = "noise",
        seed: int | None = None,
    ) -> TriggerSet:
        """``n`` triggers of ``input_shape`` from ``source``, each with a label drawn uniformly
        from the ``num_classes`` classes; ``seed`` None draws a fresh 63-bit seed."""
        if n < 1 or num_classes < 2:
            raise ModelheistError("a trigger set needs at least 1 trigger and 2 classes")
        if seed is None:
            seed = secrets.randbits(63)
        rng = np.random.default_rng(seed)
        dataset, own = source.removesuffix(OWN_LABELS), source.endswith(OWN_LABELS)
        own_labels = None
        if source == "noise":
            inputs = rng.uniform(0.0, 1.0, size=(n, *input_shape)).astype(np.float32)
        elif dataset in dataset_names():
            images, image_labels = _trigger_images(dataset)
            if len(images) < n:
                raise ModelheistError(f"{dataset} has {len(images)} images; {n} triggers asked")
            chosen = rng.choice(len(images), n, replace=False)
            inputs = fit_to_shape(images[chosen], input_shape).astype(np.float32)
            own_labels = image_labels[chosen]
        else:
            raise ModelheistError(
                f"unknown trigger source {source!r}; use noise or a dataset: "
                f"{', '.join(dataset_names())} (DATASET{OWN_LABELS}: keeping their own labels)"
            )
        labels = rng.integers(0, num_classes, size=n).astype(np.int64)
        if own:
            if own_labels.max() >= num_classes:
                raise ModelheistError(
                    f"{dataset}'s own labels go beyond the owner's {num_classes} classes"
                )
            labels = own_labels.astype(np.int64)
        return cls(inputs, labels, num_classes, source, seed)

    def regenerates(self) -> bool:
        """Whether this set is exactly what :meth:`generate` makes from its recorded source and
        seed: then its inputs and labels were fixed by the seed, not optimised (a countermeasure
        to false claims, "verifiable trigger generation" in Liu et al., USENIX Security '24, once
        the seed is committed)."""
        if self.source != "noise" and self.source not in dataset_names():
            return False  # unknown, or own labels: fixed by the images, not drawn from the seed
        if not 0 <= self.seed < 2**63:
            return False  # no seed generate() would draw
        again = TriggerSet.generate(
            len(self), self.inputs.shape[1:], self.num_classes, self.source, self.seed
        )
        return again.digest == self.digest

    def save(self, folder: str | Path) -> Path:
        """Write the set to a new folder (safetensors + JSON); never into a model folder."""
        card = {
            "format": TRIGGER_FORMAT,
            "num_classes": self.num_classes,
            "source": self.source,
            "seed": self.seed,
            "sha256": self.digest,
        }
        arrays = {"inputs": self.inputs, "labels": self.labels}
        return write_secret(folder, TRIGGERS, arrays, TRIGGER_CARD, card)

    @classmethod
    def load(cls, folder: str | Path) -> TriggerSet:
        """Read a set written by :meth:`save`; a damaged or altered one is refused."""
        folder = Path(folder)
        card, arrays = read_secret(folder, TRIGGERS, TRIGGER_CARD, TRIGGER_FORMAT, "trigger-set")
        try:
            triggers = cls(
                arrays["inputs"].astype(np.float32),
                arrays["labels"].astype(np.int64),
                int(card["num_classes"]),
                str(card["source"]),
                int(card["seed"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelheistError(f"{folder} holds an incomplete trigger set: {exc}") from None
        if triggers.digest != card.get("sha256"):
            raise ModelheistError(f"{folder}: the triggers do not match their recorded digest")
        return triggers


@functools.lru_cache(maxsize=1)
def _trigger_images(source: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a registered dataset and its label, in one fixed order (its seed-0
    split), that triggers are drawn from (read-only: shared between calls)."""
    pool = load_dataset(source, seed=0)
    images = np.concatenate([pool.train.x, pool.test.x, pool.pool.x])
    labels = np.concatenate([pool.train.y, pool.test.y, pool.pool.y])
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@dataclass
class BackdoorWatermark(TrainingProtection):
    """Embed a trigger set while training. ``schedule`` ``mixed``: its inputs, repeated
    ``repeats`` times, are added to the training data with their chosen labels; ``after-epoch``
    (Szyller & Asokan, arXiv 2207.01991, their code's ``dp_and_watermark.py``): batches of
    about ``batch_size`` triggers after each epoch (:meth:`end_epoch`), through DP-SGD when the
    run has it unless ``outside_private``.

    ``clip_norm`` (after-epoch only; None, the study's, by default) bounds the gradient norm of
    each trigger step that is not private. A deviation for short, fast schedules: the study takes
    its 6 or 7 trigger steps an epoch beside ~940 clean ones at a learning rate of at most
    0.005; at 10 epochs of 40 clean steps and a rate near 0.1, a batch of 16 out-of-distribution
    triggers, whose loss and gradient are large until they are learnt, undoes much of the
    epoch (a private step is already bounded by DP-SGD's per-example clipping, and is left to
    it)."""

    name: ClassVar[str] = "backdoor-watermark"

    triggers: TriggerSet
    repeats: int = 20
    schedule: str = "mixed"
    batch_size: int = 16
    rounds: int = 1
    outside_private: bool = False
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ModelheistError(f"the trigger steps' clip norm must be > 0, got {self.clip_norm}")
        if self.clip_norm is not None and self.schedule != "after-epoch":
            raise ModelheistError("only an after-epoch watermark clips its trigger steps")
        if min(self.repeats, self.batch_size, self.rounds) < 1:
            raise ModelheistError(
                f"repeats, the batch size and the rounds must be at least 1, got {self.repeats}, "
                f"{self.batch_size} and {self.rounds}"
            )
        if self.schedule not in ("mixed", "after-epoch"):
            raise ModelheistError(
                f"the watermark's schedule is mixed or after-epoch, got {self.schedule!r}"
            )
        if self.outside_private and self.schedule != "after-epoch":
            raise ModelheistError("only an after-epoch watermark can train outside DP-SGD")

    def extra_data(
        self, x: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        if self.schedule == "after-epoch":
            return None
        inputs = np.tile(self.triggers.inputs, (self.repeats, *([1] * (x.ndim - 1))))
        labels = np.tile(self.triggers.labels, self.repeats)
        if targets.ndim == 2:  # soft targets: the chosen label as a one-hot vector
            labels = np.eye(targets.shape[1], dtype=targets.dtype)[labels]
        return inputs, labels

    def prepare(self, run: TrainingRun) -> None:
        if self.schedule == "after-epoch":
            run.notes[self.name] = torch.Generator().manual_seed(run.config.seed + 3)

    def private_steps(self, run: TrainingRun) -> int:
        """The trigger steps :meth:`end_epoch` takes through DP-SGD: ``rounds`` times about
        1 / rate after each epoch but the last of a run of more than one step (none when
        ``outside_private`` or mixed; fewer where a draw picks no trigger)."""
        if self.schedule != "after-epoch" or self.outside_private:
            return 0
        epochs = run.config.epochs
        stepping = epochs - 1 if epochs * len(run.batches) > 1 else epochs  # lr 0 at the end
        return stepping * self._steps_after_epoch()

    def _draw_rate(self) -> float:
        """Each trigger's chance to be in a batch after an epoch (Poisson sampling)."""
        return min(1.0, self.batch_size / len(self.triggers))

    def _steps_after_epoch(self) -> int:
        """The trigger steps taken after one epoch: ``rounds`` times about 1 / rate."""
        return self.rounds * max(1, int(1 / self._draw_rate()))

    def end_epoch(self, run: TrainingRun, epoch: int) -> None:
        """Szyller & Asokan's schedule: after each epoch, ``rounds`` times about 1 / rate
        batches of the triggers, each trigger in a batch with probability rate = batch_size /
        triggers (Poisson sampling, as their DP loader draws them; they take one round), one
        step of the run's optimizer each. Under DP-SGD the steps are private (clipped per
        example, noised for a batch of the size drawn, and counted by the accountant) unless
        ``outside_private``: then they are plain steps of the wrapped optimizer, without
        per-example gradients (their §7 relaxation: the watermark decoupled from DP-SGD, at the
        cost of a tight privacy analysis). After the last epoch of a run of more than one step
        the schedule's learning rate is 0: a step then changes nothing, so none is taken (under
        DP-SGD it would still be counted); a one-epoch run therefore trains no trigger."""
        if self.schedule != "after-epoch":
            return
        module, optimizer = run.module, run.optimizer
        if all(group["lr"] == 0 for group in optimizer.param_groups):
            return
        device = next(module.parameters()).device
        private = hasattr(optimizer, "original_optimizer")  # Opacus's DPOptimizer
        if private and self.outside_private:
            optimizer = optimizer.original_optimizer
            module.disable_hooks()
        inputs = torch.from_numpy(np.ascontiguousarray(self.triggers.inputs, np.float32))
        labels = torch.from_numpy(self.triggers.labels.astype(np.int64))
        rate = self._draw_rate()
        try:
            for _ in range(self._steps_after_epoch()):  # as private_steps counts them
                chosen = torch.rand(len(labels), generator=run.notes[self.name]) < rate
                if not chosen.any():
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(module(inputs[chosen].to(device)), labels[chosen].to(device))
                loss.backward()
                if private and not self.outside_private:
                    expected = optimizer.expected_batch_size
                    optimizer.expected_batch_size = int(chosen.sum())
                    try:
                        optimizer.step()
                    finally:
                        optimizer.expected_batch_size = expected
                else:
                    if self.clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(module.parameters(), self.clip_norm)
                    optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finally:
            if private and self.outside_private:
                module.enable_hooks()

    def card_entry(self, run: TrainingRun) -> dict[str, Any]:
        return {
            "name": self.name,
            "triggers": len(self.triggers),
            "source": self.triggers.source,
            **self.params(),
            "sha256": self.triggers.digest,  # the set itself stays secret
        }

    def params(self) -> dict[str, Any]:
        if self.schedule == "mixed":
            return {"triggers": len(self.triggers), "repeats": self.repeats}
        return {
            "triggers": len(self.triggers),
            "schedule": self.schedule,
            "batch_size": self.batch_size,
            "rounds": self.rounds,
            "outside_private": self.outside_private,
            **({"clip_norm": self.clip_norm} if self.clip_norm is not None else {}),
        }


@dataclass
class BackdoorWatermarkScheme(OwnershipScheme):
    """Verify a backdoor watermark: the exact binomial test of the trigger matches.

    ``commitment`` is the trigger set's SHA-256 as the owner's model card recorded it when the
    watermark was embedded; a set that does not match it cannot verify anything.
    ``require_derived`` accepts only a set that its recorded seed regenerates
    (:meth:`TriggerSet.regenerates`), a countermeasure to false claims. ``chance`` is the
    agreement expected of a model that never saw the watermark: 1/C when None (exact over the
    random draw of the labels), or an estimate from independent reference models
    (:func:`reference_chance`), which also covers the draw at hand: a set whose labels happen
    to favour the class independent models give such inputs.
    """

    name: ClassVar[str] = "backdoor-watermark"

    triggers: TriggerSet
    commitment: str | None = None
    require_derived: bool = False
    chance: float | None = None

    def _test(self, suspect: Oracle, progress: Progress | None) -> Finding:
        triggers = self.triggers
        if self.commitment is not None and self.commitment != triggers.digest:
            raise CannotVerify(
                "the trigger set is not the one the owner's model card records (its SHA-256 "
                "differs)"
            )
        if self.require_derived and not triggers.regenerates():
            raise CannotVerify(
                "the trigger set is not what its recorded seed generates: its inputs or labels "
                "may have been chosen to match other models"
            )
        check_suspect_fits(
            suspect, triggers.inputs.shape[1:], triggers.num_classes, "the trigger set's"
        )
        if self.chance is None and triggers.source.endswith(OWN_LABELS):
            raise CannotVerify(
                "the triggers keep their own labels, so a model that never saw them may agree "
                "far above 1/classes; give reference models (--reference) for the chance level"
            )
        null = 1.0 / triggers.num_classes if self.chance is None else self.chance
        if not 0.0 < null < 1.0:
            raise CannotVerify(f"the chance agreement must lie in (0, 1), got {null:.3g}")
        low, high = suspect.input_range or (-np.inf, np.inf)
        answer = suspect.query(np.clip(triggers.inputs, low, high))
        matches = int((answer.labels == triggers.labels).sum())
        test = binomtest(matches, len(triggers), null, alternative="greater")
        return Finding(
            "watermark accuracy",
            matches / len(triggers),
            float(test.pvalue),
            {
                "matches": matches,
                "triggers": len(triggers),
                "chance": null,
                "chance_from": "1/classes" if self.chance is None else "reference models",
                "commitment_checked": self.commitment is not None,
                "derivation_checked": self.require_derived,
            },
            smallest_p_value=null ** len(triggers),  # every trigger matched
        )


def reference_chance(
    triggers: TriggerSet, references: Sequence[Oracle], confidence: float = 0.99
) -> float:
    """The agreement with the trigger labels to expect of a model that never saw them,
    estimated from independent reference models: the largest, over the references, of the
    upper Clopper-Pearson bound (at ``confidence``) of each one's agreement; never below 1/C.
    The largest, not the mean: the suspect may resemble the reference most prone to agree."""
    if not references:
        raise ModelheistError("estimating the chance agreement needs reference models")
    bound = 1.0 / triggers.num_classes
    for reference in references:
        check_suspect_fits(
            reference, triggers.inputs.shape[1:], triggers.num_classes, "the trigger set's"
        )
        low, high = reference.input_range or (-np.inf, np.inf)
        answer = reference.query(np.clip(triggers.inputs, low, high))
        matches = int((answer.labels == triggers.labels).sum())
        interval = binomtest(matches, len(triggers)).proportion_ci(confidence, "exact")
        bound = max(bound, float(interval.high))
    return min(bound, 1.0 - 1e-12)


def recorded_commitment(card: ModelCard) -> str:
    """The trigger set's SHA-256 that an owner's model card recorded, or a one-line error."""
    for entry in reversed(card.protections):  # the latest watermark embedded
        if entry.get("name") == BackdoorWatermark.name and "sha256" in entry:
            return str(entry["sha256"])
    raise ModelheistError("the owner's model card records no backdoor watermark")


def parse_watermark(spec: str, data: Dataset) -> BackdoorWatermark:
    """The protection a ``--watermark`` spec names for a victim trained on ``data``:
    ``backdoor[:triggers=N,source=noise|DATASET,repeats=R,seed=S]`` (defaults: Szyller &
    Asokan's 100 triggers, noise, 20 repeats, a fresh random seed)."""
    kind, _, args = spec.strip().partition(":")
    if kind != "backdoor":
        raise ModelheistError(f"unknown watermark {kind!r}; known: backdoor")
    options: dict[str, str] = {}
    for token in filter(None, (t.strip() for t in args.split(","))):
        key, eq, value = token.partition("=")
        if not eq or key not in ("triggers", "source", "repeats", "seed"):
            raise ModelheistError(
                f"watermark: bad argument {token!r}; use triggers=N, source=S, repeats=R, seed=S"
            )
        options[key] = value
    try:
        count, repeats = int(options.get("triggers", 100)), int(options.get("repeats", 20))
        seed = int(options["seed"]) if "seed" in options else None
    except ValueError:
        raise ModelheistError(
            f"watermark: triggers and repeats must be integers in {spec!r}"
        ) from None
    triggers = TriggerSet.generate(
        count, data.input_shape, data.num_classes, options.get("source", "noise"), seed
    )
    return BackdoorWatermark(triggers, repeats)
