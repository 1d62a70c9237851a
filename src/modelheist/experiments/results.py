"""The results store: one JSON Lines file per benchmark, one row per run.

Every number in the documentation comes from a row here. A row records what was run and where:
the command, the commit, the date, the machine, the versions of Python and the libraries that
shape the numbers, the seed, and the metrics (including the queries the oracle counted).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from modelheist.errors import ModelheistError

#: Libraries whose versions a row records.
PACKAGES = ("modelheist", "torch", "numpy", "scipy", "scikit-learn", "fastapi", "uvicorn")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None


def _commit(root: Path, store_folder: Path | None = None) -> tuple[str, list[str]]:
    """The checkout's commit, marked ``+dirty`` when tracked files have changed since, and the
    changed files. Rows already appended to a results store in ``store_folder`` are listed but
    do not mark it dirty: they are data, not code, and a benchmark resumed (or a second one run
    after the first) would otherwise misreport the commit its code came from."""
    head = (_git(root, "rev-parse", "--short", "HEAD") or "").strip() or None
    if head is None:
        return "unknown", []
    status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    changed = sorted(line[3:] for line in status.splitlines() if line.strip())
    store_prefix = _git(store_folder, "rev-parse", "--show-prefix") if store_folder else None
    code = [
        name
        for name in changed
        if not (store_prefix and name.startswith(store_prefix) and name.endswith(".jsonl"))
    ]
    return head + ("+dirty" if code else ""), changed


def environment(root: Path | None = None, store_folder: Path | None = None) -> dict[str, Any]:
    """Where and with what a run happens: commit, date, machine and package versions (the
    results store's own rows in ``store_folder`` do not count as changes to the code)."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    # MODELHEIST_COMMIT: the commit a copy of the checkout on another machine was made from,
    # when that copy carries no git history or a stale one
    given = os.environ.get("MODELHEIST_COMMIT", "")
    commit, changed = _commit(root or Path.cwd(), store_folder)
    source = "git"
    if given:
        commit, changed, source = given, [], "MODELHEIST_COMMIT"
    return {
        "commit": commit,
        **({"commit_source": source} if source != "git" else {}),
        **({"changed_files": changed} if changed else {}),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, "
            f"Python {platform.python_version()}"
        ),
        "device": _device_name(),
        "versions": versions,
    }


def _device_name() -> str:
    """Where networks are trained (``MODELHEIST_DEVICE``), with the GPU's model if any."""
    import torch

    from modelheist.models.device import training_device

    device = training_device()
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def _shown(script: Path) -> str:
    """The script as the user would type it: relative to the working folder where it can be."""
    try:
        return str(script.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(script)


class ResultsStore:
    """Rows appended to ``path`` (JSON Lines), each written whole and flushed to disk."""

    def __init__(self, path: str | Path, command: str | None = None):
        self.path = Path(path)
        self.command = command  # None: the running script and its arguments
        self._environment: dict[str, Any] | None = None

    def freeze_environment(self) -> None:
        """Record the commit and versions now, when the code that will run is loaded, rather
        than at each row (a checkout edited during a long run would misreport it)."""
        self._environment = self._current_environment()

    def _current_environment(self) -> dict[str, Any]:
        folder = self.path.resolve().parent
        return environment(folder, store_folder=folder)

    def append(self, row: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """Append ``row`` (its metrics and parameters) with the command and environment."""
        record = {
            "command": self.command
            or " ".join(["python", _shown(Path(sys.argv[0])), *sys.argv[1:]]),
            **(self._environment or self._current_environment()),
            "seed": seed,
            **row,
        }
        line = (json.dumps(record, sort_keys=False, allow_nan=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write on an O_APPEND descriptor: processes appending to one store at once (a
        # benchmark run with --jobs) never interleave their rows.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first; a line that does not parse is a clear error."""
        if not self.path.exists():
            return []
        rows = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ModelheistError(f"{self.path}:{number} is not a JSON row: {exc}") from None
        return rows
