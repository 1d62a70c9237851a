"""Running a :class:`~modelheist.experiments.scenario.Scenario` into a results store.

Each seed trains (or reuses) one victim, seeded with the data split, and every grid point
(variant x transfer set x output x budget) runs the attack against that victim served
in-process to a fresh client, seeded the same. Each run appends one row: the scenario, its
variant and identity, the grid point, the metrics on the validation split (where
hyper-parameters are chosen) and on the evaluation split (what is reported), and the queries
the API counted. Runs already in the store are skipped, so an interrupted grid resumes; a store
holding runs of a scenario of the same name whose identity has changed is refused, naming the
field that differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack
from modelheist.data.registry import Dataset, load_dataset
from modelheist.defenses.registry import parse_defense, parse_output
from modelheist.errors import ModelheistError
from modelheist.experiments.extraction import Evaluation, default_surrogate
from modelheist.experiments.results import ResultsStore
from modelheist.experiments.scenario import Scenario, first_difference
from modelheist.experiments.transfers import TransferSet, transfer_set
from modelheist.models.classifier import Classifier
from modelheist.models.store import load_model, save_model
from modelheist.models.victims import train_victim

log = logging.getLogger(__name__)

AttackFactory = Callable[..., ExtractionAttack]


@dataclass(frozen=True)
class RunPoint:
    """One run of a scenario's grid."""

    variant: str
    transfer_set: str
    output: str
    budget: int
    seed: int

    def key(self, scenario: str) -> tuple[Any, ...]:
        return (scenario, self.variant, self.transfer_set, self.output, self.budget, self.seed)


def _row_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        row.get("scenario"),
        row.get("variant"),
        row.get("transfer_set"),
        row.get("output"),
        row.get("budget"),
        row.get("seed"),
    )


def resolved_params(attack: ExtractionAttack) -> dict[str, Any]:
    """Every parameter the attack runs with, defaults included, as JSON values: a row records
    them so that a later change of a default cannot mix unlike runs under one name."""
    if not dataclasses.is_dataclass(attack):
        return {}
    return json.loads(json.dumps(dataclasses.asdict(attack), default=str))


def grid(scenario: Scenario, seeds: list[int] | None = None) -> Iterator[RunPoint]:
    """The runs of ``scenario`` (seed-major, so that each seed's victim is trained once)."""
    transfers = scenario.transfer_sets or [scenario.victim.dataset]
    for seed in seeds if seeds is not None else scenario.seeds:
        for variant, transfer, output, budget in itertools.product(
            scenario.attack.variants, transfers, scenario.outputs, scenario.budgets
        ):
            yield RunPoint(variant, transfer, output, budget, seed)


class ScenarioRunner:
    """Runs scenarios into a results store; victims are cached in ``victims`` (a folder)."""

    def __init__(
        self,
        store: ResultsStore,
        victims: Path,
        attacks: Mapping[str, AttackFactory] | None = None,
        progress: Progress | None = None,
    ):
        self.store = store
        self.victims = victims
        self.attacks = attacks
        self.progress = progress

    def _attack(self, scenario: Scenario, variant: str) -> ExtractionAttack:
        from modelheist.attacks.registry import ATTACKS

        known: Mapping[str, AttackFactory] = {**ATTACKS, **(self.attacks or {})}
        factory = known.get(scenario.attack.name)
        if factory is None:
            raise ModelheistError(
                f"unknown attack {scenario.attack.name!r}; known: {', '.join(known)}"
            )
        try:
            return factory(**scenario.attack.params_of(variant))
        except TypeError as exc:
            raise ModelheistError(f"{scenario.name}, variant {variant}: {exc}") from None

    def check(self, scenario: Scenario) -> None:
        """Refuse a store whose runs of this scenario's name were made with another identity,
        and attack parameters the attack does not take, before any run."""
        stored = [row for row in self.store.rows() if row.get("scenario") == scenario.name]
        for variant in scenario.attack.variants:
            attack = self._attack(scenario, variant)
            source = attack.transfer_source()
            transfers = scenario.transfer_sets or [scenario.victim.dataset]
            if source is not None and any(name != source for name in transfers):
                raise ModelheistError(
                    f"{scenario.name}, variant {variant}: its queries come from {source}, not "
                    f"the scenario's transfer sets ({', '.join(transfers)}); give it "
                    f'transfer_sets = ["{source}"]'
                )
            resolved = resolved_params(attack)
            current = scenario.identity(variant)
            for row in stored:
                if row.get("variant") != variant:
                    continue
                difference = first_difference(row.get("config"), current)
                if not difference and "attack_params" in row:
                    # the same scenario file, but an attack default may have changed since
                    found = first_difference(row["attack_params"], resolved)
                    difference = found and f"attack default {found}"
                if difference:
                    raise ModelheistError(
                        f"{self.store.path} holds runs of scenario {scenario.name!r} (variant "
                        f"{variant}) made with other settings ({difference}); rename the "
                        "scenario or use another store"
                    )
        for spec in scenario.defenses:
            parse_defense(spec)
        for spec in scenario.outputs:
            parse_output(spec)

    def run(
        self,
        scenario: Scenario,
        seeds: list[int] | None = None,
        on_row: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Run every grid point not yet in the store; return the rows appended."""
        self.check(scenario)
        self.store.freeze_environment()
        done = {_row_key(row) for row in self.store.rows()}
        todo = [p for p in grid(scenario, seeds) if p.key(scenario.name) not in done]
        rows: list[dict[str, Any]] = []
        task = (
            self.progress.add_task(f"{scenario.name}: runs", total=len(todo))
            if self.progress is not None
            else None
        )
        current_seed: int | None = None
        transfers: dict[str, TransferSet] = {}
        for point in todo:
            if point.seed != current_seed:
                transfers = {}
                data, victim = self.victim(scenario, point.seed)
                test = Evaluation.of(victim, data.test, seed=point.seed, classes=data.classes)
                validation = (
                    Evaluation.of(victim, data.validation, seed=point.seed, classes=data.classes)
                    if data.validation is not None
                    else None
                )
                current_seed = point.seed
            if point.transfer_set not in transfers:
                transfers[point.transfer_set] = transfer_set(point.transfer_set, data, point.seed)
            row = self._run(
                scenario, point, victim, transfers[point.transfer_set], test, validation
            )
            rows.append(row)
            if on_row is not None:
                on_row(row)
            if self.progress is not None and task is not None:
                self.progress.advance(task)
        return rows

    def victim(self, scenario: Scenario, seed: int) -> tuple[Dataset, Classifier]:
        """The seed's data split and victim: trained once, then loaded from the cache."""
        recipe = scenario.victim
        data = load_dataset(
            recipe.dataset, seed=seed, validation_fraction=recipe.validation_fraction
        )
        recipe_hash = hashlib.sha256(
            json.dumps(recipe.model_dump(), sort_keys=True).encode()
        ).hexdigest()[:8]
        folder = self.victims / f"{recipe.dataset}-{recipe.arch}-{recipe_hash}-seed{seed}"
        if (folder / "card.json").is_file():
            return data, load_model(folder)
        victim = train_victim(data, recipe.arch, recipe.epochs, seed, self.progress)
        save_model(victim, folder, overwrite=True)
        return data, victim

    def _run(
        self,
        scenario: Scenario,
        point: RunPoint,
        victim: Classifier,
        transfer: TransferSet,
        test: Evaluation,
        validation: Evaluation | None,
    ) -> dict[str, Any]:
        attack = self._attack(scenario, point.variant)
        stages = [parse_defense(spec) for spec in scenario.defenses] + parse_output(point.output)
        service = PredictionService(victim, stages)
        oracle = LocalOracle.for_new_client(service, point.budget)
        surrogate = scenario.attack.surrogate or default_surrogate(
            tuple(victim.card.input_shape), victim.card.architecture
        )
        labels = transfer.labels if scenario.attack.transfer_labels else None
        try:
            if labels is not None:
                attack.check_transfer_labels()
        except ModelheistError:
            labels = None  # a variant that does not use them (random sampling) goes without
        knowledge = AttackerKnowledge(transfer.x, point.budget, surrogate, point.seed, labels)
        start = time.perf_counter()
        result = attack.run(oracle, knowledge, self.progress)
        seconds = time.perf_counter() - start
        accuracy, fidelity, uniform = test.score(result.surrogate)
        metrics: dict[str, Any] = {
            "victim_accuracy": test.victim_accuracy,
            "surrogate_accuracy": accuracy,
            "fidelity_test": fidelity,
            "fidelity_uniform": uniform,
            "seconds": seconds,
        }
        if accuracy is not None and test.victim_accuracy:
            # Krishna et al.'s figure: the surrogate's accuracy as a share of the victim's
            metrics["accuracy_share"] = accuracy / test.victim_accuracy
        if validation is not None:
            metrics["victim_accuracy_validation"] = validation.victim_accuracy
            metrics["fidelity_validation"] = validation.score(result.surrogate)[1]
        if len(result.queried) and not transfer.in_distribution.all():
            metrics["in_distribution_share"] = float(
                transfer.in_distribution[result.queried].mean()
            )
        row = {
            "scenario": scenario.name,
            "variant": point.variant,
            "fingerprint": scenario.fingerprint(point.variant),
            "config": scenario.identity(point.variant),
            "attack_params": resolved_params(attack),
            "transfer_set": point.transfer_set,
            "output": point.output,
            "budget": point.budget,
            "metrics": metrics,
            "queries_counted": service.client("attacker").queries_used,
            "details": result.details,
        }
        return self.store.append(row, seed=point.seed)
