"""Measuring false claims (Liu et al., USENIX Security '24) and the countermeasures against
them: how often a malicious accuser's crafted watermark set gets an independent model declared
"stolen", under each verification rule.

Rules (``DEFENSES``):

* ``naive`` — the scheme's test alone, on the set the accuser presents;
* ``derived`` — backdoor only: the trigger set must be what its recorded seed generates
  (:meth:`~modelheist.ownership.watermark.TriggerSet.regenerates`), so it cannot have been
  optimised; with a commitment that predates the suspect, the seed could not be chosen
  against it either;
* ``screen`` — the judge's screen on independent reference models
  (:class:`~modelheist.ownership.screen.ScreenedScheme`);
* ``derived+screen`` — both.

Two accusers: ``adversarial`` crafts targeted I-FGSM examples on its own models
(:func:`~modelheist.attacks.false_claim.craft_false_watermark`); ``grinding`` (backdoor, the
answer to ``derived``) searches seeds for the generated set its models agree with most
(:func:`~modelheist.attacks.false_claim.grind_trigger_seed`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from modelheist.attacks.false_claim import (
    PAPER_EPSILON,
    FalseWatermark,
    craft_false_watermark,
    grind_trigger_seed,
)
from modelheist.errors import ModelheistError
from modelheist.experiments.targets import local_oracle
from modelheist.models.classifier import Classifier, TorchClassifier
from modelheist.ownership.base import Evidence, OwnershipScheme
from modelheist.ownership.dawn import DawnScheme
from modelheist.ownership.screen import ScreenedScheme
from modelheist.ownership.watermark import BackdoorWatermarkScheme, TriggerSet

Scheme = Literal["backdoor", "dawn"]
DEFENSES = ("naive", "derived", "screen", "derived+screen")


@dataclass(frozen=True)
class FalseClaimSettings:
    """The accuser's effort and the judge's levels."""

    examples: int = 100
    epsilon: float = PAPER_EPSILON
    steps: int = 40
    grind_tries: int = 1000
    significance: float = 0.01
    screen_significance: float = 0.01
    seed: int = 0


def defenses_for(scheme: Scheme) -> tuple[str, ...]:
    """The rules that apply to ``scheme`` (``derived`` is about seeded trigger sets)."""
    return DEFENSES if scheme == "backdoor" else ("naive", "screen")


def judged_scheme(
    scheme: Scheme,
    watermark: TriggerSet,
    defense: str,
    references: Sequence[Classifier],
    settings: FalseClaimSettings,
) -> OwnershipScheme:
    """The verification a judge runs on ``watermark`` under rule ``defense``."""
    if defense not in defenses_for(scheme):
        raise ModelheistError(f"{defense} does not apply to {scheme}")
    inner: OwnershipScheme
    if scheme == "backdoor":
        inner = BackdoorWatermarkScheme(watermark, require_derived="derived" in defense)
    else:
        inner = DawnScheme(watermark.inputs, watermark.labels, watermark.num_classes, "claimed")
    if "screen" not in defense:
        return inner
    oracles = [local_oracle(r, "labels", client="judge") for r in references]
    return ScreenedScheme(inner, oracles, settings.screen_significance)


def as_trigger_set(claimed: FalseWatermark, num_classes: int, seed: int) -> TriggerSet:
    """A crafted set in the form an owner presents a trigger set (its source says what it is;
    no seed regenerates it)."""
    return TriggerSet(claimed.inputs, claimed.labels, num_classes, "crafted", seed)


def grind_set(
    accuser: Sequence[TorchClassifier],
    source: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    settings: FalseClaimSettings,
) -> TriggerSet:
    """The grinding accuser's set: the generated set, among ``grind_tries`` seeds, that its
    models agree with most."""

    def generate(seed: int) -> tuple[np.ndarray, np.ndarray]:
        triggers = TriggerSet.generate(settings.examples, input_shape, num_classes, source, seed)
        return triggers.inputs, triggers.labels

    seed, _ = grind_trigger_seed(accuser, generate, settings.grind_tries, settings.seed)
    return TriggerSet.generate(settings.examples, input_shape, num_classes, source, seed)


def judge_rows(
    scheme: Scheme,
    claim: str,
    watermark: TriggerSet,
    suspects: Mapping[str, Classifier],
    references: Sequence[Classifier],
    settings: FalseClaimSettings,
) -> list[dict[str, Any]]:
    """One row per (suspect, rule): the verdict on ``watermark`` presented against it (the
    screens only when the judge has ``references``)."""
    rows = []
    for defense in defenses_for(scheme):
        if "screen" in defense and not references:
            continue
        judge = judged_scheme(scheme, watermark, defense, references, settings)
        for name, suspect in suspects.items():
            evidence: Evidence = judge.verify(
                local_oracle(suspect, "labels", client="judge"), settings.significance
            )
            rows.append(
                {
                    "scheme": scheme,
                    "claim": claim,
                    "defense": defense,
                    "suspect": name,
                    "decision": evidence.decision,
                    "p_value": evidence.p_value,
                    "watermark_accuracy": evidence.statistic,
                    "reason": evidence.reason,
                }
            )
    return rows


def false_claim_rows(
    scheme: Scheme,
    accuser: Sequence[TorchClassifier],
    natural: np.ndarray,
    num_classes: int,
    independent: Mapping[str, Classifier],
    references: Sequence[Classifier],
    settings: FalseClaimSettings,
    grind_source: str | None = None,
) -> tuple[list[dict[str, Any]], TriggerSet]:
    """The adversarial accuser's claim (and, for the backdoor scheme with ``grind_source``,
    the grinding accuser's) against every ``independent`` model, under every rule; and the
    crafted set."""
    crafted = craft_false_watermark(
        accuser,
        natural[: settings.examples],
        num_classes,
        settings.epsilon,
        settings.steps,
        seed=settings.seed,
    )
    claimed = as_trigger_set(crafted, num_classes, settings.seed)
    rows = judge_rows(scheme, "adversarial", claimed, independent, references, settings)
    if scheme == "backdoor" and grind_source is not None:
        ground = grind_set(accuser, grind_source, natural.shape[1:], num_classes, settings)
        rows += judge_rows(scheme, "grinding", ground, independent, references, settings)
    return rows, claimed


def success_rates(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], float]:
    """(scheme, claim, rule) -> share of suspects declared "stolen"."""
    groups: dict[tuple[str, str, str], list[bool]] = {}
    for row in rows:
        key = (row["scheme"], row["claim"], row["defense"])
        groups.setdefault(key, []).append(row["decision"] == "stolen")
    return {key: float(np.mean(values)) for key, values in groups.items()}
