"""Signed, hash-chained commitments (ownership/claims.py) and the ``claims`` commands: a claim
that holds is accepted; any edit, reorder, truncation, wrong key, wrong opening, wrong model or
secret, or a commitment made too late is "cannot verify" with its reason."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest

from modelheist.models import TrainConfig, train_model
from modelheist.models.store import save_model
from modelheist.ownership.claims import (
    ClaimError,
    ClaimLog,
    Entry,
    Head,
    Opening,
    check_bundle,
    generate_keys,
    load_public_key,
    load_signing_key,
    make_bundle,
)


@pytest.fixture(scope="module")
def owner(tmp_path_factory, digits, triggers):
    """A model folder, a trigger set, a key pair and a log of three commitments (the second
    commits to the model and the set)."""
    root = tmp_path_factory.mktemp("claims")
    model = save_model(train_model(digits, "logreg", TrainConfig(seed=0)), root / "model")
    secret = triggers.save(root / "triggers")
    private, public = generate_keys(root / "keys")
    key = load_signing_key(private)
    log = ClaimLog(root / "claims.jsonl")
    other = Opening("a" * 64, "key-file", "b" * 64, "c" * 64)
    log.append(key, other.commitment(), "an earlier model")
    opening = Opening.fresh(model, secret)
    log.append(key, opening.commitment(), "the digits model")
    log.append(key, other.commitment(), "a later one")
    return root, model, secret, public, log, opening


def _bundle(owner):
    root, model, secret, public, log, opening = owner
    return make_bundle(log, opening)


def test_a_true_claim_holds_with_model_secret_and_date(owner):
    root, model, secret, public, log, opening = owner
    bundle = _bundle(owner)
    assert bundle["entry"] == 1
    later = datetime.now(UTC) + timedelta(hours=1)
    verdict = check_bundle(bundle, load_public_key(public), model, secret, later)
    assert verdict.holds, verdict.reason
    assert verdict.entry is not None and verdict.entry.label == "the digits model"
    assert len(log.check(load_public_key(public))) == 3


def test_the_commitment_hides_what_it_binds_and_each_salt_differs(owner):
    root, model, secret, public, log, opening = owner
    again = Opening.fresh(model, secret)
    assert again.model_digest == opening.model_digest
    assert again.commitment() != opening.commitment()  # fresh salt


@pytest.mark.parametrize(
    "tamper, reason",
    [
        (lambda b: b["entries"][0].__setitem__("label", "edited"), "signature"),
        (lambda b: b["entries"].reverse(), "index"),
        (lambda b: b["entries"].pop(0), "index"),
        (lambda b: b["entries"].pop(), "truncated"),
        (lambda b: b["opening"].__setitem__("salt", "d" * 64), "does not open"),
        (lambda b: b.__setitem__("entry", 0), "does not open"),
        (lambda b: b["head"].__setitem__("count", 2), "head"),
    ],
    ids=["edit", "reorder", "remove-first", "truncate", "wrong-salt", "wrong-entry", "head"],
)
def test_any_tampering_cannot_verify(owner, tamper, reason):
    root, model, secret, public, log, opening = owner
    bundle = json.loads(json.dumps(_bundle(owner)))
    tamper(bundle)
    verdict = check_bundle(bundle, load_public_key(public))
    assert not verdict.holds
    assert reason in verdict.reason


def test_a_rebuilt_log_under_another_key_is_refused(owner, tmp_path):
    root, model, secret, public, log, opening = owner
    private, _ = generate_keys(tmp_path / "forger")
    forged = ClaimLog(tmp_path / "forged.jsonl")
    forged.append(load_signing_key(private), opening.commitment(), "backdated")
    verdict = check_bundle(make_bundle(forged, opening), load_public_key(public))
    assert not verdict.holds and "public key" in verdict.reason


def test_wrong_model_secret_or_date_cannot_verify(owner, tmp_path, digits):
    root, model, secret, public, log, opening = owner
    key = load_public_key(public)
    other_model = save_model(train_model(digits, "logreg", TrainConfig(seed=1)), tmp_path / "m")
    assert "model" in check_bundle(_bundle(owner), key, model=other_model).reason
    key_file = tmp_path / "dawn.key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    assert "secret" in check_bundle(_bundle(owner), key, secret=key_file).reason
    earlier = datetime.now(UTC) - timedelta(days=1)
    assert "predate" in check_bundle(_bundle(owner), key, before=earlier).reason
    published = log.entries()[2].digest()
    assert check_bundle(_bundle(owner), key, published_head=published).holds
    # the owner truncates its log and re-signs a head over the rest: the head it published
    # earlier is gone from the log
    private = load_signing_key(root / "keys" / "signing.key")
    bundle = _bundle(owner)
    bundle["entries"].pop()
    shortened = [Entry.from_json(e, "entry") for e in bundle["entries"]]
    bundle["head"] = asdict(Head.of(shortened, private))
    assert check_bundle(bundle, key).holds  # self-consistent without the published head
    verdict = check_bundle(bundle, key, published_head=published)
    assert not verdict.holds and "truncated" in verdict.reason
    # an entry appended after a published head cannot have existed when it was published
    early = log.entries()[0].digest()
    verdict = check_bundle(_bundle(owner), key, published_head=early)
    assert not verdict.holds and "after the head published earlier" in verdict.reason


def test_the_log_refuses_to_grow_from_a_damaged_or_truncated_state(owner, tmp_path):
    root, model, secret, public, log, opening = owner
    private = root / "keys" / "signing.key"
    copy = ClaimLog(tmp_path / "copy.jsonl")
    lines = log.path.read_text().splitlines(keepends=True)
    copy.path.write_text("".join(lines[:2]))  # the tail removed, the head kept
    copy.head_path.write_text(log.head_path.read_text())
    with pytest.raises(ClaimError, match="truncated"):
        copy.append(load_signing_key(private), "e" * 64)
    copy.path.write_text("".join(lines) + lines[0][:20])  # an interrupted write
    with pytest.raises(ClaimError, match="incomplete"):
        copy.entries()
    copy.path.write_text("".join(lines))
    assert copy.append(load_signing_key(private), "e" * 64).index == 3
    assert len(copy.check(load_public_key(public))) == 4


def test_an_interrupted_append_is_completed_by_the_next_one(owner, tmp_path):
    root, model, secret, public, log, opening = owner
    key = load_signing_key(root / "keys" / "signing.key")
    crashed = ClaimLog(tmp_path / "crashed.jsonl")
    crashed.append(key, "1" * 64)
    head_after_first = crashed.head_path.read_text()
    crashed.append(key, "2" * 64)
    crashed.head_path.write_text(head_after_first)  # the crash came before the head moved
    with pytest.raises(ClaimError, match="truncated or extended"):
        crashed.check(load_public_key(public))
    with open(crashed.path, "a") as handle:  # and a third append died mid-line
        handle.write('{"index": 2, "ti')
    entry = crashed.append(key, "3" * 64)
    assert entry.index == 2  # the half line was never acknowledged: dropped
    entries = crashed.check(load_public_key(public))
    assert [e.commitment[0] for e in entries] == ["1", "2", "3"]
    first = ClaimLog(tmp_path / "first.jsonl")
    first.append(key, "4" * 64)
    first.head_path.unlink()  # the very first append stopped before its head
    assert first.append(key, "5" * 64).index == 1


def test_the_claims_commands_end_to_end(owner, tmp_path, cli_in_process):
    root, model, secret, public, log, opening = owner
    keys = tmp_path / "keys"
    assert cli_in_process("claims", "keygen", keys).returncode == 0
    log_path, opening_path = tmp_path / "log.jsonl", tmp_path / "opening.json"
    added = cli_in_process(
        "claims",
        "add",
        "--log",
        log_path,
        "--signing-key",
        keys / "signing.key",
        "--model",
        model,
        "--secret",
        secret,
        "--opening-out",
        opening_path,
    )
    assert added.returncode == 0, added.stderr
    assert "head (publish it)" in added.stdout
    shown = cli_in_process(
        "claims", "show", "--log", log_path, "--public-key", keys / "signing.pub"
    )
    assert shown.returncode == 0 and "1 entries; checked" in shown.stdout
    bundle = tmp_path / "bundle.json"
    made = cli_in_process(
        "claims", "bundle", "--log", log_path, "--opening", opening_path, "--out", bundle
    )
    assert made.returncode == 0, made.stderr
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    check = ("claims", "check", bundle, "--public-key", keys / "signing.pub", "--model", model)
    held = cli_in_process(*check, "--secret", secret, "--before", future)
    assert held.returncode == 0 and "claim holds" in held.stdout
    late = cli_in_process(*check, "--before", "2020-01-01T00:00:00")
    assert late.returncode == 2 and "cannot verify" in late.stdout
    wrong_key = cli_in_process("claims", "check", bundle, "--public-key", public)
    assert wrong_key.returncode == 2 and "public key" in wrong_key.stdout
    bad = cli_in_process("claims", "check", opening_path, "--public-key", public)
    assert bad.returncode == 2 and "bundle" in bad.stdout
    missing = cli_in_process("claims", "check", tmp_path / "nope.json", "--public-key", public)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
