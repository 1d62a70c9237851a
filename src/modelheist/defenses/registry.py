"""Parsing defense specs (``round:2``, ``top-k:3``, ``labels``, ``probs``) into stages.

A spec is ``NAME`` or ``NAME:ARGS``; ARGS are comma-separated, positional or ``key=value``,
converted to the types of the stage's constructor. A secret is never given inline: a stage
takes it as a file (``key_file=PATH``, :class:`~modelheist.defenses.secrets.SecretFile`),
checked here, when the spec is read.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from modelheist.defenses.base import Defense
from modelheist.defenses.dawn import Dawn
from modelheist.defenses.granularity import LabelsOnly, Rounding, TopK
from modelheist.defenses.history import InputHistory
from modelheist.defenses.misinformation import AdaptiveMisinformation
from modelheist.defenses.ood import MaxSoftmaxOod, OodClassifier
from modelheist.defenses.perturbation import GaussianNoise, ReverseSigmoid
from modelheist.defenses.prada import Prada
from modelheist.defenses.proof_of_work import ProofOfWork
from modelheist.defenses.secrets import INLINE_SECRET_NAMES, SecretFile
from modelheist.errors import ModelheistError

DEFENSES: dict[str, type[Defense]] = {}
#: Aliases for the full-probability output, which needs no stage.
FULL_OUTPUT = ("probs", "probabilities")


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Make ``cls`` available to specs under ``cls.name`` (usable as a class decorator)."""
    if not getattr(cls, "name", "") or ":" in cls.name or cls.name in FULL_OUTPUT:
        raise ValueError(f"{cls.__name__} needs a registry name without ':'")
    existing = DEFENSES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"a defense named {cls.name!r} is already registered")
    DEFENSES[cls.name] = cls
    return cls


for _stage in (
    Rounding,
    TopK,
    LabelsOnly,
    ReverseSigmoid,
    GaussianNoise,
    InputHistory,
    Prada,
    MaxSoftmaxOod,
    OodClassifier,
    AdaptiveMisinformation,
    ProofOfWork,
    Dawn,
):
    register_defense(_stage)


def _coerce(value: str, annotation: Any, name: str) -> object:
    """``value`` as the constructor's annotated type (``X | None`` takes X)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is SecretFile:
        secret = SecretFile(value)
        secret.check()
        return secret
    if annotation is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if annotation in (int, float, str):
        return annotation(value)
    return value


def parse_defense(spec: str) -> Defense:
    """Build the stage a spec names; one clear error for an unknown name or bad argument."""
    name, _, args = spec.strip().partition(":")
    if name not in DEFENSES:
        known = ", ".join([*FULL_OUTPUT[:1], *DEFENSES])
        raise ModelheistError(f"unknown output/defense spec {spec!r}; known: {known}")
    cls = DEFENSES[name]
    hints = typing.get_type_hints(cls.__init__)
    params = [p for p in inspect.signature(cls).parameters.values() if p.name != "self"]
    positional: list[object] = []
    keywords: dict[str, object] = {}
    try:
        for i, token in enumerate(filter(None, (t.strip() for t in args.split(",")))):
            key, eq, value = token.partition("=")
            if eq:
                param = next((p for p in params if p.name == key), None)
                if param is None and key in INLINE_SECRET_NAMES:
                    raise ModelheistError(
                        f"{name}: secrets are never given inline; put it in a file "
                        f"(`modelheist keys secret PATH`) and give key_file=PATH"
                    )
                if param is None:
                    raise ModelheistError(f"{name}: unknown argument {key!r}")
                keywords[key] = _coerce(value, hints.get(key, str), key)
            else:
                if i >= len(params):
                    raise ModelheistError(f"{name}: too many arguments in {spec!r}")
                positional.append(_coerce(token, hints.get(params[i].name, str), params[i].name))
        return cls(*positional, **keywords)
    except (ValueError, TypeError) as exc:
        raise ModelheistError(f"bad arguments in spec {spec!r}: {exc}") from None


def parse_output(spec: str) -> list[Defense]:
    """Stages for an ``--output`` spec: ``probs`` (no stage), ``labels``, ``top-k:K``, ``round:N``."""
    return [] if spec.strip() in FULL_OUTPUT else [parse_defense(spec)]
