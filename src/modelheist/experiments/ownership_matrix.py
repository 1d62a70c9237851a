"""The ownership matrix: every ownership scheme against the same suspects (issue 12, item 5).

One owner protects one model with everything modelheist has: a backdoor watermark (Zhang et
al. '18) and radioactive data (Sablayrolles et al., ICML '20) while training, DAWN (Szyller et
al., ACM MM '21) in its API, and, prepared afterwards, a dataset-inference secret (Maini et al.,
ICLR '21) and a conferrable-adversarial-example fingerprint (Lukas et al., ICLR '21). The
suspects:

- **stolen**: the owner's model itself; surrogates extracted through the DAWN-served API, each
  by its own client (Knockoff Nets with the attacker's in-distribution split and with an
  out-of-distribution set, both on probabilities, and on labels only; JBDA and T-RND on
  labels); and removal-attacked copies of the owner's weights (fine-tuned, pruned,
  re-extracted by Knockoff Nets outside the API, which DAWN therefore never sees);
- **independent**: models that never saw the owner's data or answers: CNNs, GroupNorm CNNs and
  MLPs trained on the attacker's split with their own seeds, and CNNs trained on the
  validation split (another split of the same distribution).

The models the schemes themselves need (the fingerprint's generation ensemble and the judge's
reference models) are never suspects. Each cell is one scheme's
:class:`~modelheist.ownership.base.Evidence` on one suspect at one significance; per scheme the
ROC AUC of -log10 p between stolen and independent suspects ("cannot verify" counts as p = 1),
the detections, the false accusations and the queries spent.

The models that need nothing but the owner's model and the data (the independent and
removal-attacked suspects, the fingerprint's generation ensemble and the judge's references)
are made first, apart, through an executor (:mod:`modelheist.experiments.executors`: one after
another in this process by default, or in worker processes); the extractions through the API
then run one after another, since they share its state.

The run folder keeps the owner, its secrets, every model made apart and each suspect (a model
folder written whole or not at all, with the queries its extraction spent), the API's state
(SQLite, so each client's DAWN set survives), and the cells (JSON Lines, one fsynced line per
finished cell), so that an interrupted run resumes where it stopped. Deliberate shortcuts,
stated in :class:`MatrixConfig`: JBDA and T-RND train one network with one learning rate
(their defaults search three learning rates by five-fold cross-validation and T-RND
ensembles three networks), which the matrix's time target cannot afford; Knockoff Nets runs
with its defaults.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress
from sklearn.metrics import roc_auc_score

from modelheist.api.ledger import Ledger
from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.api.watermark_sets import dawn_watermark_sets
from modelheist.attacks.base import ExtractionAttack
from modelheist.attacks.knockoff import KnockoffNets
from modelheist.attacks.removal import parse_removal
from modelheist.attacks.synthetic import JacobianAugmentation, TargetedRandom
from modelheist.data.registry import Dataset, Split, attacker_transfer_set, load_dataset
from modelheist.defenses.registry import parse_defense, parse_output
from modelheist.errors import ModelheistError
from modelheist.experiments.executors import LocalExecutor
from modelheist.experiments.extraction import measure_extraction
from modelheist.experiments.fingerprints import (
    extracted_surrogates,
    independent_references,
    make_fingerprint,
)
from modelheist.experiments.removal import RemovalSettings, removed_copy
from modelheist.experiments.run_folder import (
    append_line,
    check_config,
    read_lines,
    write_atomically,
    write_whole,
)
from modelheist.models.classifier import Classifier, TorchClassifier, accuracy, predict_labels
from modelheist.models.device import torch_threads
from modelheist.models.store import load_model, save_model
from modelheist.models.training import TrainConfig, train_model
from modelheist.oracle import WhiteBoxOracle
from modelheist.ownership.base import Evidence, OwnershipScheme
from modelheist.ownership.cae import (
    CAEGeneration,
    CAEScheme,
    Fingerprint,
    reference_retentions,
)
from modelheist.ownership.dataset_inference import DatasetInferenceScheme, DatasetInferenceSecret
from modelheist.ownership.dawn import DawnScheme, DawnVerdict, verify_sets
from modelheist.ownership.radioactive import (
    RadioactiveData,
    RadioactiveMark,
    RadioactiveMarking,
    RadioactiveScheme,
)
from modelheist.ownership.watermark import BackdoorWatermark, BackdoorWatermarkScheme, TriggerSet

#: The matrix's columns, in order.
SCHEME_COLUMNS = (
    "backdoor-watermark",
    "dawn",
    "radioactive",
    "radioactive-black-box",
    "dataset-inference",
    "cae",
)
#: The independent models cycle through these (name, architecture, split trained on).
INDEPENDENT_FAMILIES = (
    ("cnn-pool", "cnn", "pool"),
    ("cnn-gn-pool", "cnn-gn", "pool"),
    ("mlp-pool", "mlp", "pool"),
    ("cnn-validation", "cnn", "validation"),
    ("cnn-pool", "cnn", "pool"),
)
CELLS = "cells.jsonl"
EXTRACTION = "extraction.json"
SUSPECTS = "suspects.jsonl"
#: Where the fingerprint's generation ensemble and the judge's reference models are kept.
ENSEMBLE, JUDGES = Path("secrets") / "cae-ensemble", Path("secrets") / "cae-judges"


@dataclass(frozen=True)
class MatrixConfig:
    """What the matrix runs. ``epochs`` trains the owner, its marking network and every model
    trained from labelled data (references, independents: the owner's effort); ``budget`` is
    each extraction's queries; ``knockoff`` and ``synthetic`` are the attacks' parameters
    (empty: the attack's defaults; see the module docstring for the synthetic attacks'); the
    secrets' sizes follow the papers: 100 triggers, q = 10% marked, m = 50 revealed samples,
    a fingerprint of at most 100 examples from 1,000 candidates with a 5 + 5 ensemble."""

    dataset: str = "fashion-mnist"
    ood_dataset: str = "mnist5k"
    seed: int = 0
    architecture: str = "cnn"
    epochs: int = 10
    budget: int = 10_000
    significance: float = 0.01
    independents: int = 20
    references: int = 5
    triggers: int = 100
    mark_fraction: float = 0.1
    mark_control: int = 500
    dawn_rate: float = 0.005
    revealed: int = 50
    regressor_samples: int = 500
    cae_members: int = 5
    cae_budget: int = 5_000
    cae_candidates: int = 1_000
    cae_epsilon: float = 0.2
    cae_steps: int = 200
    cae_threshold: float = 0.85
    #: The paper's rule (0), at which the matrix's benchmark rows were measured; CAEGeneration's
    #: default (50, chosen later on validation) would need the matrix run again.
    cae_min_size: int = 0
    removal_epochs: int = 10
    prune_rate: float = 0.5
    knockoff: dict[str, Any] = field(default_factory=dict)
    synthetic: dict[str, Any] = field(
        default_factory=lambda: {"learning_rates": [2e-3], "members": 1}
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.significance < 1.0:
            raise ModelheistError(f"the significance must lie in (0, 1), got {self.significance}")
        if self.independents < 2 or self.references < 3:
            raise ModelheistError(
                "the matrix needs at least 2 independent models and 3 reference models (CAE's "
                "null sample)"
            )
        if self.cae_min_size < 0:
            raise ModelheistError(f"CAE's min_size must be at least 0, got {self.cae_min_size}")
        if min(self.epochs, self.budget, self.cae_members, self.cae_budget) < 1:
            raise ModelheistError("epochs, budgets and ensemble sizes must be at least 1")
        if self.ood_dataset == self.dataset:
            raise ModelheistError(
                f"the out-of-distribution transfer set must differ from the owner's dataset "
                f"({self.dataset})"
            )
        if self.seed < 0:
            raise ModelheistError(f"the seed must be at least 0, got {self.seed}")
        if self.cae_members > 100 or self.references > 100:
            raise ModelheistError(
                "at most 100 ensemble members and 100 reference models (their training seeds "
                "would collide with the suspects')"
            )

    def as_json(self) -> dict[str, Any]:
        """The configuration as its JSON form (tuples as lists), as run folders and the
        benchmark's run rows record it (``cae_min_size`` only when it is not 0)."""
        document = json.loads(json.dumps(asdict(self)))
        if not self.cae_min_size:  # run folders and rows from before the field still match
            del document["cae_min_size"]
        return document

    @classmethod
    def small(cls, dataset: str = "digits", seed: int = 0) -> MatrixConfig:
        """A run of about a minute on ``digits`` (the test suite's): every suspect and scheme,
        few models, short training; its numbers are only indicative."""
        return cls(
            dataset=dataset,
            ood_dataset=default_ood(dataset),
            seed=seed,
            epochs=15,
            budget=400,
            independents=4,
            references=3,
            triggers=20,
            mark_control=60,
            revealed=20,
            regressor_samples=60,
            cae_members=2,
            cae_budget=400,
            cae_candidates=300,
            cae_epsilon=0.2,
            cae_steps=100,
            cae_threshold=0.5,
            dawn_rate=0.05,
            removal_epochs=3,
            knockoff={"epochs": 10, "min_steps": 100},
            synthetic={"learning_rates": [2e-3], "members": 1, "epochs": 3, "final_epochs": 10,
                       "min_steps": 50, "seeds_per_class": 3},
        )  # fmt: skip


def default_ood(dataset: str) -> str:
    """The out-of-distribution transfer set for an owner's ``dataset``: MNIST (its 5,000
    images), or digits when the owner's data is MNIST."""
    return "digits" if dataset == "mnist5k" else "mnist5k"


@dataclass(frozen=True)
class Suspect:
    """One row of the matrix: its name, ``stolen`` or ``independent``, and how it was made."""

    name: str
    kind: str
    family: str
    how: str


def suspects_of(config: MatrixConfig) -> list[Suspect]:
    """Every suspect of a run, stolen first."""
    b = config.budget
    stolen = [
        Suspect("owner", "stolen", "the marked model", "the owner's model itself"),
        Suspect("knockoff-probs", "stolen", "extraction", f"Knockoff Nets, attacker split, probabilities, {b} queries via the API"),
        Suspect("knockoff-ood", "stolen", "extraction", f"Knockoff Nets, {config.ood_dataset}, probabilities, at most {b} queries (the set's size) via the API"),
        Suspect("knockoff-labels", "stolen", "extraction", f"Knockoff Nets, attacker split, labels, {b} queries via the API"),
        Suspect("jbda", "stolen", "extraction", f"JBDA, labels, {b} queries via the API"),
        Suspect("t-rnd", "stolen", "extraction", f"T-RND, labels, {b} queries via the API"),
        Suspect("fine-tuned", "stolen", "removal", f"the owner's weights, all layers fine-tuned {config.removal_epochs} epochs on the attacker split"),
        Suspect("pruned", "stolen", "removal", f"the owner's weights, {config.prune_rate:.0%} of the smallest weights pruned"),
        Suspect("re-extracted", "stolen", "removal", f"Knockoff Nets on the owner's weights outside the API, probabilities, {b} queries"),
    ]  # fmt: skip
    independent = []
    for index in range(config.independents):
        family, arch, split = INDEPENDENT_FAMILIES[index % len(INDEPENDENT_FAMILIES)]
        independent.append(
            Suspect(f"{family}-{index}", "independent", family, f"{arch} on the {split} split")
        )
    return stolen + independent


class MatrixRun:
    """One matrix run in ``folder`` (see the module docstring); :meth:`run` does the work.
    ``executor`` makes the models made apart (None: in this process, one after another)."""

    def __init__(
        self,
        config: MatrixConfig,
        folder: str | Path,
        progress: Progress | None = None,
        executor: Any = None,
    ):
        self.config = config
        self.folder = Path(folder)
        self.progress = progress
        self.executor = executor

    # -- the run -----------------------------------------------------------------------------

    def run(self, on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Every cell not yet in the folder; return the whole matrix document."""
        config = self.config
        data = load_dataset(config.dataset, seed=config.seed)
        if data.validation is None or len(data.validation) == 0 or len(data.pool) == 0:
            raise ModelheistError(f"{config.dataset} has no validation or attacker split")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_config()
        with self._timed("owner"):
            owner, triggers, mark = self._owner(data)
        self._models_apart()
        with self._timed("secrets"):
            schemes = self._schemes(owner, triggers, mark, data)
        known = {s["suspect"]: s for s in read_lines(self.folder / SUSPECTS)}
        owner_labels = predict_labels(owner, data.test.x)  # each suspect's agreement, once
        ledger = Ledger.open(self.folder / "state")
        try:  # every suspect first, so that every cell sees the same DAWN sets
            models = {
                suspect.name: self._suspect(suspect, owner, data, ledger, known, owner_labels)
                for suspect in suspects_of(config)
            }
        finally:
            ledger.close()
        sets = dawn_watermark_sets(self.folder / "state")
        done = {(c["suspect"], c["scheme"]) for c in read_lines(self.folder / CELLS)}
        for suspect in suspects_of(config):
            for name in SCHEME_COLUMNS:
                if (suspect.name, name) in done:
                    continue
                start = time.perf_counter()
                cell = self._cell(suspect, name, models[suspect.name], schemes, sets)
                cell["seconds"] = time.perf_counter() - start
                append_line(self.folder / CELLS, cell)
                if on_cell is not None:
                    on_cell(cell)
        return self.document()

    def document(self) -> dict[str, Any]:
        """The matrix as JSON: configuration, suspects, cells and the per-scheme summary."""
        cells = read_lines(self.folder / CELLS)
        suspects = read_lines(self.folder / SUSPECTS)
        return {
            "kind": "modelheist-ownership-matrix",
            "config": asdict(self.config),
            "owner": json.loads((self.folder / "owner" / "card.json").read_text())["metrics"]
            if (self.folder / "owner" / "card.json").is_file()
            else {},
            "suspects": suspects,
            "cells": cells,
            "summary": summarise(cells, self.config.significance),
        }

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        """Record how long ``phase`` took in ``timings.jsonl`` (where a run spends its time)."""
        start = time.perf_counter()
        yield
        append_line(
            self.folder / "timings.jsonl",
            {"phase": phase, "seconds": time.perf_counter() - start},
        )

    def _check_config(self) -> None:
        """A folder belongs to one configuration: resuming with another would mix two runs."""
        check_config(self.folder, self.config.as_json())

    def _models_apart(self) -> None:
        """Every model of :func:`models_apart` not yet in the folder, through the executor
        (timed as the phase ``models apart`` when there is any)."""
        executor = self.executor or LocalExecutor(1)
        jobs = [
            replace(job, threads=executor.threads())
            for job in models_apart(self.config, self.folder)
        ]
        if not jobs:
            return
        if hasattr(executor, "connect"):
            executor.connect()  # an unreachable cluster fails before anything is trained
        progress = self.progress
        task = progress.add_task("models made apart", total=len(jobs)) if progress else None
        try:
            with self._timed("models apart"):
                for _ in executor.run(make_model_apart, jobs):
                    if task is not None:
                        progress.advance(task)
        finally:
            if task is not None:
                progress.remove_task(task)
            _read_owner_and_data.cache_clear()  # the run holds its own copy
        missing = models_apart(self.config, self.folder)
        if missing:  # e.g. workers that wrote to a filesystem this process does not see
            raise ModelheistError(
                f"{len(missing)} models made apart are not in {self.folder} (first: "
                f"{missing[0].target}); do the workers share this folder?"
            )

    # -- the owner and its secrets -----------------------------------------------------------

    def _owner(self, data: Dataset) -> tuple[TorchClassifier, TriggerSet, RadioactiveMark]:
        """The owner's model, trained with the watermark and on the radioactive data."""
        config, secrets = self.config, self.folder / "secrets"
        triggers_folder, mark_folder = secrets / "triggers", secrets / "radioactive"
        if not (triggers_folder / "trigger-set.json").is_file():
            triggers = TriggerSet.generate(
                config.triggers, data.input_shape, data.num_classes, "noise", config.seed
            )
            write_whole(triggers_folder, triggers.save)
        triggers = TriggerSet.load(triggers_folder)
        if not (mark_folder / "mark.json").is_file():
            marker = train_model(
                data,
                config.architecture,
                TrainConfig(epochs=config.epochs, seed=config.seed + 7),
                self.progress,
            )
            assert isinstance(marker, TorchClassifier)
            marking = RadioactiveMarking(
                fraction=config.mark_fraction, control=config.mark_control, seed=config.seed
            )
            mark = marking.make(marker, data.train.x, data.train.y, self.progress)
            write_whole(mark_folder, mark.save)
        mark = RadioactiveMark.load(mark_folder)
        owner = self._model(
            "owner",
            lambda: train_model(
                data,
                config.architecture,
                TrainConfig(epochs=config.epochs, seed=config.seed),
                self.progress,
                [BackdoorWatermark(triggers), RadioactiveData(mark)],
            ),
            folder=self.folder / "owner",
        )
        assert isinstance(owner, TorchClassifier)
        return owner, triggers, mark

    def _schemes(
        self, owner: TorchClassifier, triggers: TriggerSet, mark: RadioactiveMark, data: Dataset
    ) -> dict[str, OwnershipScheme | str]:
        """Every scheme but DAWN's, whose sets grow as the attacks run; a scheme the owner
        could not prepare is the reason, a string."""
        config, secrets = self.config, self.folder / "secrets"
        di_folder = secrets / "dataset-inference"
        if not (di_folder / "dataset-inference.json").is_file():
            secret = DatasetInferenceSecret.prepare(
                _served(owner),
                (data.train.x, data.train.y),
                (data.validation.x, data.validation.y),
                config.revealed,
                regressor_samples=config.regressor_samples,
                seed=config.seed,
                progress=self.progress,
            )
            write_whole(di_folder, secret.save)
        secret = DatasetInferenceSecret.load(di_folder)
        schemes: dict[str, OwnershipScheme | str] = {
            "backdoor-watermark": BackdoorWatermarkScheme(triggers, commitment=triggers.digest),
            "radioactive": RadioactiveScheme(mark, "white-box", commitment=mark.digest),
            "radioactive-black-box": RadioactiveScheme(mark, "black-box", commitment=mark.digest),
            "dataset-inference": DatasetInferenceScheme(secret, m=config.revealed),
        }
        failed = secrets / "cae-failed.json"
        if not failed.is_file():
            try:
                schemes["cae"] = CAEScheme(*self._fingerprint(owner, data))
            except ModelheistError as exc:  # e.g. no candidate reached the threshold
                write_atomically(failed, json.dumps({"reason": str(exc)}))
        if failed.is_file():  # the owner has no fingerprint: every CAE cell cannot verify
            schemes["cae"] = "no fingerprint: " + json.loads(failed.read_text())["reason"]
        return schemes

    def _fingerprint(
        self, owner: TorchClassifier, data: Dataset
    ) -> tuple[Fingerprint, tuple[float, ...]]:
        """The fingerprint, generated with its own ensemble, and the retentions of the judge's
        reference models (neither are suspects)."""
        config, folder = self.config, self.folder / "secrets" / "cae"
        null_path = self.folder / "secrets" / "cae-references.json"
        if not (folder / "fingerprint.json").is_file():
            settings = CAEGeneration(
                epsilon=config.cae_epsilon,
                steps=config.cae_steps,
                threshold=config.cae_threshold,
                seed=config.seed,
                min_size=config.cae_min_size,
            )
            members = range(config.cae_members)
            ensemble = (
                [_load_network(self.folder / ENSEMBLE / f"surrogate-{i}") for i in members],
                [_load_network(self.folder / ENSEMBLE / f"reference-{i}") for i in members],
            )
            fingerprint = make_fingerprint(
                owner, data, settings, candidates=config.cae_candidates,
                seeds=(0, 0, config.seed),  # the ensemble is given: only the candidates' seed
                progress=self.progress, ensemble=ensemble,
            )  # fmt: skip
            write_whole(folder, fingerprint.save)
        fingerprint = Fingerprint.load(folder)
        if not null_path.is_file():
            judges = [
                _load_network(self.folder / JUDGES / f"judge-{i}") for i in range(config.references)
            ]
            null = reference_retentions(fingerprint, [_served(m, "labels") for m in judges])
            write_atomically(null_path, json.dumps(null))
        return fingerprint, tuple(json.loads(null_path.read_text()))

    # -- the suspects ------------------------------------------------------------------------

    def _suspect(
        self,
        suspect: Suspect,
        owner: TorchClassifier,
        data: Dataset,
        ledger: Ledger,
        known: dict[str, dict[str, Any]],
        owner_labels: np.ndarray,
    ) -> Classifier:
        """The suspect's model (made now, or read back), and its row in ``suspects.jsonl``;
        ``owner_labels``: the owner's labels of the evaluation split."""
        extraction: dict[str, Any] = {}
        model = (
            owner
            if suspect.name == "owner"
            else self._model(
                suspect.name,
                lambda: make_suspect(
                    self.config, suspect, owner, data, ledger, extraction, self.progress
                ),
                extraction,
            )  # fmt: skip
        )
        saved = self.folder / "models" / suspect.name / EXTRACTION
        if not extraction and saved.is_file():  # made by an earlier, interrupted run
            extraction = json.loads(saved.read_text())
        if suspect.name not in known:
            agreement = float((predict_labels(model, data.test.x) == owner_labels).mean())
            row = {
                "suspect": suspect.name,
                **asdict(suspect),
                "test_accuracy": accuracy(model, data.test.x, data.test.y),
                "agreement_with_owner": agreement,
                **extraction,
            }  # fmt: skip
            row.pop("name")
            append_line(self.folder / SUSPECTS, row)
            known[suspect.name] = row
        return model

    def _model(
        self,
        name: str,
        make: Callable[[], Classifier],
        extra: dict[str, Any] | None = None,
        folder: Path | None = None,
    ) -> Classifier:
        """The model saved under ``folder`` (default: models/NAME), made and saved if absent,
        with what ``make`` wrote into ``extra`` (the queries an extraction spent) beside it."""
        folder = folder or self.folder / "models" / name
        if (folder / "card.json").is_file():
            return load_model(folder)
        start = time.perf_counter()
        model = make()
        if extra is not None:
            extra["seconds_to_make"] = time.perf_counter() - start
        _save(folder, model, extra)
        return model

    # -- the cells ---------------------------------------------------------------------------

    def _cell(
        self,
        suspect: Suspect,
        scheme_name: str,
        model: Classifier,
        schemes: dict[str, OwnershipScheme | str],
        sets: list,
    ) -> dict[str, Any]:
        significance = self.config.significance
        oracle = _served(model)
        if scheme_name == "radioactive" and isinstance(model, TorchClassifier):
            oracle = WhiteBoxOracle(oracle, model.module)
        scheme = schemes.get(scheme_name)
        evidence: Evidence | DawnVerdict
        if scheme_name == "dawn" and not sets:
            evidence = Evidence("dawn", "cannot verify", significance, 0, reason="no DAWN set")
        elif scheme_name == "dawn":
            dawn = [DawnScheme(s.inputs, s.labels, s.num_classes, s.client) for s in sets]
            evidence = verify_sets(dawn, oracle, significance)
        elif isinstance(scheme, str):
            evidence = Evidence(scheme_name, "cannot verify", significance, 0, reason=scheme)
        else:
            assert scheme is not None
            evidence = scheme.verify(oracle, significance, progress=self.progress)
        return cell_row(suspect, scheme_name, evidence)


# -- making the suspects and the models made apart ---------------------------------------------


def make_suspect(
    config: MatrixConfig,
    suspect: Suspect,
    owner: TorchClassifier,
    data: Dataset,
    ledger: Ledger | None,
    extraction: dict[str, Any],
    progress: Progress | None = None,
) -> Classifier:
    """Make ``suspect`` (not the owner): an extraction through the DAWN-served API (which
    needs the ``ledger``), a removal attack on the owner's weights, or an independent model;
    the queries an extraction spent go into ``extraction``."""
    seed = model_seed(config, "suspects", suspects_of(config).index(suspect))
    if suspect.family == "extraction" or suspect.name == "re-extracted":
        attack, transfer, output = extraction_for(config, suspect.name, data)
        oracle = None  # re-extraction: the stolen weights served by the thief, no DAWN
        if suspect.family == "extraction":
            if ledger is None:
                raise ModelheistError(
                    f"{suspect.name}: an extraction through the API needs its ledger"
                )
            stages = [parse_defense(f"dawn:rate={config.dawn_rate!r},seed={config.seed}")]
            service = PredictionService(owner, stages + parse_output(output), ledger=ledger)
            oracle = LocalOracle.for_new_client(service, config.budget, suspect.name)
        result, _ = measure_extraction(
            owner, attack, transfer, None, config.budget, output, suspect.name, seed,
            progress=progress, oracle=oracle,
        )  # fmt: skip
        extraction["extraction_queries"] = result.queries_used
        return result.surrogate
    if suspect.family == "removal":
        removal = parse_removal(
            "ftal" if suspect.name == "fine-tuned" else f"prune:{config.prune_rate}"
        )
        settings = RemovalSettings(epochs=config.removal_epochs, seed=seed)
        return removed_copy(owner, removal, data, settings, progress)
    _, arch, split = next(f for f in INDEPENDENT_FAMILIES if suspect.family == f[0])
    source = data.pool if split == "pool" else data.validation
    return train_model(
        replace(data, train=Split(source.x, source.y)),
        arch,
        TrainConfig(epochs=config.epochs, seed=seed),
        progress,
    )


def extraction_for(
    config: MatrixConfig, name: str, data: Dataset
) -> tuple[ExtractionAttack, np.ndarray, str]:
    """The attack, transfer set and output granularity of the extraction suspect ``name``."""
    synthetic = {k: tuple(v) if isinstance(v, list) else v for k, v in config.synthetic.items()}
    if name == "knockoff-ood":
        return (
            KnockoffNets(**config.knockoff),
            attacker_transfer_set(config.ood_dataset, data),
            "probs",
        )
    if name in ("knockoff-probs", "knockoff-labels", "re-extracted"):
        output = "labels" if name == "knockoff-labels" else "probs"
        return KnockoffNets(**config.knockoff), data.pool.x, output
    attack = JacobianAugmentation if name == "jbda" else TargetedRandom
    return attack(**synthetic), data.pool.x, "labels"


@dataclass(frozen=True)
class ModelJob:
    """One model made apart, in this process or a worker's: ``role`` ``suspect`` (``name``),
    or member ``index`` of the fingerprint's ``surrogates``, its ``references`` or the
    judge's ``judges``; written whole in ``target``. ``config``: the run's, as JSON;
    ``threads``: torch threads (None: the process's own)."""

    folder: str
    config: dict[str, Any]
    role: str
    target: str
    name: str = ""
    index: int = 0
    threads: int | None = None


def models_apart(config: MatrixConfig, folder: str | Path) -> list[ModelJob]:
    """The models of a run that need only the owner's model and the data, and are not yet in
    ``folder``: the independent and removal-attacked suspects; the generation ensemble while
    the fingerprint is not written; the judge's references while their retentions are not.
    None of the last two once the generation failed; the judge's are made with the rest, so a
    generation that fails wastes them."""
    folder = Path(folder)
    common = {"folder": str(folder), "config": config.as_json()}
    jobs = [
        ModelJob(**common, role="suspect", target=str(folder / "models" / s.name), name=s.name)
        for s in suspects_of(config)
        if s.kind == "independent" or s.family == "removal"
    ]
    secrets = folder / "secrets"
    if not (secrets / "cae-failed.json").is_file():
        if not (secrets / "cae" / "fingerprint.json").is_file():
            jobs += [
                ModelJob(**common, role=role, target=str(folder / ENSEMBLE / f"{prefix}-{i}"), index=i)
                for i in range(config.cae_members)
                for role, prefix in (("surrogates", "surrogate"), ("references", "reference"))
            ]  # fmt: skip
        if not (secrets / "cae-references.json").is_file():
            jobs += [
                ModelJob(**common, role="judges", target=str(folder / JUDGES / f"judge-{i}"), index=i)
                for i in range(config.references)
            ]  # fmt: skip
    return [job for job in jobs if not (Path(job.target) / "card.json").is_file()]


def make_model_apart(job: ModelJob) -> str:
    """Make and write one model of :func:`models_apart` with ``job.threads`` torch threads; its
    target folder. The seeds are those the run always gave these models."""
    with torch_threads(job.threads):
        return _make_model_apart(job)


#: Where each kind of model's training seeds start, past 1000 (run seed + 1).
SEED_OFFSETS = {"surrogates": 0, "references": 100, "judges": 400, "suspects": 500}


def model_seed(config: MatrixConfig, role: str, index: int) -> int:
    """The training seed of member ``index`` of ``role`` (a key of :data:`SEED_OFFSETS`):
    every model of a run has its own, and runs of other seeds use other ones."""
    return 1000 * (config.seed + 1) + SEED_OFFSETS[role] + index


def _make_model_apart(job: ModelJob) -> str:
    """Make and write one model of :func:`models_apart` (see :func:`make_model_apart`)."""
    config = MatrixConfig(**job.config)
    owner, data = _owner_and_data(job.folder, config.dataset, config.seed)
    extra: dict[str, Any] | None = None
    if job.role == "suspect":
        suspect = next(s for s in suspects_of(config) if s.name == job.name)
        extra = {}
        start = time.perf_counter()
        model = make_suspect(config, suspect, owner, data, None, extra)
        extra["seconds_to_make"] = time.perf_counter() - start
    elif job.role == "surrogates":
        seed = model_seed(config, job.role, job.index)
        model = extracted_surrogates(owner, data, 1, config.cae_budget, seed)[0]
    elif job.role in ("references", "judges"):
        model = independent_references(owner, data, 1, model_seed(config, job.role, job.index))[0]
    else:
        raise ModelheistError(f"no model of role {job.role!r}")
    _save(Path(job.target), model, extra)
    return job.target


def _owner_and_data(folder: str, dataset: str, seed: int) -> tuple[TorchClassifier, Dataset]:
    """The run's owner model and dataset, read once per process (and again if the owner's
    folder was rewritten)."""
    written = (Path(folder) / "owner" / "card.json").stat().st_mtime_ns
    return _read_owner_and_data(folder, dataset, seed, written)


@functools.lru_cache(maxsize=1)
def _read_owner_and_data(
    folder: str, dataset: str, seed: int, _written: int
) -> tuple[TorchClassifier, Dataset]:
    """Read the owner and the dataset (``_written``: the owner card's mtime, the cache key)."""
    return _load_network(Path(folder) / "owner"), load_dataset(dataset, seed=seed)


def _load_network(folder: Path) -> TorchClassifier:
    """The network saved in ``folder``, or a one-line error if another kind of model is."""
    model = load_model(folder)
    if not isinstance(model, TorchClassifier):
        raise ModelheistError(f"{folder}: the matrix expects a network there")
    return model


def _save(folder: Path, model: Classifier, extra: dict[str, Any] | None) -> None:
    """Write ``model`` whole in ``folder``, with ``extra`` (what making it cost) beside it."""

    def write(tmp: Path) -> None:
        save_model(model, tmp)
        if extra:
            (tmp / EXTRACTION).write_text(json.dumps(extra))

    write_whole(folder, write)


def cell_row(suspect: Suspect, scheme: str, evidence: Evidence | DawnVerdict) -> dict[str, Any]:
    """One cell as a JSON row."""
    row = {
        "suspect": suspect.name,
        "kind": suspect.kind,
        "family": suspect.family,
        "scheme": scheme,
        "decision": evidence.decision,
        "p_value": evidence.p_value,
        "queries": evidence.queries,
    }
    if isinstance(evidence, DawnVerdict):
        matched = evidence.matching
        reasons = [e.reason for e in evidence.clients.values() if e.decision == "cannot verify"]
        if not evidence.clients:
            reasons = ["no watermark set could reach the significance"]
        return {
            **row,
            "statistic_name": "watermark sets matched",
            "statistic": len(matched),
            "reason": reasons[0] if evidence.decision == "cannot verify" and reasons else "",
            "details": {
                "matching_sets": matched,
                "sets_tested": len(evidence.clients),
                "bonferroni_m": evidence.tests,
                "not_tested": evidence.not_tested,
            },
        }
    return {
        **row,
        "statistic_name": evidence.statistic_name,
        "statistic": evidence.statistic,
        "reason": evidence.reason,
        "details": _jsonable(evidence.details),
    }


def evidence_score(cell: dict[str, Any]) -> float:
    """-log10 p of a cell; a cell that could not decide carries no evidence (0)."""
    p = cell.get("p_value")
    if p is None or cell["decision"] == "cannot verify":
        return 0.0
    return -math.log10(max(float(p), 1e-300))


def summarise(cells: list[dict[str, Any]], significance: float) -> dict[str, dict[str, Any]]:
    """Per scheme: ROC AUC of :func:`evidence_score` between stolen and independent suspects
    (None until both kinds have cells, or when no cell could decide), detections, false accusations, "cannot verify" counts,
    and mean queries per suspect."""
    summary = {}
    for scheme in SCHEME_COLUMNS:
        group = [c for c in cells if c["scheme"] == scheme]
        if not group:
            continue
        stolen = [c for c in group if c["kind"] == "stolen"]
        independent = [c for c in group if c["kind"] == "independent"]
        auc = None
        decided = any(c["decision"] != "cannot verify" for c in group)
        if stolen and independent and decided:
            labels = [c["kind"] == "stolen" for c in group]
            auc = float(roc_auc_score(labels, [evidence_score(c) for c in group]))
        summary[scheme] = {
            "roc_auc": auc,
            "stolen": len(stolen),
            "detected": sum(c["decision"] == "stolen" for c in stolen),
            "independent": len(independent),
            "false_accusations": sum(c["decision"] == "stolen" for c in independent),
            "cannot_verify": sum(c["decision"] == "cannot verify" for c in group),
            "mean_queries": float(np.mean([c["queries"] for c in group])),
            "significance": significance,
        }
    return summary


def _served(model: Classifier, output: str = "probs") -> LocalOracle:
    """``model`` served in-process to the verifier (no defense)."""
    return LocalOracle.for_new_client(
        PredictionService(model, parse_output(output)), None, "verifier"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def iter_grid(document: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, dict]]]:
    """(suspect row, {scheme: cell}) for each suspect in the document, in run order."""
    by_suspect: dict[str, dict[str, dict]] = {}
    for cell in document["cells"]:
        by_suspect.setdefault(cell["suspect"], {})[cell["scheme"]] = cell
    for suspect in document["suspects"]:
        yield suspect, by_suspect.get(suspect["suspect"], {})
