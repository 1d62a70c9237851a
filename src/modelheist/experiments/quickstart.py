"""The quickstart: the main job of ``modelheist quickstart`` (docs/architecture.md, "The CLI").

Trains a CNN victim on fashion-mnist (mnist5k when fashion-mnist is absent), then runs Knockoff
Nets at three budgets in three settings: an in-distribution transfer set, an out-of-distribution
one, and labels-only answers. ``fast`` shrinks training so that the whole job takes under a
minute on two cores (the numbers are then only indicative).
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
from rich.progress import Progress

from modelheist import __version__
from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.attacks.knockoff import KnockoffNets
from modelheist.data.registry import (
    Dataset,
    Split,
    attacker_transfer_set,
    dataset_available,
    load_dataset,
)
from modelheist.defenses.ood import calibrate_threshold
from modelheist.defenses.registry import parse_defense, parse_output
from modelheist.experiments.extraction import Evaluation, ExtractionMeasurement, measure_extraction
from modelheist.models.classifier import Classifier
from modelheist.models.training import TrainConfig, train_model
from modelheist.ownership.dawn import DawnScheme

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuickstartConfig:
    """What the quickstart runs; ``fast()`` and ``full()`` are the two presets."""

    budgets: tuple[int, ...] = (500, 1000, 5000)
    victim_epochs: int = 4
    victim_train_size: int | None = None
    independent_train_size: int | None = 8_000
    attack_epochs: int = 10
    attack_min_steps: int = 300
    seed: int = 0

    @classmethod
    def full(cls, seed: int = 0) -> QuickstartConfig:
        return cls(seed=seed)

    def shortened(self) -> str:
        """What this run cuts short of the attack as users run it, in one sentence."""
        defaults = KnockoffNets()
        return (
            f"a shortened run: the attack trains its surrogate {self.attack_epochs} epochs (at "
            f"least {self.attack_min_steps} steps) instead of its defaults ({defaults.epochs} "
            f"epochs, at least {defaults.min_steps} steps); "
            "`modelheist experiment run examples/knockoff-fashion-mnist.toml` runs it in full "
            "(docs/benchmarks.md gives its figures over three seeds)"
        )

    @classmethod
    def fast(cls, seed: int = 0) -> QuickstartConfig:
        return cls(
            victim_epochs=2,
            victim_train_size=8_000,
            attack_epochs=2,
            attack_min_steps=40,
            seed=seed,
        )


def choose_datasets() -> tuple[str, str]:
    """(victim dataset, out-of-distribution transfer set) available on this machine."""
    if dataset_available("fashion-mnist"):
        return "fashion-mnist", "mnist5k"
    log.warning("fashion-mnist is not installed; the quickstart uses mnist5k")
    return "mnist5k", "digits"


def _subsample(data: Dataset, size: int | None, seed: int) -> Dataset:
    if size is None or size >= len(data.train):
        return data
    idx = np.random.default_rng(seed).permutation(len(data.train))[:size]
    return replace(data, train=Split(data.train.x[idx], data.train.y[idx]))


def quickstart_detectors(victim: Classifier, data: Dataset) -> list[str]:
    """The detectors the quickstart's API runs with the flag policy: PRADA at its paper's
    delta, and the maximum-softmax OOD detector at a 5% false-positive rate on the validation
    split (clients flagged when half of their last 50 queries are)."""
    confidence = victim.predict_proba(data.validation.x).max(axis=1)
    threshold = float(np.clip(calibrate_threshold(confidence, 0.05), 1e-6, 1 - 1e-6))
    return ["prada:delta=0.95", f"ood-msp:threshold={threshold!r},window=50,share=0.5"]


#: DAWN's watermark rate in the quickstart's API (the paper's r_w) and the significance of each
#: surrogate's test against its own client's watermark set.
DAWN_RATE = 0.005
DAWN_SIGNIFICANCE = 0.01


def dawn_evidence(suspect: Classifier, state, client: str, significance: float) -> dict:
    """A suspect tested against the DAWN watermark set kept in one client's stage ``state``."""
    inputs, labels = state.array("inputs"), state.array("labels")
    classes = state.values.get("classes") or suspect.card.num_classes
    scheme = DawnScheme(inputs, labels, int(classes), client)
    evidence = scheme.verify(
        LocalOracle.for_new_client(PredictionService(suspect, []), None), significance
    )
    return {
        "watermarks": len(labels),
        "p_value": evidence.p_value,
        "verdict": evidence.decision,
    }


def run_quickstart(
    config: QuickstartConfig,
    progress: Progress | None = None,
    on_result: Callable[[ExtractionMeasurement, dict[str, int | None]], None] | None = None,
) -> tuple[Classifier, dict]:
    """Train the victim, run the nine extractions against an API that runs the detectors of
    :func:`quickstart_detectors` (flag policy); return the victim and the results document,
    each run with the query at which each detector first flagged the attacker (None: never)."""
    victim_name, ood_name = choose_datasets()
    data = load_dataset(victim_name, seed=config.seed)
    train_data = _subsample(data, config.victim_train_size, config.seed)
    victim = train_model(
        train_data, "cnn", TrainConfig(epochs=config.victim_epochs, seed=config.seed), progress
    )
    transfer = {name: attacker_transfer_set(name, data) for name in (victim_name, ood_name)}
    evaluation = Evaluation.of(victim, data.test, seed=config.seed)
    settings = [(victim_name, "probs"), (ood_name, "probs"), (victim_name, "labels")]
    attack = KnockoffNets(
        epochs=config.attack_epochs,
        min_steps=config.attack_min_steps,
    )
    detectors = quickstart_detectors(victim, data)
    watermark = f"dawn:rate={DAWN_RATE},seed={config.seed}"
    runs, watermark_states = [], []
    for transfer_name, output in settings:
        for budget in config.budgets:
            stages = [parse_defense(spec) for spec in [*detectors, watermark]]
            service = PredictionService(victim, stages + parse_output(output))
            oracle = LocalOracle.for_new_client(service, budget)
            result, m = measure_extraction(
                victim,
                attack,
                transfer[transfer_name],
                evaluation,
                budget,
                output,
                transfer_name,
                config.seed,
                progress=progress,
                oracle=oracle,
            )
            states = service.client(oracle.client_id).stages
            flagged = {
                "prada_alarm": states[0].values.get("first_alarm_query"),
                "ood_alarm": states[1].values.get("first_alarm_query"),
            }
            mark = dawn_evidence(result.surrogate, states[2], oracle.client_id, DAWN_SIGNIFICANCE)
            watermark_states.append((oracle.client_id, states[2]))
            run = {
                **asdict(m),
                **flagged,
                "dawn_watermarks": mark["watermarks"],
                "dawn_p_value": mark["p_value"],
                "dawn_verdict": mark["verdict"],
            }
            runs.append(run)
            if on_result is not None:
                on_result(m, run)
    independent = train_model(
        _subsample(data, config.independent_train_size, config.seed + 1),
        "cnn",
        TrainConfig(epochs=config.victim_epochs, seed=config.seed + 1),
        progress,
    )
    # Bonferroni over the clients' sets: one accusation of the independent model at any of
    # them would be a false one.
    level = DAWN_SIGNIFICANCE / len(watermark_states)
    independent_checks = [
        {"client": client, **dawn_evidence(independent, state, client, level)}
        for client, state in watermark_states
    ]
    document = {
        "kind": "modelheist-quickstart",
        "modelheist_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "config": asdict(config),
        "victim": {
            "dataset": victim_name,
            "architecture": victim.card.architecture,
            "test_accuracy": victim.card.metrics["test_accuracy"],
            "train_size": len(train_data.train),
        },
        "attack": {"name": attack.name, "params": attack.params()},
        "note": config.shortened(),
        "detectors": detectors,
        "watermark": watermark,
        "watermark_significance": DAWN_SIGNIFICANCE,
        "runs": runs,
        "independent_model": {
            "test_accuracy": independent.card.metrics["test_accuracy"],
            "significance_per_set": level,
            "accused": sum(c["verdict"] == "stolen" for c in independent_checks),
            "checks": independent_checks,
        },
    }
    return victim, document
