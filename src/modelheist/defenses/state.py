"""A stage's per-client state: a small JSON document and append-only numeric arrays.

A detector that keeps every past query of a client, or a watermark that keeps every input it
marked, holds state that grows with the client's history. :class:`StageState` keeps such state
as named arrays to which rows are only ever appended: in memory each is one growable buffer (so
reading it all is a view, not a copy), and the service commits only the rows appended since the
last commit, as binary records in the same SQLite transaction as the audit log
(:class:`~modelheist.api.ledger.Ledger`): a commit costs O(new rows), not O(history). Small
state (counters, thresholds) lives in ``values``, a JSON document rewritten when it changes.

The service takes a :meth:`StageState.savepoint` before each request and restores it if any
stage refuses the request, so that a refused request teaches no stage anything; it rolls back
to the last commit if the commit itself fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from modelheist.errors import StateCorruptError

#: The element types an array may hold (numbers and booleans, stored little-endian).
ARRAY_KINDS = "biuf"


@dataclass(frozen=True)
class NewRows:
    """Rows appended to one array since the last commit."""

    name: str
    rows: np.ndarray


@dataclass(frozen=True)
class StateChanges:
    """What a commit must write for one stage of one client: the values document if it changed
    (else None) and the rows appended since the last commit."""

    values: str | None
    rows: tuple[NewRows, ...]

    def __bool__(self) -> bool:
        return self.values is not None or bool(self.rows)


class _Column:
    """One append-only array: a buffer that doubles when full, and a count of rows in use."""

    def __init__(self, first: np.ndarray):
        self.buffer = np.empty((max(16, len(first)), *first.shape[1:]), first.dtype)
        self.count = 0
        self.committed = 0
        self.extend(first)

    def extend(self, rows: np.ndarray) -> None:
        needed = self.count + len(rows)
        if needed > len(self.buffer):
            grown = np.empty(
                (max(needed, 2 * len(self.buffer)), *self.buffer.shape[1:]), rows.dtype
            )
            grown[: self.count] = self.buffer[: self.count]
            self.buffer = grown
        self.buffer[self.count : needed] = rows
        self.count = needed

    def view(self) -> np.ndarray:
        out = self.buffer[: self.count]
        out.flags.writeable = False
        return out


class StageState:
    """One client's state for one stage (see the module docstring)."""

    def __init__(self, values: Mapping[str, Any] | None = None, *, read_only: bool = False):
        self._read_only = read_only
        self.values: dict[str, Any] = (
            MappingProxyType({})  # type: ignore[assignment]
            if read_only
            else json.loads(_dumps(values or {}))  # a deep copy, and JSON from the start
        )
        self._committed_values = _dumps(self.values)  # what a rollback returns to
        self._values_written = read_only  # a new state's first commit writes its values
        self._columns: dict[str, _Column] = {}

    @classmethod
    def read_only(cls) -> StageState:
        """The state of a stateless stage: empty, and any write is a bug in the stage."""
        return cls(read_only=True)

    # -- what a stage uses -----------------------------------------------------------------------

    def append(self, name: str, rows: np.ndarray) -> None:
        """Append ``rows`` (shape (n, ...)) to the array ``name``; every append to one array
        must share its dtype and row shape."""
        if self._read_only:
            raise RuntimeError("a stage declared stateless tried to keep state")
        rows = np.asarray(rows)
        if rows.ndim < 1 or rows.dtype.kind not in ARRAY_KINDS:
            raise TypeError(f"state array {name!r} takes numeric rows, got {rows.dtype}")
        column = self._columns.get(name)
        if column is None:
            self._columns[name] = _Column(rows)
            return
        if rows.dtype != column.buffer.dtype or rows.shape[1:] != column.buffer.shape[1:]:
            raise TypeError(
                f"state array {name!r} holds {column.buffer.dtype} rows of shape "
                f"{column.buffer.shape[1:]}, got {rows.dtype} of shape {rows.shape[1:]}"
            )
        column.extend(rows)

    def array(self, name: str) -> np.ndarray | None:
        """Every row appended to ``name`` so far, oldest first (a read-only view), or None."""
        column = self._columns.get(name)
        return None if column is None else column.view()

    def rows(self, name: str) -> int:
        column = self._columns.get(name)
        return 0 if column is None else column.count

    def arrays(self) -> Iterator[str]:
        return iter(self._columns)

    # -- what the service uses -------------------------------------------------------------------

    def savepoint(self) -> tuple[str, dict[str, int]]:
        return _dumps(self.values), {name: c.count for name, c in self._columns.items()}

    def restore(self, savepoint: tuple[str, dict[str, int]]) -> None:
        """Forget everything done since ``savepoint``."""
        if self._read_only:
            return
        values, counts = savepoint
        self.values = json.loads(values)
        for name in list(self._columns):
            if name in counts:
                self._columns[name].count = counts[name]
            else:
                del self._columns[name]

    def changes(self) -> StateChanges:
        values = _dumps(self.values)
        rows = tuple(
            NewRows(name, column.buffer[column.committed : column.count].copy())
            for name, column in self._columns.items()
            if column.count > column.committed
        )
        unchanged = self._values_written and values == self._committed_values
        return StateChanges(None if unchanged else values, rows)

    def mark_committed(self) -> None:
        self._committed_values = _dumps(self.values)
        self._values_written = True
        for column in self._columns.values():
            column.committed = column.count

    def rollback(self) -> None:
        """Return to the state of the last commit (the initial values if none was made)."""
        self.restore((self._committed_values, {n: c.committed for n, c in self._columns.items()}))
        self._columns = {n: c for n, c in self._columns.items() if c.count > 0}

    def summary(self) -> dict[str, Any]:
        """The values and the size of each array (what an administrator is shown)."""
        return {
            "values": dict(self.values),
            "arrays": {
                name: {"rows": c.count, "dtype": str(c.buffer.dtype), "shape": c.buffer.shape[1:]}
                for name, c in self._columns.items()
            },
        }

    @classmethod
    def from_records(
        cls,
        values: str | None,
        records: list[tuple[str, str, str, bytes]],
        where: str,
        initial: Mapping[str, Any] | None = None,
    ) -> StageState:
        """Rebuild committed state from the ledger: the values document (None: none was
        written, so ``initial``) and the appended records (array name, dtype, row shape as
        JSON, raw bytes), oldest first. Anything that does not decode raises
        :class:`StateCorruptError` naming ``where``."""
        try:
            document = json.loads(values) if values is not None else dict(initial or {})
            if not isinstance(document, dict):
                raise ValueError("the values are not a JSON object")
            state = cls(document)
            for name, dtype_text, shape_text, data in records:
                dtype = np.dtype(dtype_text)
                if dtype.kind not in ARRAY_KINDS:
                    raise ValueError(f"array {name!r} has a non-numeric type {dtype_text}")
                row_shape = tuple(int(d) for d in json.loads(shape_text))
                rows = np.frombuffer(data, dtype).reshape((-1, *row_shape))
                state.append(name, rows)
        except Exception as exc:  # whatever the damage, the client is held, not the server
            raise StateCorruptError(f"the saved state of {where} cannot be read: {exc}") from None
        state.mark_committed()
        state._values_written = values is not None  # else the next commit writes them
        return state


def _dumps(values: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(values), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"a stage's state values must be JSON: {exc}") from None


def encode_rows(rows: np.ndarray) -> tuple[str, str, bytes]:
    """(dtype, row shape as JSON, little-endian bytes) of ``rows``, as the ledger stores them."""
    little = rows.astype(rows.dtype.newbyteorder("<"), copy=False)
    return (
        little.dtype.str,
        json.dumps(list(rows.shape[1:])),
        np.ascontiguousarray(little).tobytes(),
    )
