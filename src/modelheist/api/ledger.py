"""The ledger: clients, API keys, budgets, defense state and the audit log, in one SQLite file.

A prediction service records every answered query here (client, time, input digest, returned
label, defense flags) in the same transaction that counts it against the client's budget and
saves the defense stages' state, and only then lets the answer leave. SQLite in WAL mode makes a
committed transaction survive a ``kill -9`` of the process, so no record of an answered query is
lost and a restarted server continues from the same state. (``synchronous=NORMAL``: a power cut,
unlike a process crash, may lose the last transactions; ``durable=True`` trades speed for that.)

API keys are random 256-bit tokens shown once; only their SHA-256 digest is stored. A fast hash
is enough for keys of that entropy (no dictionary to attack), and it keeps authentication cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelheist.errors import ModelheistError

SCHEMA_VERSION = "1"
DATABASE_NAME = "modelheist.sqlite"
KEY_PREFIX = "mh-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT UNIQUE,
    budget INTEGER,
    rate REAL,
    admin INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0,
    queries_used INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS defense_state (
    client TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    state TEXT NOT NULL,
    alarms TEXT NOT NULL,
    PRIMARY KEY (client, pipeline)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    client TEXT NOT NULL,
    model TEXT NOT NULL,
    input_sha256 TEXT NOT NULL,
    label INTEGER NOT NULL,
    flags TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_client ON audit (client);
"""


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ClientRecord:
    """A client as stored: its limits and how many queries it has been answered."""

    name: str
    budget: int | None
    rate: float | None
    admin: bool
    revoked: bool
    queries_used: int


@dataclass(frozen=True)
class AuditRecord:
    """One answered query."""

    time: float
    client: str
    model: str
    input_sha256: str
    label: int
    flags: tuple[str, ...]


@dataclass(frozen=True)
class ClientUpdate:
    """What one committed batch changes for a client."""

    queries_used: int
    pipeline: str
    defense_state: list[dict[str, Any]]
    alarms: list[str]


class Ledger:
    """SQLite-backed client and audit store; thread-safe (one connection behind a lock)."""

    def __init__(self, connection: sqlite3.Connection, path: Path | None):
        self._db = connection
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    def open(cls, state_dir: Path | None, durable: bool = False) -> Ledger:
        """Open (creating if needed) the ledger of a state folder; None: a private in-memory one."""
        if state_dir is None:
            db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            path = None
        else:
            state_dir = Path(state_dir)
            if state_dir.exists() and not state_dir.is_dir():
                raise ModelheistError(f"state folder {state_dir} is a file, not a folder")
            state_dir.mkdir(parents=True, exist_ok=True)
            path = state_dir / DATABASE_NAME
            try:
                db = sqlite3.connect(
                    path, check_same_thread=False, isolation_level=None, timeout=10.0
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            except sqlite3.DatabaseError as exc:
                raise ModelheistError(f"cannot open the state database {path}: {exc}") from None
        try:
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise ModelheistError(
                    f"state database {path} has schema {row[0]}, this modelheist reads "
                    f"{SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as exc:
            raise ModelheistError(f"{path} is not a modelheist state database: {exc}") from None
        return cls(db, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- clients -------------------------------------------------------------------------------

    def add_client(
        self,
        name: str,
        budget: int | None = None,
        rate: float | None = None,
        admin: bool = False,
        with_key: bool = True,
        replace: bool = False,
    ) -> str | None:
        """Create a client and return its new API key (shown once), or None without a key.

        ``replace`` resets an existing client of that name (usage, state) instead of refusing.
        """
        if not name or len(name) > 128 or not name.isprintable():
            raise ModelheistError("a client name must be 1 to 128 printable characters")
        if budget is not None and budget < 1:
            raise ModelheistError(f"a client's budget must be at least 1 query, got {budget}")
        if rate is not None and not rate > 0:
            raise ModelheistError(f"a client's rate must be positive, got {rate}")
        key = KEY_PREFIX + secrets.token_urlsafe(32) if with_key else None
        digest = key_digest(key) if key else None
        with self._lock, self._transaction():
            exists = self._db.execute("SELECT 1 FROM clients WHERE name=?", (name,)).fetchone()
            if exists and not replace:
                raise ModelheistError(f"client {name!r} already exists")
            self._db.execute("DELETE FROM clients WHERE name=?", (name,))
            self._db.execute("DELETE FROM defense_state WHERE client=?", (name,))
            self._db.execute(
                "INSERT INTO clients (name, key_sha256, budget, rate, admin, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, digest, budget, rate, int(admin), time.time()),
            )
        return key

    def revoke(self, name: str) -> None:
        with self._lock, self._transaction():
            cursor = self._db.execute("UPDATE clients SET revoked=1 WHERE name=?", (name,))
            if cursor.rowcount == 0:
                raise ModelheistError(f"unknown client {name!r}")

    def client(self, name: str) -> ClientRecord | None:
        return self._one("WHERE name=?", (name,))

    def client_for_key(self, key: str) -> ClientRecord | None:
        return self._one("WHERE key_sha256=?", (key_digest(key),))

    def clients(self) -> list[ClientRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, budget, rate, admin, revoked, queries_used FROM clients ORDER BY name"
            ).fetchall()
        return [_client(row) for row in rows]

    def _one(self, where: str, args: tuple[Any, ...]) -> ClientRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, budget, rate, admin, revoked, queries_used FROM clients " + where,
                args,
            ).fetchone()
        return None if row is None else _client(row)

    # -- defense state and the audit log -------------------------------------------------------

    def defense_state(self, client: str, pipeline: str) -> tuple[list[dict[str, Any]], list[str]]:
        """The saved state of ``pipeline``'s stages for ``client`` (empty lists if none)."""
        with self._lock:
            row = self._db.execute(
                "SELECT state, alarms FROM defense_state WHERE client=? AND pipeline=?",
                (client, pipeline),
            ).fetchone()
        return ([], []) if row is None else (json.loads(row[0]), json.loads(row[1]))

    def commit(self, updates: dict[str, ClientUpdate], records: Sequence[AuditRecord]) -> None:
        """Record a batch of answered queries and the client updates, all or nothing."""
        with self._lock, self._transaction():
            for name, update in updates.items():
                self._db.execute(
                    "UPDATE clients SET queries_used=? WHERE name=?", (update.queries_used, name)
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO defense_state VALUES (?, ?, ?, ?)",
                    (
                        name,
                        update.pipeline,
                        json.dumps(update.defense_state),
                        json.dumps(update.alarms),
                    ),
                )
            self._db.executemany(
                "INSERT INTO audit (time, client, model, input_sha256, label, flags) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (r.time, r.client, r.model, r.input_sha256, r.label, json.dumps(r.flags))
                    for r in records
                ),
            )

    def audit(self, client: str | None = None) -> list[AuditRecord]:
        """The audit log (of one client), oldest first."""
        query = "SELECT time, client, model, input_sha256, label, flags FROM audit"
        args: tuple[Any, ...] = ()
        if client is not None:
            query, args = query + " WHERE client=?", (client,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [
            AuditRecord(t, c, m, d, int(label), tuple(json.loads(f)))
            for t, c, m, d, label, f in rows
        ]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        """Leave no transaction open (SQLite does not always roll back a failed one itself)."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error is worth reporting
                self._db.execute("ROLLBACK")


def _client(row: Iterable[Any]) -> ClientRecord:
    name, budget, rate, admin, revoked, used = row
    return ClientRecord(name, budget, rate, bool(admin), bool(revoked), int(used))
