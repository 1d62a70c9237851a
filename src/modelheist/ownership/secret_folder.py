"""An owner's secret on disk: a new folder with one safetensors file of arrays and one JSON card
carrying a format tag; never pickle. Shared by the trigger sets, radioactive marks and
dataset-inference evidence, so that each is refused the same way when damaged or foreign."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from modelheist.errors import ModelheistError


def write_secret(
    folder: str | Path,
    arrays_file: str,
    arrays: dict[str, np.ndarray],
    card_file: str,
    card: dict[str, Any],
) -> Path:
    """Write ``arrays`` and ``card`` into a new (or empty) ``folder``."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ModelheistError(f"{folder} already exists and is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / arrays_file))
    (folder / card_file).write_text(json.dumps(card, indent=2) + "\n")
    return folder


def read_secret(
    folder: str | Path, arrays_file: str, card_file: str, format_tag: str, what: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The card and arrays of a folder :func:`write_secret` wrote with card ``format`` ==
    ``format_tag``; a missing, damaged or foreign one is a one-line error naming ``what``."""
    folder = Path(folder)
    try:
        card = json.loads((folder / card_file).read_text())
        arrays = load_file(str(folder / arrays_file))
    except FileNotFoundError:
        raise ModelheistError(f"{folder} is not a {what} folder") from None
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelheistError(f"{folder} holds a damaged {what}: {exc}") from None
    if not isinstance(card, dict) or card.get("format") != format_tag:
        raise ModelheistError(f"{folder / card_file} is not a {format_tag} card")
    return card, arrays
