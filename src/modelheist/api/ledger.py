"""The ledger: clients, API keys, budgets, defense state, alarms and the audit log, in one
SQLite file.

A prediction service records every answered query here (client, time, input digest, returned
label, defense flags) in the same transaction that counts it against the client's budget and
saves the defense stages' state and alarms, and only then lets the answer leave. A stage's
state is stored per stage: its small JSON document, rewritten when it changes, and its
append-only arrays as binary rows, of which a commit inserts only the new ones (O(new data)).
Alarms are structured and bounded per client (the newest :data:`MAX_ALARMS_PER_CLIENT`, with a
running count). The schema carries a version; schema 1 (one JSON row of state per client) is
migrated in place. SQLite in WAL mode makes a
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelheist.defenses.base import Alarm
from modelheist.defenses.state import StateChanges, encode_rows
from modelheist.errors import ModelheistError

SCHEMA_VERSION = 3
DATABASE_NAME = "modelheist.sqlite"
KEY_PREFIX = "mh-"
#: Alarms kept per client (the newest); older ones are dropped, their count kept.
MAX_ALARMS_PER_CLIENT = 100

_TABLES = """
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT UNIQUE,
    budget INTEGER,
    rate REAL,
    admin INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0,
    queries_used INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    review TEXT,
    alarms_total INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0,
    blocked TEXT
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
# Added by schema 2: per-stage state (a JSON document and append-only binary rows) and
# structured alarms, in place of schema 1's one JSON row per client and pipeline.
_STATE_TABLES = """
CREATE TABLE IF NOT EXISTS stage_values (
    client TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    stage INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (client, pipeline, stage)
);
CREATE TABLE IF NOT EXISTS stage_rows (
    id INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    stage INTEGER NOT NULL,
    name TEXT NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS stage_rows_of ON stage_rows (client, pipeline, stage, id);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    time REAL NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    statistic REAL,
    action TEXT NOT NULL DEFAULT 'flag'
);
CREATE INDEX IF NOT EXISTS alarms_of ON alarms (client, id);
"""


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ClientRecord:
    """A client as stored: its limits, how many queries it has been answered, how many alarms
    it raised, why it is held for review (None: it is not), and the generation of its state
    (raised by every reset, so that a running server reloads it)."""

    name: str
    budget: int | None
    rate: float | None
    admin: bool
    revoked: bool
    queries_used: int
    review: str | None = None
    alarms_total: int = 0
    generation: int = 0
    blocked: str | None = None


@dataclass(frozen=True)
class AuditRecord:
    """One answered query."""

    time: float
    client: str
    model: str
    input_sha256: str
    label: int  # -1: an image-to-image model's answer (no class)
    flags: tuple[str, ...]


@dataclass(frozen=True)
class ClientUpdate:
    """What one committed batch changes for a client: the inputs answered, the state changes
    of each stage of ``pipeline`` (by position) and the alarms raised, all learned from the
    client's state of ``generation``."""

    answered: int
    generation: int
    pipeline: str
    stages: dict[int, StateChanges] = field(default_factory=dict)
    alarms: tuple[Alarm, ...] = ()


@dataclass(frozen=True)
class SavedStage:
    """One stage's committed state for a client, as stored."""

    values: str | None
    records: list[tuple[str, str, str, bytes]]  # (array name, dtype, row shape JSON, bytes)


_CLIENT_COLUMNS = (
    "name, budget, rate, admin, revoked, queries_used, review, alarms_total, generation, blocked"
)


class Ledger:
    """SQLite-backed client and audit store; thread-safe (one connection behind a lock)."""

    def __init__(self, connection: sqlite3.Connection, path: Path | None):
        self._db = connection
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    def open(cls, state_dir: Path | None, durable: bool = False) -> Ledger:
        """Open (creating if needed) the ledger of a state folder; None: a private in-memory one.

        A schema-1 or schema-2 database is migrated to the current schema in one transaction;
        a database written by a newer modelheist, or one that is not a modelheist ledger, is
        refused unchanged.
        """
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
            except sqlite3.DatabaseError as exc:
                raise ModelheistError(f"cannot open the state database {path}: {exc}") from None
        ledger = cls(db, path)
        try:
            with ledger._transaction():
                ledger._prepare_schema()  # refuses before writing anything
            if path is not None:  # WAL: a committed transaction survives a kill -9
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ModelheistError(f"{path} is not a modelheist state database: {exc}") from None
        except ModelheistError:
            db.close()
            raise
        return ledger

    def _prepare_schema(self) -> None:
        """Create a new ledger, migrate an old one, or refuse one this version cannot read."""
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            if tables:
                raise ModelheistError(
                    f"{self.path} is an SQLite database but not a modelheist state database"
                )
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            for statement in (_TABLES + _STATE_TABLES).split(";"):
                if statement.strip():
                    db.execute(statement)
            return
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        # schema 1 created its tables before writing its version: a crash between left none
        version = row[0] if row is not None else ("1" if "clients" in tables else None)
        if row is None and version == "1":
            db.execute("INSERT INTO meta VALUES ('schema', '1')")
        if version == str(SCHEMA_VERSION):
            return
        if version == "1":
            self._migrate_from_1()
            self._migrate_from_2()
            return
        if version == "2":
            self._migrate_from_2()
            return
        raise ModelheistError(
            f"state database {self.path} has schema {version}, written by another modelheist; "
            f"this one reads schemas 1 to {SCHEMA_VERSION} (nothing was changed)"
        )

    def _migrate_from_2(self) -> None:
        """Schema 2 -> 3: a client may be blocked by a detector (``clients.blocked``, the
        reason), and each alarm records the action its stage's policy took (``flag`` for every
        earlier alarm). Both are new columns; nothing stored changes."""
        db = self._db
        columns = {r[1] for r in db.execute("PRAGMA table_info(clients)")}
        if "blocked" not in columns:
            db.execute("ALTER TABLE clients ADD COLUMN blocked TEXT")
        columns = {r[1] for r in db.execute("PRAGMA table_info(alarms)")}
        if "action" not in columns:
            db.execute("ALTER TABLE alarms ADD COLUMN action TEXT NOT NULL DEFAULT 'flag'")
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2: each client's JSON list of stage states becomes one document per
        stage, its alarm strings become structured alarms; a client whose state does not decode
        is held for review, not reset."""
        db = self._db
        db.execute("ALTER TABLE clients ADD COLUMN review TEXT")
        db.execute("ALTER TABLE clients ADD COLUMN alarms_total INTEGER NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE clients ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
        for statement in _STATE_TABLES.split(";"):
            if statement.strip():
                db.execute(statement)
        now = time.time()
        rows = db.execute("SELECT client, pipeline, state, alarms FROM defense_state").fetchall()
        for client, pipeline, state_text, alarms_text in rows:
            try:
                states, alarms = json.loads(state_text), json.loads(alarms_text)
                if not isinstance(states, list) or not all(isinstance(d, dict) for d in states):
                    raise ValueError("the stage states are not a list of objects")
                if not isinstance(alarms, list):
                    raise ValueError("the alarms are not a list")
            except (ValueError, TypeError) as exc:
                db.execute(
                    "UPDATE clients SET review=? WHERE name=?",
                    (f"its schema-1 defense state could not be read: {exc}", client),
                )
                continue
            try:
                documents = [json.dumps(d, sort_keys=True, allow_nan=False) for d in states]
            except ValueError as exc:
                db.execute(
                    "UPDATE clients SET review=? WHERE name=?",
                    (f"its schema-1 defense state could not be read: {exc}", client),
                )
                continue
            for index, document in enumerate(documents):
                db.execute(
                    "INSERT INTO stage_values VALUES (?, ?, ?, ?)",
                    (client, pipeline, index, document),
                )
            for text in map(str, alarms[-MAX_ALARMS_PER_CLIENT:]):
                stage = text.split(":")[1] if text.startswith("alarm:") else "unknown"
                db.execute(
                    "INSERT INTO alarms (client, time, stage, reason) VALUES (?, ?, ?, ?)",
                    (client, now, stage, f"migrated from schema 1: {text}"),
                )
            db.execute(
                "UPDATE clients SET alarms_total = alarms_total + ? WHERE name=?",
                (len(alarms), client),
            )
        for (client,) in db.execute("SELECT DISTINCT client FROM alarms").fetchall():
            self._bound_alarms(client)
        db.execute("DROP TABLE defense_state")
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))

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

        ``replace`` resets an existing client of that name (usage, state, alarms) instead of
        refusing.
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
            self._forget_state(name)
            self._db.execute(
                "INSERT INTO clients (name, key_sha256, budget, rate, admin, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, digest, budget, rate, int(admin), time.time()),
            )
        return key

    def _forget_state(self, name: str) -> None:
        for table in ("stage_values", "stage_rows", "alarms"):
            self._db.execute(f"DELETE FROM {table} WHERE client=?", (name,))

    def revoke(self, name: str) -> None:
        with self._lock, self._transaction():
            cursor = self._db.execute("UPDATE clients SET revoked=1 WHERE name=?", (name,))
            if cursor.rowcount == 0:
                raise ModelheistError(f"unknown client {name!r}")

    def hold_for_review(self, name: str, reason: str) -> None:
        """Refuse the client's requests until an administrator resets it (its state is kept)."""
        with self._lock, self._transaction():
            self._db.execute("UPDATE clients SET review=? WHERE name=?", (reason, name))

    def clear_block(self, name: str) -> None:
        """Lift a detector's block on a client (its state and alarms are kept): an
        administrator's decision. A running server reloads the client before its next request."""
        with self._lock, self._transaction():
            cursor = self._db.execute(
                "UPDATE clients SET blocked=NULL, generation=generation + 1 "
                "WHERE name=? AND blocked IS NOT NULL",
                (name,),
            )
            if cursor.rowcount == 0 and self._one("WHERE name=?", (name,)) is None:
                raise ModelheistError(f"unknown client {name!r}")

    def reset_state(self, name: str) -> None:
        """Drop a client's defense state and alarms and lift any review: an administrator's
        decision, e.g. after a state that could not be read held the client for review."""
        with self._lock, self._transaction():
            cursor = self._db.execute(
                "UPDATE clients SET review=NULL, alarms_total=0, generation=generation + 1 "
                "WHERE name=?",
                (name,),
            )
            if cursor.rowcount == 0:
                raise ModelheistError(f"unknown client {name!r}")
            self._forget_state(name)

    def client(self, name: str) -> ClientRecord | None:
        return self._one("WHERE name=?", (name,))

    def client_for_key(self, key: str) -> ClientRecord | None:
        return self._one("WHERE key_sha256=?", (key_digest(key),))

    def clients(self) -> list[ClientRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY name"
            ).fetchall()
        return [_client(row) for row in rows]

    def _one(self, where: str, args: tuple[Any, ...]) -> ClientRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_CLIENT_COLUMNS} FROM clients " + where,
                args,
            ).fetchone()
        return None if row is None else _client(row)

    # -- defense state, alarms and the audit log -----------------------------------------------

    def stage_state(self, client: str, pipeline: str) -> dict[int, SavedStage]:
        """The committed state of ``pipeline``'s stages for ``client``, by stage position."""
        saved: dict[int, SavedStage] = {}
        with self._lock:
            for stage, doc in self._db.execute(
                "SELECT stage, doc FROM stage_values WHERE client=? AND pipeline=?",
                (client, pipeline),
            ):
                saved[stage] = SavedStage(doc, [])
            for stage, name, dtype, shape, data in self._db.execute(
                "SELECT stage, name, dtype, shape, data FROM stage_rows "
                "WHERE client=? AND pipeline=? ORDER BY stage, id",
                (client, pipeline),
            ):
                saved.setdefault(stage, SavedStage(None, [])).records.append(
                    (name, dtype, shape, bytes(data))
                )
        return saved

    def pipelines(self) -> dict[str, int]:
        """Each pipeline some client holds stage state under, with how many clients."""
        with self._lock:
            rows = self._db.execute(
                "SELECT pipeline, COUNT(DISTINCT client) FROM (SELECT client, pipeline FROM "
                "stage_values UNION SELECT client, pipeline FROM stage_rows) GROUP BY pipeline"
            ).fetchall()
        return {pipeline: int(count) for pipeline, count in rows}

    def alarms(self, client: str) -> list[Alarm]:
        """The client's kept alarms (at most :data:`MAX_ALARMS_PER_CLIENT`), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT stage, time, reason, statistic, action FROM alarms WHERE client=? "
                "ORDER BY id",
                (client,),
            ).fetchall()
        return [Alarm(*row) for row in rows]

    def commit(self, updates: dict[str, ClientUpdate], records: Sequence[AuditRecord]) -> set[str]:
        """Record a batch of answered queries and the client updates, all or nothing.

        Usage is added to what is stored. A client whose state generation changed since the
        update was computed (reset by an administrator meanwhile) gets its usage and audit
        records but not the old state's changes or alarms; the names of such clients are
        returned, for the caller to reload them."""
        stale: set[str] = set()
        with self._lock, self._transaction():
            for name, update in updates.items():
                current = self._db.execute(
                    "UPDATE clients SET queries_used = queries_used + ?, "
                    "alarms_total = alarms_total + ? WHERE name=? AND generation=?",
                    (update.answered, len(update.alarms), name, update.generation),
                )
                if current.rowcount == 0:
                    self._db.execute(
                        "UPDATE clients SET queries_used = queries_used + ? WHERE name=?",
                        (update.answered, name),
                    )
                    stale.add(name)
                    continue
                for stage, changes in update.stages.items():
                    if changes.values is not None:
                        self._db.execute(
                            "INSERT OR REPLACE INTO stage_values VALUES (?, ?, ?, ?)",
                            (name, update.pipeline, stage, changes.values),
                        )
                    self._db.executemany(
                        "INSERT INTO stage_rows (client, pipeline, stage, name, dtype, shape, "
                        "data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            (name, update.pipeline, stage, new.name, *encode_rows(new.rows))
                            for new in changes.rows
                        ),
                    )
                if update.alarms:
                    self._db.executemany(
                        "INSERT INTO alarms (client, time, stage, reason, statistic, action) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            (name, a.time, a.stage, a.reason, a.statistic, a.action)
                            for a in update.alarms
                        ),
                    )
                    self._bound_alarms(name)
                    blocking = next((a for a in update.alarms if a.action == "block"), None)
                    if blocking is not None:  # with the alarm, in the same transaction
                        self._db.execute(
                            "UPDATE clients SET blocked=? WHERE name=? AND blocked IS NULL",
                            (f"{blocking.stage}: {blocking.reason}", name),
                        )
            self._db.executemany(
                "INSERT INTO audit (time, client, model, input_sha256, label, flags) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (r.time, r.client, r.model, r.input_sha256, r.label, json.dumps(r.flags))
                    for r in records
                ),
            )
        return stale

    def _bound_alarms(self, client: str) -> None:
        """Keep the client's newest :data:`MAX_ALARMS_PER_CLIENT` alarms (in a transaction)."""
        self._db.execute(
            "DELETE FROM alarms WHERE client=? AND id NOT IN (SELECT id FROM alarms "
            "WHERE client=? ORDER BY id DESC LIMIT ?)",
            (client, client, MAX_ALARMS_PER_CLIENT),
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
    name, budget, rate, admin, revoked, used, review, alarms_total, generation, blocked = row
    return ClientRecord(
        name,
        budget,
        rate,
        bool(admin),
        bool(revoked),
        int(used),
        review,
        int(alarms_total),
        int(generation),
        blocked,
    )
