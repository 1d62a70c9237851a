"""Files of a resumable experiment run (the ownership matrix, the conflicts table): a folder
written whole or not at all, a file written atomically, and JSON Lines appended one fsynced
line at a time, so that a crash loses at most the item being written and a rerun resumes."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelheist.errors import ModelheistError


def write_whole(folder: Path, write: Callable[[Path], Any]) -> None:
    """Write a folder whole or not at all: into a temporary sibling, then renamed."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    write(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def write_atomically(path: Path, text: str) -> None:
    """Write a file whole or not at all (written, flushed to disk, then renamed)."""
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def append_line(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk. A crash loses at most the line being
    written: :func:`read_lines` skips it, and the next append cuts it off first."""
    with path.open("a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(max(0, size - 65536))
            tail = handle.read()
            if not tail.endswith(b"\n"):  # a torn last line: cut back to the last newline
                cut = tail.rfind(b"\n")
                handle.truncate(size - len(tail) + cut + 1 if cut >= 0 else 0)
        handle.seek(0, os.SEEK_END)
        handle.write((json.dumps(row) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of ``path`` (none if absent; a torn last line is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def check_config(folder: Path, mine: dict[str, Any], name: str = "config.json") -> None:
    """A run folder belongs to one configuration: write ``mine`` on first use, and refuse to
    resume with another (it would mix two runs), naming what differs."""
    path = folder / name
    if not path.is_file():
        write_atomically(path, json.dumps(mine, indent=2))
        return
    try:
        theirs = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ModelheistError(f"{path} is damaged; use another folder") from None
    if theirs != mine:
        changed = sorted(
            k
            for k in set(mine) | set(theirs)
            if k not in mine or k not in theirs or mine[k] != theirs[k]
        )
        raise ModelheistError(
            f"{folder} holds a run with another configuration ({', '.join(changed)} differ); "
            "use another folder"
        )
