"""Protections that conflict (Szyller & Asokan, "Conflicting Interactions Among Protection
Mechanisms for Machine Learning Models", arXiv 2207.01991; the talk's conflict table).

The same model is trained with no protection, with each protection alone and with each
requested combination; each cell measures what every mechanism in it is for:

- **wm**, a backdoor watermark (Zhang et al. '18; out-of-distribution triggers keeping labels
  of their own): watermark accuracy, the fraction of triggers the model labels as chosen;
- **rad**, radioactive data (Sablayrolles et al., ICML '20; q = 10% marked): the black-box
  loss difference (the model's loss on the original images minus on their marked copies,
  the talk's number) and its p-value, and the white-box cosine test's log10 p;
- **di**, dataset inference (Maini et al., ICLR '21), which trains nothing: measured on the
  unprotected model and on each defense's (the talk's pairs; ``di_cells="all"``: on every
  cell), the owner's own regressor trained on that model; the calibrated test's p-value
  (modelheist's decision) and, optionally, the authors' notebooks' harmonic mean (the number
  the talk's table prints; :mod:`modelheist.ownership.notebook_inference`);
- **dp**, DP-SGD through Opacus (:class:`~modelheist.models.privacy.DpSgd`; epsilon 3, delta
  1e-3, clipping 1.0): the epsilon spent;
- **adv**, PGD adversarial training (:mod:`modelheist.models.adversarial_training`; the
  study's ball): adversarial accuracy under the same attack, on every cell when adv is asked.

Combinations: ``pairs`` (the talk's: each defense, dp or adv, with each ownership mechanism
that trains, wm or rad; dataset inference is read off the defenses' cells), ``all`` (every set of two or
more training mechanisms), or a list (``dp+wm,adv+rad+wm``). With dp and wm both asked, the
study's two relaxations are added: the watermark trained outside DP-SGD (non-private steps on
the triggers after each epoch, §7) and DP-SGD with a larger clipping norm.

Every cell's model is trained on the same architecture (``cnn-gn`` by default, the network
DP-SGD can train) with the same training seed, so that cells differ only in their protections. The run
folder keeps the configuration, the secrets (the trigger set, the radioactive mark and its
marking network), each cell's model (a folder written whole or not at all) and the cells'
metrics (JSON Lines, one fsynced line per finished cell), so an interrupted run resumes where
it stopped. Cells run in parallel through :mod:`modelheist.experiments.executors`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from modelheist.data.registry import Dataset, Split, dataset_names, load_dataset
from modelheist.errors import ModelheistError
from modelheist.experiments.run_folder import (
    append_line,
    check_config,
    read_lines,
    write_whole,
)
from modelheist.models.adversarial_training import PgdAdversarialTraining, adversarial_accuracy
from modelheist.models.architectures import build_network, normalisation_stats
from modelheist.models.classifier import TorchClassifier, accuracy
from modelheist.models.device import torch_threads
from modelheist.models.privacy import DpSgd
from modelheist.models.store import load_model, save_model
from modelheist.models.training import TrainConfig, TrainingProtection, train_model
from modelheist.ownership.watermark import OWN_LABELS

#: The mechanisms, in the order the tables show them.
MECHANISMS = ("wm", "rad", "di", "dp", "adv")
#: What each short name stands for.
MECHANISM_NAMES = {
    "wm": "backdoor watermark",
    "rad": "radioactive data",
    "di": "dataset inference",
    "dp": "DP-SGD",
    "adv": "adversarial training",
}
OWNERSHIP = ("wm", "rad", "di")
DEFENSES = ("dp", "adv")
TRAINED = ("wm", "rad", "dp", "adv")  # dataset inference trains nothing
NAME_ORDER = ("dp", "adv", "wm", "rad")  # as the talk names a pair: DP + WM
CELLS = "cells.jsonl"
CONFIG = "config.json"


@dataclass(frozen=True)
class ConflictsConfig:
    """What a conflicts run trains and measures (module docstring). ``epochs``,
    ``batch_size``, ``optimizer`` (``adamw`` or the study's ``sgd`` with momentum 0.9; only
    under SGD does the larger-clip relaxation mean larger steps), ``lr`` and
    ``weight_decay`` train every cell; ``train_size`` caps the owner's training split (None:
    all of it); the mechanisms' settings default to the study's (100 triggers from
    ``trigger_source``, the other dataset's images with their own labels, trained in batches
    of 16 after each epoch, ``trigger_rounds`` passes each time (the study: one), each
    non-private trigger step's gradient norm clipped at ``trigger_clip`` (the study: None; see
    :class:`~modelheist.ownership.watermark.BackdoorWatermark`); q = 10% marked
    at 10/255;
    m = 50 revealed samples and the paper's Blind Walk, 10 directions per noise type of at most
    50 steps; epsilon 3, delta 1e-3, clipping 1.0, the watermark's private trigger steps on
    top of the budget unless ``dp_covers_triggers``; PGD 0.125 / 0.005 / 25 on [0, 1] inputs);
    the larger-clip relaxation clips at ``relaxed_clip`` and trains at ``relaxed_lr`` (None:
    ``lr``; Opacus's noise grows with the clipping norm, so the study gives that cell a rate
    of its own); the cells with adversarial training train at ``adv_lr`` (None: ``lr``; PGD
    training from scratch may diverge at a rate chosen for clean training; the larger-clip
    cell keeps its own rate); a combination conflicts when one of its mechanisms' metrics
    drops by more than ``tolerance`` (:mod:`modelheist.experiments.conflicts_report`)."""

    dataset: str = "fashion-mnist"
    seed: int = 0
    protections: tuple[str, ...] = MECHANISMS
    combinations: str = "pairs"
    architecture: str = "cnn-gn"
    epochs: int = 10
    batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    train_size: int | None = None
    triggers: int = 100
    trigger_source: str = "mnist5k+own-labels"
    trigger_batch: int = 16
    trigger_rounds: int = 1
    trigger_clip: float | None = None
    mark_fraction: float = 0.1
    mark_epsilon: float = 10 / 255
    mark_control: int = 500
    revealed: int = 50
    regressor_samples: int = 500
    di_cells: str = "pairs"
    di_notebook: bool = True
    notebook_samples: int = 1000
    walk_directions: int = 10
    walk_steps: int = 50
    dp_epsilon: float = 3.0
    dp_delta: float = 1e-3
    dp_clip: float = 1.0
    dp_covers_triggers: bool = False
    relaxed_clip: float = 10.0
    relaxed_lr: float | None = None
    relaxed: bool = True
    adv_epsilon: float = 0.125
    adv_step: float = 0.005
    adv_steps: int = 25
    adv_lr: float | None = None
    adversarial_test: int = 1000
    tolerance: float = 0.05
    significance: float = 0.01

    def __post_init__(self) -> None:
        unknown = [p for p in self.protections if p not in MECHANISMS]
        if unknown or not self.protections:
            raise ModelheistError(
                f"unknown protection {', '.join(map(repr, unknown)) or '(none given)'}; "
                f"choose from {', '.join(MECHANISMS)}"
            )
        if len(set(self.protections)) != len(self.protections):
            raise ModelheistError("each protection may be named once")
        if self.epochs < 1 or self.batch_size < 1 or self.seed < 0:
            raise ModelheistError("epochs and batch size must be >= 1 and the seed >= 0")
        if self.trigger_rounds < 1:
            raise ModelheistError(f"trigger_rounds must be at least 1, got {self.trigger_rounds}")
        if self.trigger_clip is not None and not self.trigger_clip > 0:
            raise ModelheistError(f"trigger_clip must be > 0 (or None), got {self.trigger_clip}")
        if self.relaxed_lr is not None and not self.relaxed_lr > 0:
            raise ModelheistError(f"relaxed_lr must be > 0 (or None), got {self.relaxed_lr}")
        if self.adv_lr is not None and not self.adv_lr > 0:
            raise ModelheistError(f"adv_lr must be > 0 (or None), got {self.adv_lr}")
        if self.train_size is not None and self.train_size < 100:
            raise ModelheistError(f"train_size must be at least 100, got {self.train_size}")
        if not 0.0 < self.tolerance < 1.0 or not 0.0 < self.significance < 1.0:
            raise ModelheistError("the tolerance and the significance must lie in (0, 1)")
        if self.trigger_source.removesuffix(OWN_LABELS) == self.dataset:
            raise ModelheistError("the triggers must come from another dataset than the owner's")
        if self.di_cells not in ("pairs", "all"):
            raise ModelheistError(f"di_cells is pairs or all, got {self.di_cells!r}")
        if self.adversarial_test < 1:
            raise ModelheistError("adversarial accuracy needs at least one test image")
        self.train_config(self.seed)  # the optimiser's settings checked once, here
        DpSgd(self.dp_epsilon, self.dp_delta, self.dp_clip)  # each range checked once, here
        DpSgd(self.dp_epsilon, self.dp_delta, self.relaxed_clip)
        PgdAdversarialTraining(self.adv_epsilon, self.adv_step, self.adv_steps)
        cells(self)  # a combination list that names nothing trainable fails now

    @classmethod
    def small(cls, dataset: str = "digits", seed: int = 0, **changes: Any) -> ConflictsConfig:
        """A run of well under a minute on ``digits`` (the test suite's): every mechanism,
        short training, small secrets; its numbers are only indicative."""
        settings: dict[str, Any] = {
            "dataset": dataset,
            "seed": seed,
            "epochs": 12,
            "batch_size": 64,
            "triggers": 20,
            "trigger_source": "noise",
            "trigger_batch": 8,
            "trigger_rounds": 1,
            "mark_control": 40,
            "mark_epsilon": 0.1,
            "revealed": 20,
            "regressor_samples": 60,
            "notebook_samples": 100,
            "walk_directions": 3,
            "walk_steps": 20,
            "dp_epsilon": 8.0,
            "adv_epsilon": 0.15,
            "adv_step": 0.05,
            "adv_steps": 3,
            "adversarial_test": 200,
        }
        return cls(**{**settings, **changes})

    def as_json(self) -> dict[str, Any]:
        """The configuration as its JSON form (tuples as lists), as run folders record it;
        ``relaxed_lr``, ``adv_lr`` and ``dp_covers_triggers`` only when set (run folders made
        before them keep matching)."""
        settings = json.loads(json.dumps(asdict(self)))
        for rate in ("relaxed_lr", "adv_lr"):
            if settings[rate] is None:
                del settings[rate]
        if not settings["dp_covers_triggers"]:
            del settings["dp_covers_triggers"]
        return settings

    def train_config(self, seed: int) -> TrainConfig:
        """How every model of the run is trained (the cells, the radioactive marker)."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            optimizer=self.optimizer,
            seed=seed,
        )

    def cell_train_config(self, cell: Cell) -> TrainConfig:
        """How ``cell``'s model is trained: :meth:`train_config` at the seed, with the
        larger-clip relaxation's own rate when ``relaxed_lr`` is set, and adversarial
        training's (any other cell with adv) when ``adv_lr`` is."""
        train = self.train_config(self.seed)
        if cell.variant == "larger-clip":
            if self.relaxed_lr is not None:
                train = replace(train, lr=self.relaxed_lr)
        elif "adv" in cell.mechanisms and self.adv_lr is not None:
            train = replace(train, lr=self.adv_lr)
        return train

    def trained(self) -> tuple[str, ...]:
        """The requested mechanisms that change training, in table order."""
        return tuple(m for m in TRAINED if m in self.protections)


@dataclass(frozen=True)
class Cell:
    """One model of the table: its ``name``, the training mechanisms it combines and, for a
    relaxation, which one (``watermark-outside-dp`` or ``larger-clip``)."""

    name: str
    mechanisms: tuple[str, ...]
    variant: str = ""

    @property
    def combination(self) -> bool:
        return len(self.mechanisms) >= 2


def _named(mechanisms: Iterable[str], variant: str = "") -> Cell:
    ordered = tuple(m for m in NAME_ORDER if m in set(mechanisms))
    name = "+".join(ordered) or "none"
    return Cell(f"{name} ({variant})" if variant else name, ordered, variant)


def parse_combinations(spec: str, trained: tuple[str, ...]) -> list[tuple[str, ...]]:
    """``pairs``, ``all`` or ``a+b,c+d+e`` as sets of training mechanisms (dataset inference
    in a listed set is dropped: it is measured on every cell)."""
    if spec == "pairs":
        return [(d, o) for d in DEFENSES if d in trained for o in ("wm", "rad") if o in trained]
    if spec == "all":
        return [
            combo for size in range(2, len(trained) + 1)
            for combo in itertools.combinations(trained, size)
        ]  # fmt: skip
    combos = []
    for token in filter(None, (t.strip() for t in spec.split(","))):
        names = [n.strip() for n in token.split("+")]
        unknown = [n for n in names if n not in MECHANISMS]
        if unknown:
            raise ModelheistError(
                f"combination {token!r}: unknown protection {unknown[0]!r}; choose from "
                f"{', '.join(MECHANISMS)}"
            )
        missing = [n for n in names if n not in trained and n != "di"]
        if missing:
            raise ModelheistError(
                f"combination {token!r} names {missing[0]!r}, which --protections leaves out"
            )
        combos.append(tuple(n for n in names if n != "di"))
    if not combos:
        raise ModelheistError(f"no combination in {spec!r}; use pairs, all or a+b,c+d")
    return combos


def cells(config: ConflictsConfig) -> list[Cell]:
    """Every cell of a run, in table order: none, each training mechanism alone, the
    combinations, then the relaxations."""
    trained = config.trained()
    plan = [_named(()), *(_named((m,)) for m in trained)]
    for combo in parse_combinations(config.combinations, trained):
        cell = _named(combo)
        if cell not in plan:
            plan.append(cell)
    if config.relaxed and {"dp", "wm"} <= set(trained):
        plan.append(_named(("dp", "wm"), "watermark-outside-dp"))
        plan.append(_named(("dp", "wm"), "larger-clip"))
    return plan


def default_trigger_source(dataset: str) -> str:
    """The study's triggers for an owner's ``dataset``: the other dataset's images with their
    own labels (MNIST for Fashion-MNIST, Fashion-MNIST for MNIST)."""
    other = "fashion-mnist" if dataset == "mnist5k" else "mnist5k"
    return other + OWN_LABELS


def owner_data(config: ConflictsConfig) -> Dataset:
    """The owner's split of ``config.dataset`` (its training part capped at ``train_size``)."""
    if config.dataset not in dataset_names():
        raise ModelheistError(
            f"unknown dataset {config.dataset!r}; choose one of: {', '.join(dataset_names())}"
        )
    data = load_dataset(config.dataset, seed=config.seed)
    if data.kind != "image":
        raise ModelheistError("the conflicts table needs images (watermarks, radioactive data)")
    if data.validation is None or len(data.validation) < 2 * config.revealed:
        raise ModelheistError(f"{config.dataset} has too small a validation (public) split")
    if config.train_size is not None and config.train_size < len(data.train):
        rng = np.random.default_rng([config.seed, 11])
        keep = np.sort(rng.permutation(len(data.train))[: config.train_size])
        data = replace(data, train=Split(data.train.x[keep], data.train.y[keep]))
    return data


def check_before_training(config: ConflictsConfig, data: Dataset) -> None:
    """Refuse what cannot run before any training: a network DP-SGD cannot make private, a
    privacy budget the run cannot meet, secrets too large for the data."""
    if "dp" in config.trained():
        mean, std = normalisation_stats(data.train.x)
        network = build_network(config.architecture, data.input_shape, data.num_classes, mean, std)
        # the noise multiplier does not depend on the clipping norm: one check serves both
        DpSgd(config.dp_epsilon, config.dp_delta, config.dp_clip).check(
            network, len(data.train), config.batch_size, config.epochs
        )
    if "wm" in config.trained():  # an unknown source, or labels beyond the owner's classes
        table_triggers(config, data)
    if "rad" in config.trained():
        needed = int(np.ceil(config.mark_fraction * len(data.train))) + config.mark_control
        if needed >= len(data.train):
            raise ModelheistError(
                f"radioactive data: {needed} marked and control images from a training set of "
                f"{len(data.train)}"
            )
    if "di" in config.protections:
        need = config.regressor_samples + config.revealed
        if config.di_notebook:
            need = max(need, config.notebook_samples)
        if min(len(data.train), len(data.validation or ())) < need:
            raise ModelheistError(
                f"dataset inference needs {need} private and public samples; the training "
                f"split has {len(data.train)}, the validation split "
                f"{len(data.validation or ())}"
            )


# -- secrets -------------------------------------------------------------------------------


def prepare_secrets(
    config: ConflictsConfig, data: Dataset, folder: Path, progress: Progress | None = None
) -> None:
    """The trigger set and the radioactive mark (with its own marking network), written whole
    under ``folder/secrets`` unless already there."""
    from modelheist.ownership.radioactive import RadioactiveMarking

    secrets = folder / "secrets"
    if "wm" in config.trained() and not (secrets / "triggers" / "trigger-set.json").is_file():
        write_whole(secrets / "triggers", table_triggers(config, data).save)
    if "rad" in config.trained() and not (secrets / "radioactive" / "mark.json").is_file():
        marker = train_model(
            data,
            config.architecture,
            config.train_config(config.seed + 7),
            progress,
        )
        assert isinstance(marker, TorchClassifier)
        marking = RadioactiveMarking(
            fraction=config.mark_fraction,
            epsilon=config.mark_epsilon,
            control=config.mark_control,
            seed=config.seed,
        )
        mark = marking.make(marker, data.train.x, data.train.y, progress)
        write_whole(secrets / "radioactive", mark.save)


def table_triggers(config: ConflictsConfig, data: Dataset) -> Any:
    """The table's trigger set (a TriggerSet): ``config.triggers`` images from its trigger
    source, with labels among ``data``'s classes, drawn with the config's seed."""
    from modelheist.ownership.watermark import TriggerSet

    return TriggerSet.generate(
        config.triggers, data.input_shape, data.num_classes, config.trigger_source, config.seed
    )


def table_watermark(
    config: ConflictsConfig, triggers: Any, outside_private: bool = False
) -> TrainingProtection:
    """The table's watermark: ``triggers`` (a TriggerSet) trained after each epoch as
    ``config`` says (batch, passes, clip), inside DP-SGD unless ``outside_private``."""
    from modelheist.ownership.watermark import BackdoorWatermark

    return BackdoorWatermark(
        triggers,
        schedule="after-epoch",
        batch_size=config.trigger_batch,
        rounds=config.trigger_rounds,
        clip_norm=config.trigger_clip,
        outside_private=outside_private,
    )


def cell_protections(config: ConflictsConfig, cell: Cell, folder: Path) -> list[TrainingProtection]:
    """The training protections of ``cell``, in the order the Trainer applies them: the data
    mark, the watermark, DP-SGD, adversarial training."""
    from modelheist.ownership.radioactive import RadioactiveData, RadioactiveMark
    from modelheist.ownership.watermark import TriggerSet

    protections: list[TrainingProtection] = []
    secrets = folder / "secrets"
    if "rad" in cell.mechanisms:
        protections.append(RadioactiveData(RadioactiveMark.load(secrets / "radioactive")))
    if "wm" in cell.mechanisms:
        triggers = TriggerSet.load(secrets / "triggers")
        outside = cell.variant == "watermark-outside-dp"
        protections.append(table_watermark(config, triggers, outside))
    if "dp" in cell.mechanisms:
        clip = config.relaxed_clip if cell.variant == "larger-clip" else config.dp_clip
        protections.append(
            DpSgd(
                config.dp_epsilon,
                config.dp_delta,
                clip,
                cover_other_steps=config.dp_covers_triggers,
            )
        )
    if "adv" in cell.mechanisms:
        protections.append(
            PgdAdversarialTraining(config.adv_epsilon, config.adv_step, config.adv_steps)
        )
    return protections


# -- one cell ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs for one cell: the run folder (shared with the parent), the
    configuration, the cell and how many threads it may use (None: the process's own)."""

    folder: str
    config: dict[str, Any]
    cell: dict[str, Any]
    threads: int | None = None


def run_cell(job: CellJob) -> dict[str, Any]:
    """Train (or load) one cell's model and measure it, with ``job.threads`` torch threads;
    the cell's row. Runs in a worker process (local pool or Ray) as well as in the parent;
    writes only the model's folder."""
    with torch_threads(job.threads):
        return _run_cell(job)


def _run_cell(job: CellJob) -> dict[str, Any]:
    config = ConflictsConfig(**{**job.config, "protections": tuple(job.config["protections"])})
    cell = Cell(job.cell["name"], tuple(job.cell["mechanisms"]), job.cell["variant"])
    folder = Path(job.folder)
    data = owner_data(config)
    start = time.perf_counter()
    model, _ = cell_model(config, cell, data, folder)
    trained_seconds = time.perf_counter() - start
    metrics = measure_cell(config, cell, model, data, folder)
    return {
        "cell": cell.name,
        "mechanisms": list(cell.mechanisms),
        "variant": cell.variant,
        "seed": config.seed,
        "metrics": metrics,
        "protections": model.card.protections,
        "seconds_to_train": trained_seconds,
        "seconds": time.perf_counter() - start,
    }


def cell_model(
    config: ConflictsConfig, cell: Cell, data: Dataset, folder: Path
) -> tuple[TorchClassifier, bool]:
    """``cell``'s model from the run ``folder`` (``folder/models/<cell>``), trained and
    written whole first if it is not there; with whether it was trained now."""
    model_folder = folder / "models" / _folder_name(cell.name)
    if (model_folder / "card.json").is_file():
        model = load_model(model_folder)
        assert isinstance(model, TorchClassifier)
        return model, False
    model = train_cell(config, cell, data, folder)
    write_whole(model_folder, lambda tmp: save_model(model, tmp))
    return model, True


def train_cell(config: ConflictsConfig, cell: Cell, data: Dataset, folder: Path) -> TorchClassifier:
    """``cell``'s model trained (not saved) with the secrets of the run ``folder``. One
    training seed for every cell of a seed: cells differ in their protections only (and the
    larger-clip and adversarial cells in their rates, when relaxed_lr and adv_lr are set)."""
    model = train_model(
        data,
        config.architecture,
        config.cell_train_config(cell),
        None,
        cell_protections(config, cell, folder),
    )
    assert isinstance(model, TorchClassifier)
    return model


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+" else "_" for c in name)


def measure_cell(
    config: ConflictsConfig, cell: Cell, model: TorchClassifier, data: Dataset, folder: Path
) -> dict[str, Any]:
    """What every mechanism of ``cell`` is for (module docstring), plus test accuracy;
    adversarial accuracy on every cell when adv is asked, dataset inference on the cells
    ``config.di_cells`` names when di is."""
    from modelheist.api.local import LocalOracle
    from modelheist.api.service import PredictionService
    from modelheist.oracle import WhiteBoxOracle
    from modelheist.ownership.radioactive import RadioactiveMark, RadioactiveScheme
    from modelheist.ownership.watermark import TriggerSet

    def served() -> LocalOracle:
        return LocalOracle.for_new_client(PredictionService(model), None, "verifier")

    metrics: dict[str, Any] = {"accuracy": accuracy(model, data.test.x, data.test.y)}
    secrets = folder / "secrets"
    if "wm" in cell.mechanisms:
        triggers = TriggerSet.load(secrets / "triggers")
        metrics["watermark_accuracy"] = accuracy(model, triggers.inputs, triggers.labels)
    if "rad" in cell.mechanisms:
        scheme = RadioactiveScheme(RadioactiveMark.load(secrets / "radioactive"), "black-box")
        black = scheme.verify(served(), config.significance)
        white = replace(scheme, mode="white-box").verify(
            WhiteBoxOracle(served(), model.module), config.significance
        )
        metrics["loss_difference"] = black.statistic
        metrics["control_loss_difference"] = black.details.get("control_loss_difference")
        metrics["radioactive_p"] = black.p_value
        metrics["radioactive_white_box_log10_p"] = white.details.get("log10_p")
    if "dp" in cell.mechanisms:
        (entry,) = [p for p in model.card.protections if p["name"] == DpSgd.name]
        metrics["epsilon_spent"] = entry["epsilon_spent"]
    if "adv" in config.protections:
        take = np.random.default_rng([config.seed, 5]).permutation(len(data.test))
        take = np.sort(take[: config.adversarial_test])
        metrics["adversarial_accuracy"] = adversarial_accuracy(
            model, data.test.x[take], data.test.y[take], config.adv_epsilon, config.adv_step,
            config.adv_steps, seed=config.seed,
        )  # fmt: skip
    if "di" in config.protections and (
        config.di_cells == "all" or set(cell.mechanisms) <= set(DEFENSES)
    ):
        metrics.update(_dataset_inference(config, model, data, served))
    return metrics


def _dataset_inference(
    config: ConflictsConfig, model: TorchClassifier, data: Dataset, served: Callable
) -> dict[str, Any]:
    """Dataset inference with the cell's model as the owner's: the calibrated test's p-value
    on ``revealed`` samples and, if asked, the notebooks' harmonic mean."""
    from modelheist.ownership.dataset_inference import (
        BlindWalk,
        DatasetInferenceScheme,
        DatasetInferenceSecret,
    )
    from modelheist.ownership.notebook_inference import NotebookInference

    assert data.validation is not None
    private, public = (data.train.x, data.train.y), (data.validation.x, data.validation.y)
    walk = BlindWalk(config.walk_directions, config.walk_steps, seed=config.seed)
    secret = DatasetInferenceSecret.prepare(
        served(), private, public, config.revealed, walk, config.regressor_samples, config.seed
    )
    evidence = DatasetInferenceScheme(secret, m=config.revealed).verify(
        served(), config.significance
    )
    found: dict[str, Any] = {"di_p": evidence.p_value, "di_decision": evidence.decision}
    if config.di_notebook:
        notebook = NotebookInference(walk, samples=config.notebook_samples, seed=config.seed)
        reference = notebook.fit(served(), private, public)
        numbers = notebook.evaluate(reference, None)  # the owner's own model: fit's distances
        found["di_notebook_p"] = numbers["harmonic_mean_p"]
        found["di_notebook_all_rows_p"] = numbers["all_rows_p"]
    return found


# -- the run -------------------------------------------------------------------------------


class ConflictsRun:
    """One seed's conflicts run in ``folder`` (see the module docstring)."""

    def __init__(self, config: ConflictsConfig, folder: str | Path):
        self.config = config
        self.folder = Path(folder)

    def prepare(self, progress: Progress | None = None) -> list[CellJob]:
        """Check everything, write the configuration and the secrets; the jobs of the cells
        not yet measured."""
        config = self.config
        data = owner_data(config)
        check_before_training(config, data)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_config()
        prepare_secrets(config, data, self.folder, progress)
        done = {row["cell"] for row in read_lines(self.folder / CELLS)}
        settings = config.as_json()
        return [
            CellJob(str(self.folder), settings, asdict(cell))
            for cell in cells(config)
            if cell.name not in done
        ]

    def record(self, row: dict[str, Any]) -> None:
        """Append one finished cell (fsynced)."""
        append_line(self.folder / CELLS, row)

    def rows(self) -> list[dict[str, Any]]:
        """The finished cells, in table order (one row per cell)."""
        order = {cell.name: i for i, cell in enumerate(cells(self.config))}
        latest = {row["cell"]: row for row in read_lines(self.folder / CELLS)}
        return sorted(latest.values(), key=lambda row: order.get(row["cell"], len(order)))

    def _check_config(self) -> None:
        check_config(self.folder, self.config.as_json(), CONFIG)


def run_conflicts(
    config: ConflictsConfig,
    seeds: Iterable[int],
    folder: str | Path,
    executor: Any = None,
    progress: Progress | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every seed's run under ``folder/seed-S`` (cells not yet measured, through
    ``executor``: a :mod:`modelheist.experiments.executors` executor, in this process when
    None), then the report over seeds in ``folder``; the report's JSON document."""
    from modelheist.experiments.conflicts_report import document, write_report
    from modelheist.experiments.executors import LocalExecutor

    folder = Path(folder)
    executor = executor or LocalExecutor(1)
    runs = {
        seed: ConflictsRun(replace(config, seed=seed), folder / f"seed-{seed}") for seed in seeds
    }
    if not runs:
        raise ModelheistError("at least one seed")
    if hasattr(executor, "connect"):
        executor.connect()  # an unreachable cluster fails before anything is written
    jobs = []
    for run in runs.values():
        jobs += [replace(job, threads=executor.threads()) for job in run.prepare(progress)]
    task = progress.add_task("conflicts cells", total=len(jobs)) if progress else None
    for _, row in executor.run(run_cell, jobs):
        runs[row["seed"]].record(row)
        if on_row is not None:
            on_row(row)
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    rows = [row for run in runs.values() for row in run.rows()]
    doc = document(config.as_json(), rows, cells(config))
    write_report(doc, folder)
    return doc
