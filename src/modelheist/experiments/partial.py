"""Keeping what an interrupted attack bought (``modelheist attack`` exit status 3).

:func:`save_interrupted` writes the query log (plain arrays) and ``interrupted.json`` at once;
:func:`add_partial_surrogate` then trains a surrogate on those answers and saves it beside them.
The two are separate so that the log is safe on disk before the (interruptible) training starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.progress import Progress

from modelheist.attacks.interruption import AttackInterrupted
from modelheist.models.store import save_model

LOG = "query_log.npz"
REPORT = "interrupted.json"


def unused_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def save_interrupted(stop: AttackInterrupted, folder: Path | None, seed: int) -> dict[str, Any]:
    """Write the query log and ``interrupted.json`` to ``folder`` (None: a new
    ``ATTACK-partial`` folder here); return the report."""
    folder = folder or unused_folder(Path(f"{stop.attack}-partial"))
    folder.mkdir(parents=True)
    stop.log.save(folder / LOG)  # first: what follows may be cut short too
    document = {
        "attack": stop.attack,
        "interrupted": str(stop.reason),
        "queries_used": len(stop.log),
        "folder": str(folder),
        "partial_surrogate": False,
        "params": stop.params,
        "seed": seed,
    }
    _write(folder / REPORT, document)
    return document


def add_partial_surrogate(
    stop: AttackInterrupted, document: dict[str, Any], progress: Progress | None = None
) -> bool:
    """Train a surrogate on the log's answers and save it in the report's folder; return
    whether there was one to save (an all-incomplete log has none)."""
    partial = stop.partial_surrogate(progress)
    if partial is None:
        return False
    folder = Path(document["folder"])
    save_model(partial, folder, overwrite=True)
    document["partial_surrogate"] = True
    _write(folder / REPORT, document)
    return True


def _write(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")
