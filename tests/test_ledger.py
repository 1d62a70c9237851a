"""The SQLite ledger: keys stored as hashes, atomic commits, clear errors for foreign files."""

import sqlite3

import pytest

from modelheist.api.ledger import DATABASE_NAME, AuditRecord, ClientUpdate, Ledger, key_digest
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


def test_commit_is_all_or_nothing(tmp_path):
    ledger = Ledger.open(tmp_path)
    ledger.add_client("a", with_key=False)
    record = AuditRecord(1.0, "a", "m", "d" * 64, 3, ("rounded:2",))
    ledger.commit({"a": ClientUpdate(1, "probs", [{}], [])}, [record])
    assert ledger.audit("a") == [record] and ledger.client("a").queries_used == 1
    broken = AuditRecord(2.0, "a", "m", None, 3, ())  # NOT NULL digest: the insert fails
    with pytest.raises(sqlite3.IntegrityError):
        ledger.commit({"a": ClientUpdate(2, "probs", [{"x": 1}], ["alarm:x"])}, [broken])
    assert ledger.client("a").queries_used == 1 and ledger.audit("a") == [record]
    assert ledger.defense_state("a", "probs") == ([{}], [])


def test_state_survives_reopening(tmp_path):
    ledger = Ledger.open(tmp_path)
    ledger.add_client("a", with_key=False)
    ledger.commit({"a": ClientUpdate(7, "p", [{"seen": 7}], ["alarm:y"])}, [])
    ledger.close()
    again = Ledger.open(tmp_path)
    assert again.client("a").queries_used == 7
    assert again.defense_state("a", "p") == ([{"seen": 7}], ["alarm:y"])


def test_foreign_files_are_clear_errors(tmp_path):
    (tmp_path / DATABASE_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ModelheistError, match="not a modelheist state database|cannot open"):
        Ledger.open(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelheistError, match="is a file"):
        Ledger.open(tmp_path / "file")
