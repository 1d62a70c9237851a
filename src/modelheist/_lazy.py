"""Lazy re-exports for package ``__init__`` files (PEP 562).

A package's ``__init__`` names its public API without importing it: ``import
modelheist.models.classifier`` then loads that module alone, not the whole package, so that
no package import drags in a layer above it (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``name`` from the submodule
    ``exports[name]`` (relative to the package) on first access."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
