"""Parsing defense specs (``round:2``, ``top-k:3``, ``labels``, ``probs``) into stages.

A spec is ``NAME`` or ``NAME:ARGS``; ARGS are comma-separated, positional or ``key=value``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from modelheist.defenses.base import Defense
from modelheist.defenses.granularity import LabelsOnly, Rounding, TopK
from modelheist.defenses.perturbation import GaussianNoise, ReverseSigmoid
from modelheist.errors import ModelheistError

DEFENSES: dict[str, type[Defense]] = {
    cls.name: cls for cls in (Rounding, TopK, LabelsOnly, ReverseSigmoid, GaussianNoise)
}
#: Aliases for the full-probability output, which needs no stage.
FULL_OUTPUT = ("probs", "probabilities")


def _coerce(value: str, annotation: object) -> object:
    kind = (
        annotation
        if isinstance(annotation, type)
        else {"int": int, "float": float}.get(str(annotation), str)
    )
    return kind(value)


def parse_defense(spec: str) -> Defense:
    """Build the stage a spec names; one clear error for an unknown name or bad argument."""
    name, _, args = spec.strip().partition(":")
    if name not in DEFENSES:
        known = ", ".join([*FULL_OUTPUT[:1], *DEFENSES])
        raise ModelheistError(f"unknown output/defense spec {spec!r}; known: {known}")
    cls: Callable[..., Defense] = DEFENSES[name]
    params = [p for p in inspect.signature(cls).parameters.values() if p.name != "self"]
    positional: list[object] = []
    keywords: dict[str, object] = {}
    try:
        for i, token in enumerate(filter(None, (t.strip() for t in args.split(",")))):
            key, eq, value = token.partition("=")
            if eq:
                param = next((p for p in params if p.name == key), None)
                if param is None:
                    raise ModelheistError(f"{name}: unknown argument {key!r}")
                keywords[key] = _coerce(value, param.annotation)
            else:
                if i >= len(params):
                    raise ModelheistError(f"{name}: too many arguments in {spec!r}")
                positional.append(_coerce(token, params[i].annotation))
        return cls(*positional, **keywords)
    except (ValueError, TypeError) as exc:
        raise ModelheistError(f"bad arguments in spec {spec!r}: {exc}") from None


def parse_output(spec: str) -> list[Defense]:
    """Stages for an ``--output`` spec: ``probs`` (no stage), ``labels``, ``top-k:K``, ``round:N``."""
    return [] if spec.strip() in FULL_OUTPUT else [parse_defense(spec)]
