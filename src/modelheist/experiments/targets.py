"""Where an attack or a verification sends its queries, and what its result is measured
against: a model folder served in-process, or a URL with an API key (what ``modelheist attack``
and ``modelheist verify`` resolve from ``--victim`` / ``--target`` / ``--api-key``).

With a URL the server decides the output granularity; a model folder given as well is used only
to measure the surrogate (the lab setting). A model folder alone is served in-process at the
requested granularity to a fresh client, rebuilt on the data split recorded on its card.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelheist.api.http_client import HttpOracle
from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.data.registry import Dataset, attacker_transfer_set, load_dataset
from modelheist.data.transforms import fit_to_shape
from modelheist.defenses.registry import parse_output
from modelheist.errors import ModelheistError
from modelheist.experiments.extraction import Evaluation
from modelheist.models.classifier import Classifier
from modelheist.models.store import load_card, load_model
from modelheist.oracle import Oracle
from modelheist.oracle.inputs import takes_text


def http_oracle(target: str, api_key: str | None, output: str | None = None) -> HttpOracle:
    """The oracle of a served model; the server, not the caller, sets the output."""
    if not api_key:
        raise ModelheistError("--target needs --api-key KEY (or MODELHEIST_API_KEY)")
    if output is not None:
        raise ModelheistError("--output applies to a local --victim; the server sets its own")
    return HttpOracle(target, api_key)


def victim_split(victim: Classifier) -> Dataset:
    """The data split a saved victim was trained on (recorded on its card; a card from before
    the validation split has none). An image-to-image model's task is not a classification
    set: it is refused in one line (:mod:`modelheist.experiments.translation` has its own)."""
    if victim.card.translates:
        raise ModelheistError(
            f"the {victim.card.architecture} model of {victim.card.dataset} is an image-to-image "
            "model; this command applies to classifiers"
        )
    split = victim.card.training.get("split", {"seed": 0, "pool_fraction": 0.5})
    return load_dataset(
        victim.card.dataset,
        seed=split["seed"],
        pool_fraction=split["pool_fraction"],
        validation_fraction=split.get("validation_fraction", 0.0),
    )


def local_oracle(
    victim: Classifier,
    output: str = "probs",
    budget: int | None = None,
    client: str = "attacker",
    service_options: dict[str, Any] | None = None,
) -> LocalOracle:
    """``victim`` served in-process at granularity ``output`` to a fresh client."""
    service = PredictionService(victim, parse_output(output), **(service_options or {}))
    return LocalOracle.for_new_client(service, budget, client)


@dataclass
class AttackTarget:
    """Where an attack's queries go and what its surrogate is measured against."""

    oracle: Oracle
    victim: Classifier | None  # a local copy, for measuring only when the queries go to a URL
    evaluation: Evaluation | None
    transfer_set: np.ndarray
    transfer_name: str
    output: str


def resolve_attack_target(
    victim_dir: Path | None,
    target: str | None,
    api_key: str | None,
    output: str | None,
    transfer_set: str | None,
    seed: int,
    local_output: str = "probs",
    service_options: dict[str, Any] | None = None,
    text: bool = False,
    needs_data: bool = True,
) -> AttackTarget:
    """Resolve --victim / --target / --api-key / --output / --transfer-set for an attack.

    Without ``transfer_set`` the attacker holds data of the victim's own task (its attacker
    pool). With a URL and no model folder the transfer set is the attacker pool of the
    dataset's default split (seed 0), or nothing for an attack that ``needs_data`` not (RANDOM
    word queries). ``text``: the attack extracts text models (Thieves), not arrays. Everything
    that can fail on the user's input fails here, before any query.
    """
    if victim_dir is None and target is None:
        raise ModelheistError("name the victim: --victim DIR or --target URL --api-key KEY")
    if transfer_set is None and victim_dir is not None:
        transfer_set = load_card(victim_dir).dataset
    remote = None
    if target is not None:
        remote = http_oracle(target, api_key, output)
        output = remote.output_kind  # connects now: an unreachable URL fails before any work
        _check_kind(takes_text(remote.input_shape), text, target, remote.output_shape is not None)
    if transfer_set is None and needs_data:
        raise ModelheistError("name the attacker's data: --transfer-set DATASET")
    if target is None:
        output = output or local_output
        parse_output(output)  # a bad spec fails before any work
    victim = evaluation = None
    if victim_dir is not None:
        victim = load_model(victim_dir)
        _check_kind(
            takes_text(victim.card.input_shape), text, str(victim_dir), victim.card.translates
        )
        data = victim_split(victim)
        pool = attacker_transfer_set(transfer_set or data.name, data)
        evaluation = Evaluation.of(victim, data.test, seed=seed, classes=data.classes)
    else:
        assert remote is not None
        if transfer_set is None:
            pool = np.empty(0, dtype=object)
        elif text:
            pool = _text_pool(transfer_set)
        else:
            pool = fit_to_shape(
                attacker_transfer_set(transfer_set, load_dataset(transfer_set)), remote.input_shape
            )
    if remote is not None:
        oracle: Oracle = remote
    else:
        assert victim is not None
        oracle = local_oracle(victim, output, service_options=service_options)
    return AttackTarget(oracle, victim, evaluation, pool, transfer_set or "", output)


def _check_kind(
    model_takes_text: bool, attack_takes_text: bool, where: str, translates: bool = False
) -> None:
    if translates:
        raise ModelheistError(
            f"{where} is an image-to-image model; extract it with `modelheist attack translate`"
        )
    if model_takes_text and not attack_takes_text:
        raise ModelheistError(
            f"{where} is a text model; the image and tabular attacks cannot query it "
            "(use `modelheist attack thieves`)"
        )
    if attack_takes_text and not model_takes_text:
        raise ModelheistError(f"{where} takes arrays, not text; this attack extracts text models")


def _text_pool(name: str) -> np.ndarray:
    """The attacker's texts of dataset ``name`` (its attacker pool at the default split)."""
    data = load_dataset(name)
    if data.kind != "text":
        raise ModelheistError(f"{name} holds {data.kind} inputs; the attack queries with text")
    return data.pool.x
