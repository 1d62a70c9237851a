"""The registry of training-time defenses for other concerns than ownership (DP-SGD against
membership inference, PGD adversarial training against evasion) and the ``NAME[:key=value,...]``
specs that name them on the command line and in experiments (``dp-sgd:epsilon=3,delta=1e-3``,
``adversarial-training:epsilon=0.125,step_size=0.005,steps=25``)."""

from __future__ import annotations

from dataclasses import fields

from modelheist.errors import ModelheistError
from modelheist.models.adversarial_training import PgdAdversarialTraining
from modelheist.models.privacy import DpSgd
from modelheist.models.training import TrainingProtection

TRAINING_DEFENSES: dict[str, type[TrainingProtection]] = {
    DpSgd.name: DpSgd,
    PgdAdversarialTraining.name: PgdAdversarialTraining,
}
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _boolean(value: str) -> bool:
    try:
        return _BOOLEANS[value.strip().lower()]
    except KeyError:
        raise ValueError(value) from None


_CASTS = {"float": float, "int": int, "str": str, "bool": _boolean}
_KINDS = {int: "an integer", _boolean: "true or false"}


def parse_training_defense(spec: str) -> TrainingProtection:
    """The defense a spec names, its parameters cast to the field types (defaults: the
    conflicts study's settings); a one-line error for an unknown name, key or value."""
    name, _, args = spec.strip().partition(":")
    kind = TRAINING_DEFENSES.get(name)
    if kind is None:
        raise ModelheistError(
            f"unknown training defense {name!r}; known: {', '.join(TRAINING_DEFENSES)}"
        )
    types = {f.name: _CASTS[str(f.type)] for f in fields(kind) if str(f.type) in _CASTS}
    options: dict[str, object] = {}
    for token in filter(None, (t.strip() for t in args.split(","))):
        key, eq, value = token.partition("=")
        if not eq or key not in types:
            raise ModelheistError(
                f"{name}: bad argument {token!r}; use {', '.join(f'{k}=...' for k in types)}"
            )
        try:
            options[key] = types[key](value)
        except ValueError:
            raise ModelheistError(
                f"{name}: {key} must be {_KINDS.get(types[key], 'a number')}, got {value!r}"
            ) from None
    return kind(**options)
