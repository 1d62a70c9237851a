"""The SQLite ledger: keys stored as hashes, atomic commits, clear errors for foreign files."""

import json
import sqlite3

import numpy as np
import pytest

from modelheist.api.ledger import DATABASE_NAME, AuditRecord, ClientUpdate, Ledger, key_digest
from modelheist.defenses import Alarm, StageState
from modelheist.defenses.state import NewRows, StateChanges
from modelheist.errors import ModelheistError


def test_keys_are_random_and_stored_as_hashes(tmp_path):
    ledger = Ledger.open(tmp_path)
    first, second = ledger.add_client("a"), ledger.add_client("b", budget=5, rate=2.0, admin=True)
    assert first != second and first.startswith("mh-")
    assert ledger.client_for_key(second).name == "b" and ledger.client_for_key("mh-nope") is None
    raw = (
        sqlite3.connect(tmp_path / DATABASE_NAME)
        .execute("SELECT key_sha256 FROM clients")
        .fetchall()
    )
    assert {row[0] for row in raw} == {key_digest(first), key_digest(second)}
    b = ledger.client("b")
    assert (b.budget, b.rate, b.admin, b.revoked, b.queries_used) == (5, 2.0, True, False, 0)


@pytest.mark.parametrize(
    "name, options, needle",
    [("", {}, "1 to 128"), ("x", {"budget": 0}, "at least 1"), ("x", {"rate": -1.0}, "positive")],
)
def test_bad_clients_are_refused(tmp_path, name, options, needle):
    with pytest.raises(ModelheistError, match=needle):
        Ledger.open(tmp_path).add_client(name, **options)


def _changes(values=None, **arrays):
    rows = tuple(NewRows(name, np.asarray(rows)) for name, rows in arrays.items())
    return StateChanges(None if values is None else json.dumps(values), rows)


def test_commit_is_all_or_nothing(tmp_path):
    ledger = Ledger.open(tmp_path)
    ledger.add_client("a", with_key=False)
    record = AuditRecord(1.0, "a", "m", "d" * 64, 3, ("rounded:2",))
    ledger.commit({"a": ClientUpdate(1, 0, "p", {0: _changes({"n": 1}, x=[[1.0, 2.0]])})}, [record])
    assert ledger.audit("a") == [record] and ledger.client("a").queries_used == 1
    broken = AuditRecord(2.0, "a", "m", None, 3, ())  # NOT NULL digest: the insert fails
    alarm = Alarm("s", 2.0, "why", 0.5)
    with pytest.raises(sqlite3.IntegrityError):
        ledger.commit(
            {"a": ClientUpdate(1, 0, "p", {0: _changes({"n": 2}, x=[[3.0, 4.0]])}, (alarm,))},
            [broken],
        )
    assert ledger.client("a").queries_used == 1 and ledger.audit("a") == [record]
    saved = ledger.stage_state("a", "p")[0]
    assert json.loads(saved.values) == {"n": 1} and len(saved.records) == 1
    assert ledger.alarms("a") == [] and ledger.client("a").alarms_total == 0


def test_state_and_alarms_survive_reopening(tmp_path):
    ledger = Ledger.open(tmp_path)
    ledger.add_client("a", with_key=False)
    for i in range(3):
        update = ClientUpdate(
            1, 0, "p", {2: _changes({"seen": i + 1}, x=np.full((1, 2), i, np.float32))}
        )
        ledger.commit({"a": update}, [])
    ledger.commit({"a": ClientUpdate(1, 0, "p", {}, (Alarm("s", 5.0, "why", None),))}, [])
    ledger.close()
    again = Ledger.open(tmp_path)
    assert again.client("a").queries_used == 4
    state = StageState.from_records(
        again.stage_state("a", "p")[2].values, again.stage_state("a", "p")[2].records, "a"
    )
    assert state.values == {"seen": 3}
    np.testing.assert_array_equal(state.array("x"), [[0, 0], [1, 1], [2, 2]])
    assert again.alarms("a") == [Alarm("s", 5.0, "why", None)]
    assert again.stage_state("a", "other pipeline") == {}


def test_each_commit_writes_only_the_new_rows(tmp_path):
    ledger = Ledger.open(tmp_path)
    ledger.add_client("a", with_key=False)
    for _ in range(50):
        ledger.commit({"a": ClientUpdate(1, 0, "p", {0: _changes(x=np.ones((2, 8)))})}, [])
    raw = sqlite3.connect(tmp_path / DATABASE_NAME)
    sizes = [len(row[0]) for row in raw.execute("SELECT data FROM stage_rows")]
    assert sizes == [2 * 8 * 8] * 50  # one record of two float64 rows per commit, never the history


def test_a_commit_computed_before_a_reset_keeps_usage_and_drops_old_state(tmp_path):
    ledger = Ledger.open(tmp_path)
    ledger.add_client("a", with_key=False)
    ledger.commit({"a": ClientUpdate(2, 0, "p", {0: _changes({"n": 2}, x=np.ones((2, 3)))})}, [])
    ledger.reset_state("a")  # an administrator, while the next batch is being answered
    late = ClientUpdate(
        3, 0, "p", {0: _changes({"n": 5}, x=np.ones((3, 3)))}, (Alarm("s", 1.0, "r"),)
    )
    assert ledger.commit({"a": late}, [AuditRecord(1.0, "a", "m", "d" * 64, 1, ())]) == {"a"}
    record = ledger.client("a")
    assert record.queries_used == 5 and record.generation == 1 and record.alarms_total == 0
    assert ledger.stage_state("a", "p") == {} and ledger.alarms("a") == []
    assert len(ledger.audit("a")) == 1


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE clients (name TEXT PRIMARY KEY, key_sha256 TEXT UNIQUE, budget INTEGER, rate REAL,
    admin INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0,
    queries_used INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE defense_state (client TEXT NOT NULL, pipeline TEXT NOT NULL, state TEXT NOT NULL,
    alarms TEXT NOT NULL, PRIMARY KEY (client, pipeline));
CREATE TABLE audit (id INTEGER PRIMARY KEY, time REAL NOT NULL, client TEXT NOT NULL,
    model TEXT NOT NULL, input_sha256 TEXT NOT NULL, label INTEGER NOT NULL, flags TEXT NOT NULL);
CREATE INDEX audit_client ON audit (client);
INSERT INTO meta VALUES ('schema', '1');
"""


def test_a_schema_1_state_folder_is_migrated(tmp_path):
    raw = sqlite3.connect(tmp_path / DATABASE_NAME)
    raw.executescript(SCHEMA_1)
    key = "mh-" + "k" * 43
    raw.executemany(
        "INSERT INTO clients (name, key_sha256, budget, queries_used, created) VALUES (?,?,?,?,?)",
        [("alice", key_digest(key), 100, 7, 1.0), ("bob", None, None, 2, 1.0)],
    )
    raw.executemany(
        "INSERT INTO defense_state VALUES (?, ?, ?, ?)",
        [
            ("alice", "round:2", json.dumps([{"seen": 7}]), json.dumps(["alarm:old"])),
            ("bob", "round:2", "not json", "[]"),
        ],
    )
    raw.execute("INSERT INTO audit VALUES (1, 1.0, 'alice', 'm', ?, 3, '[]')", ("d" * 64,))
    raw.commit()
    raw.close()
    ledger = Ledger.open(tmp_path)
    alice = ledger.client_for_key(key)
    assert (alice.name, alice.budget, alice.queries_used, alice.review) == ("alice", 100, 7, None)
    assert json.loads(ledger.stage_state("alice", "round:2")[0].values) == {"seen": 7}
    (alarm,) = ledger.alarms("alice")
    assert alarm.stage == "old" and "alarm:old" in alarm.reason and alice.alarms_total == 1
    assert "could not be read" in ledger.client("bob").review  # held, not reset
    assert len(ledger.audit("alice")) == 1
    ledger.close()
    again = Ledger.open(tmp_path)  # opens as the current schema now
    assert again.client("alice").queries_used == 7 and again.client("alice").blocked is None


def test_a_schema_2_state_folder_gains_blocks_and_alarm_actions(tmp_path):
    ledger = Ledger.open(tmp_path)
    ledger.add_client("eve")
    ledger.commit({"eve": ClientUpdate(3, 0, "p", {}, (Alarm("prada", 1.0, "old", 0.5),))}, [])
    ledger.close()
    raw = sqlite3.connect(tmp_path / DATABASE_NAME)  # back to schema 2's tables
    raw.execute("ALTER TABLE clients DROP COLUMN blocked")
    raw.execute("ALTER TABLE alarms DROP COLUMN action")
    raw.execute("UPDATE meta SET value='2' WHERE key='schema'")
    raw.commit()
    raw.close()
    ledger = Ledger.open(tmp_path)
    assert ledger.client("eve").queries_used == 3 and ledger.client("eve").blocked is None
    assert [a.action for a in ledger.alarms("eve")] == ["flag"]
    block = Alarm("ood-msp", 2.0, "mostly noise", 0.9, "block")
    ledger.commit({"eve": ClientUpdate(1, 0, "p", {}, (block,))}, [])
    assert ledger.client("eve").blocked == "ood-msp: mostly noise"
    ledger.clear_block("eve")
    assert ledger.client("eve").blocked is None and len(ledger.alarms("eve")) == 2
    with pytest.raises(ModelheistError, match="unknown client"):
        ledger.clear_block("nobody")


def test_a_newer_schema_is_refused_unchanged(tmp_path):
    raw = sqlite3.connect(tmp_path / DATABASE_NAME)
    raw.executescript(SCHEMA_1.replace("VALUES ('schema', '1')", "VALUES ('schema', '99')"))
    raw.close()
    before = (tmp_path / DATABASE_NAME).read_bytes()
    with pytest.raises(ModelheistError, match="schema 99.*nothing was changed"):
        Ledger.open(tmp_path)
    assert (tmp_path / DATABASE_NAME).read_bytes() == before


def test_foreign_files_are_clear_errors(tmp_path):
    (tmp_path / DATABASE_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ModelheistError, match="not a modelheist state database|cannot open"):
        Ledger.open(tmp_path)
    (tmp_path / DATABASE_NAME).unlink()
    other = sqlite3.connect(tmp_path / DATABASE_NAME)
    other.execute("CREATE TABLE notes (text TEXT)")
    other.close()
    with pytest.raises(ModelheistError, match="not a modelheist state database"):
        Ledger.open(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelheistError, match="is a file"):
        Ledger.open(tmp_path / "file")
