"""One extraction of an image-to-image model and its figures (Szyller et al., "Good Artists
Copy", 2021): PSNR and SSIM of the surrogate's outputs against the ground truth and against
the victim's outputs on the evaluation split, next to the victim's own against the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack, ExtractionResult
from modelheist.data.translation import Pairs, TranslationSet, load_translation
from modelheist.errors import ModelheistError
from modelheist.experiments.targets import http_oracle
from modelheist.models.image_quality import psnr, ssim
from modelheist.models.store import load_model
from modelheist.models.translation import SURROGATE_ARCHITECTURE, TranslationModel
from modelheist.oracle import Oracle


@dataclass(frozen=True)
class TranslationMeasurement:
    """The figures of one image-translation extraction (PSNR in dB)."""

    attack: str
    transfer_set: str
    budget: int
    queries_used: int
    victim_psnr: float | None  # the victim's outputs against the ground truth
    victim_ssim: float | None
    surrogate_psnr: float | None  # the surrogate's outputs against the ground truth
    surrogate_ssim: float | None
    psnr_to_victim: float | None  # the surrogate's outputs against the victim's
    ssim_to_victim: float | None
    seconds: float


@dataclass(frozen=True)
class TranslationEvaluation:
    """The victim's outputs on the evaluation split, computed once."""

    pairs: Pairs
    victim_outputs: np.ndarray

    @classmethod
    def of(cls, victim: TranslationModel, pairs: Pairs) -> TranslationEvaluation:
        return cls(pairs, victim.translate(pairs.x))

    @property
    def victim_quality(self) -> tuple[float, float]:
        """The victim's (PSNR, SSIM) against the ground truth."""
        return psnr(self.victim_outputs, self.pairs.y), ssim(self.victim_outputs, self.pairs.y)

    def score(self, surrogate: TranslationModel) -> dict[str, float]:
        """The surrogate's PSNR and SSIM against the ground truth and against the victim."""
        out = surrogate.translate(self.pairs.x)
        return {
            "surrogate_psnr": psnr(out, self.pairs.y),
            "surrogate_ssim": ssim(out, self.pairs.y),
            "psnr_to_victim": psnr(out, self.victim_outputs),
            "ssim_to_victim": ssim(out, self.victim_outputs),
        }


def victim_translation_split(victim: TranslationModel) -> TranslationSet:
    """The translation task and data split a saved victim was trained on (from its card)."""
    split = victim.card.training.get("split", {})
    return load_translation(
        victim.card.dataset,
        seed=split.get("seed", 0),
        pool_fraction=split.get("pool_fraction", 0.5),
        validation_fraction=split.get("validation_fraction", 0.1),
    )


@dataclass
class TranslationTarget:
    """Where a translation attack's queries go, what it holds and what it is measured on."""

    oracle: Oracle
    evaluation: TranslationEvaluation | None
    pool: np.ndarray
    transfer_name: str


def resolve_translation_target(
    victim_dir: Path | None,
    target: str | None,
    api_key: str | None,
    transfer_set: str | None,
) -> TranslationTarget:
    """Resolve --victim / --target / --api-key / --transfer-set for ``attack translate``: the
    attacker's images are the pool of a translation task (``--transfer-set``, by default the
    victim's own task at its split), each an input of the victim's domain."""
    if victim_dir is None and target is None:
        raise ModelheistError("name the victim: --victim DIR or --target URL --api-key KEY")
    remote = http_oracle(target, api_key) if target is not None else None
    if remote is not None and remote.output_shape is None:
        raise ModelheistError(
            f"{target} serves a classifier; `attack translate` extracts image-to-image models"
        )
    victim = evaluation = None
    if victim_dir is not None:
        victim = load_model(victim_dir)
        if not victim.card.translates:
            raise ModelheistError(
                f"{victim_dir} is a classifier; `attack translate` extracts image-to-image models"
            )
        data = victim_translation_split(victim)  # type: ignore[arg-type]
        evaluation = TranslationEvaluation.of(victim, data.test)  # type: ignore[arg-type]
        if transfer_set is None or transfer_set == data.name:
            transfer_set, pool = data.name, data.pool.x
        else:
            pool = load_translation(transfer_set).pool.x
    else:
        if transfer_set is None:
            raise ModelheistError(
                "name the attacker's images: --transfer-set TASK (e.g. fashion-mnist-sr)"
            )
        pool = load_translation(transfer_set).pool.x
    oracle: Oracle
    if remote is not None:
        oracle = remote
    else:
        assert victim is not None
        oracle = LocalOracle.for_new_client(PredictionService(victim), None)  # type: ignore[arg-type]
    return TranslationTarget(oracle, evaluation, pool, transfer_set)


def measure_translation(
    attack: ExtractionAttack,
    where: TranslationTarget,
    budget: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[ExtractionResult, TranslationMeasurement]:
    """Run ``attack`` within ``budget`` queries and measure its surrogate (None where there is
    no local copy of the victim to measure against)."""
    architecture = str(getattr(attack, "arch", SURROGATE_ARCHITECTURE))  # its partial surrogate's
    knowledge = AttackerKnowledge(where.pool, budget, architecture, seed)
    result = attack.run(where.oracle, knowledge, progress)
    figures: dict[str, Any] = dict.fromkeys(
        (
            "victim_psnr",
            "victim_ssim",
            "surrogate_psnr",
            "surrogate_ssim",
            "psnr_to_victim",
            "ssim_to_victim",
        )
    )
    if where.evaluation is not None:
        figures["victim_psnr"], figures["victim_ssim"] = where.evaluation.victim_quality
        figures.update(where.evaluation.score(result.surrogate))  # type: ignore[arg-type]
    measurement = TranslationMeasurement(
        attack=attack.name,
        transfer_set=where.transfer_name,
        budget=budget,
        queries_used=result.queries_used,
        seconds=result.seconds,
        **figures,
    )
    return result, measurement
