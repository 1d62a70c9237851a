"""Scenarios: a typed description of an extraction experiment, loadable from TOML.

A scenario names a victim recipe, the API's defense pipeline, an attack with its parameters
(and optionally named variants of them), and the grid it runs over: seeds, budgets, transfer
sets and output granularities. The runner (:mod:`modelheist.experiments.runner`) expands the
grid into runs, each of which appends one row to a results store.

    name = "knockoff-fmnist"
    seeds = [0, 1, 2]
    budgets = [500, 1000, 5000]
    transfer_sets = ["fashion-mnist", "mnist5k"]     # default: the victim's own task
    outputs = ["probs", "labels"]

    [victim]
    dataset = "fashion-mnist"
    arch = "cnn"
    epochs = 5

    [attack]
    name = "knockoff"
    params = { epochs = 60 }

    [attack.variants]                                 # optional; default: one, "default"
    t1 = { temperature = 1.0 }
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelheist.errors import ModelheistError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VictimRecipe(_Strict):
    """How the owner trains the victim (one per seed)."""

    dataset: str
    arch: str
    epochs: int = Field(5, ge=1)
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)


class AttackPlan(_Strict):
    """The attack, its parameters, and named variants of them (each run in full)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"default": {}})
    surrogate: str | None = None  # the attacker's network (default: the victim's, as PRADA)
    transfer_labels: bool = False  # the transfer set's own labels, to the variants using them

    @field_validator("variants")
    @classmethod
    def _some_variant(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not value:
            raise ValueError("give at least one variant")
        for name, params in value.items():
            for key, param in params.items():
                if isinstance(param, dict):  # `a-0.5 = {...}` reads as a table "a-0", key "5"
                    raise ValueError(
                        f"variant {name!r}: {key!r} is a table, not a parameter; a dot in a "
                        f'variant\'s name splits it (quote the name: "{name}.{key}")'
                    )
        return value

    def params_of(self, variant: str) -> dict[str, Any]:
        return {**self.params, **self.variants[variant]}


class Scenario(_Strict):
    """One experiment: a victim recipe, an API pipeline, an attack, and the grid of runs."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,80}$")
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    budgets: list[int] = Field(min_length=1)
    transfer_sets: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=lambda: ["probs"], min_length=1)
    defenses: list[str] = Field(default_factory=list)
    victim: VictimRecipe
    attack: AttackPlan

    @field_validator("budgets")
    @classmethod
    def _positive_budgets(cls, value: list[int]) -> list[int]:
        if min(value) < 1:
            raise ValueError("budgets must be at least 1 query")
        return value

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a scenario file; any problem is one line naming the file and the field."""
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ModelheistError(f"no scenario file {path}") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ModelheistError(f"{path} is not a TOML scenario: {exc}") from None
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "(top level)"
            raise ModelheistError(f"{path}: {where}: {first['msg']}") from None

    def identity(self, variant: str) -> dict[str, Any]:
        """What must not change between runs stored under this scenario's name and variant:
        everything but the grid (seeds, budgets, transfer sets, outputs can grow) and the
        other variants."""
        return {
            "victim": self.victim.model_dump(),
            "defenses": list(self.defenses),
            "attack": self.attack.name,
            "surrogate": self.attack.surrogate,
            "transfer_labels": self.attack.transfer_labels,
            "params": self.attack.params_of(variant),
        }

    def fingerprint(self, variant: str) -> str:
        text = json.dumps(self.identity(variant), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def first_difference(stored: Any, current: Any, path: str = "") -> str | None:
    """The first field where two identities differ, as ``path: stored -> current``."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            where = f"{path}.{key}" if path else key
            if key not in stored or key not in current:
                return (
                    f"{where}: {stored.get(key, '(absent)')!r} -> {current.get(key, '(absent)')!r}"
                )
            found = first_difference(stored[key], current[key], where)
            if found:
                return found
        return None
    if stored != current:
        return f"{path}: {stored!r} -> {current!r}"
    return None
