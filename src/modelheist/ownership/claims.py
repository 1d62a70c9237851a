"""Signed, hash-chained commitments: the owner's proof that it held a model and a watermark
secret before a dispute (Adi et al., USENIX Security '18, §3: a watermark is only evidence if
the owner committed to it, with a time, before the suspect appeared).

A commitment is SHA-256 over (the model folder's digest, the watermark secret's digest, a
random 256-bit salt); the salt keeps the commitment from revealing which model or set it binds
(a guess cannot be checked against it). The owner keeps the *opening* (the three values) and
publishes nothing else. Commitments go into an append-only log (JSON Lines): each entry holds
its index, a UTC time, the SHA-256 of the entry before it (a hash chain), the commitment, a
label, the owner's Ed25519 public key, and an Ed25519 signature over the entry's hash
(:mod:`cryptography`). A signed *head* (entry count and last entry's hash) is rewritten next to
the log at each append.

What a judge can check offline, from a claim bundle (the log up to its head, the opening, the
index of the entry it opens) and the owner's public key obtained independently:

* every entry is signed by that key, follows the previous one's hash, has the next index and a
  time no earlier than the one before: an edited, inserted, removed or reordered entry breaks
  the chain or a signature;
* the log ends where the signed head says: a truncated log (its tail removed) no longer does.
  A signed head can only be rolled back by someone who kept an older one; a judge who has a
  head the owner published earlier (``claims show`` prints it) passes it as ``head`` and the
  log must contain it;
* the opening hashes to the entry's commitment, and its digests match the model and the secret
  put before the judge;
* the entry's time predates the suspect's registration.

The times are the owner's clock: the chain fixes their order, and a head published at the
time (to a judge, a registry or a public place) fixes that they existed then; without a
trusted timestamping service nothing offline can do more. Private keys are PKCS#8 PEM files
readable by their owner only; public keys are SubjectPublicKeyInfo PEM files.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from modelheist.defenses.secrets import SecretFile
from modelheist.errors import ModelheistError
from modelheist.models.store import CARD, WEIGHTS, load_card

COMMITMENT_DOMAIN = b"modelheist-commitment/1\x00"
ENTRY_DOMAIN = b"modelheist-claim-entry/1\x00"
HEAD_DOMAIN = b"modelheist-claim-head/1\x00"
BUNDLE_FORMAT = "modelheist-claim-bundle/1"
OPENING_FORMAT = "modelheist-claim-opening/1"
GENESIS = "0" * 64  # the "previous hash" of the first entry
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class ClaimError(ModelheistError):
    """A log, bundle or opening that does not check out (the reason is the message)."""


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _is_hex(value: object, length: int) -> bool:
    return (
        isinstance(value, str)
        and len(value) == length
        and all(c in "0123456789abcdef" for c in value)
    )


def model_digest(folder: str | Path) -> str:
    """SHA-256 over the files a model folder is loaded from (its card and weights)."""
    folder = Path(folder)
    load_card(folder)  # a one-line error for a folder that is not a model
    digest = hashlib.sha256(b"modelheist-model-digest/1\x00")
    for name in (CARD, WEIGHTS):
        try:
            data = (folder / name).read_bytes()
        except OSError as exc:
            raise ModelheistError(f"cannot read {folder / name}: {exc.strerror}") from None
        digest.update(f"{name}\x00{len(data)}\x00".encode())
        digest.update(data)
    return digest.hexdigest()


def secret_digest(path: str | Path) -> tuple[str, str]:
    """(kind, SHA-256) of a watermark secret: a backdoor trigger-set folder (the set's own
    digest, as its model card records it) or a key file (DAWN's key)."""
    path = Path(path)
    if path.is_dir():
        from modelheist.ownership.watermark import TriggerSet

        return "trigger-set", TriggerSet.load(path).digest
    key = SecretFile(path)
    key.check()
    return "key-file", hashlib.sha256(key.read()).hexdigest()


@dataclass(frozen=True)
class Opening:
    """What a commitment binds; the owner keeps it private until a claim."""

    model_digest: str
    secret_kind: str
    secret_digest: str
    salt: str

    @classmethod
    def fresh(cls, model: str | Path, secret: str | Path) -> Opening:
        """The opening of a new commitment to a model folder and a secret, with a fresh salt."""
        kind, digest = secret_digest(secret)
        return cls(model_digest(model), kind, digest, secrets.token_hex(32))

    def commitment(self) -> str:
        return hashlib.sha256(COMMITMENT_DOMAIN + _canonical(asdict(self))).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"format": OPENING_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, document: object) -> Opening:
        if not isinstance(document, dict) or document.get("format") != OPENING_FORMAT:
            raise ClaimError(f"not a {OPENING_FORMAT} document")
        values = {f.name: document.get(f.name) for f in fields(cls)}
        if not all(_is_hex(values[k], 64) for k in ("model_digest", "secret_digest", "salt")):
            raise ClaimError("the opening's digests and salt must be 64 hex digits")
        if values["secret_kind"] not in ("trigger-set", "key-file"):
            raise ClaimError(f"unknown secret kind {values['secret_kind']!r} in the opening")
        return cls(**values)


@dataclass(frozen=True)
class Entry:
    """One signed entry of a claim log."""

    index: int
    time: str
    previous: str
    commitment: str
    label: str
    public_key: str
    signature: str

    def digest(self) -> str:
        """SHA-256 of everything but the signature: what the signature and the next entry's
        ``previous`` cover."""
        body = {k: v for k, v in asdict(self).items() if k != "signature"}
        return hashlib.sha256(ENTRY_DOMAIN + _canonical(body)).hexdigest()

    @classmethod
    def from_json(cls, document: object, where: str) -> Entry:
        names = [f.name for f in fields(cls)]
        if not isinstance(document, dict) or sorted(document) != sorted(names):
            raise ClaimError(f"{where} is not a claim-log entry (fields {', '.join(names)})")
        entry = cls(**document)
        if not isinstance(entry.index, int) or not isinstance(entry.label, str):
            raise ClaimError(f"{where}: index must be an integer and label a string")
        if not (
            _is_hex(entry.previous, 64)
            and _is_hex(entry.commitment, 64)
            and _is_hex(entry.public_key, 64)
            and _is_hex(entry.signature, 128)
        ):
            raise ClaimError(f"{where}: malformed hash, key or signature")
        parse_time(entry.time, where)
        return entry


def parse_time(text: object, where: str = "a time") -> datetime:
    """An ISO-8601 time; one without a zone is taken as UTC."""
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ClaimError(f"{where}: {text!r} is not an ISO-8601 time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _raw(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _verify(public_key: Ed25519PublicKey, signature: str, message: bytes) -> bool:
    try:
        public_key.verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def check_chain(entries: list[Entry], public_key: Ed25519PublicKey) -> None:
    """Raise :class:`ClaimError` at the first entry that breaks the chain."""
    owner, previous, last_time = _raw(public_key), GENESIS, None
    for position, entry in enumerate(entries):
        if entry.index != position:
            raise ClaimError(
                f"entry {position} has index {entry.index}: entries were removed, inserted or "
                "reordered"
            )
        if not hmac.compare_digest(entry.previous, previous):
            raise ClaimError(
                f"entry {position} does not follow the entry before it: the log was edited"
            )
        if entry.public_key != owner:
            raise ClaimError(f"entry {position} is not signed with the owner's public key")
        if not _verify(public_key, entry.signature, bytes.fromhex(entry.digest())):
            raise ClaimError(f"entry {position}'s signature does not match its content")
        when = parse_time(entry.time, f"entry {position}")
        if last_time is not None and when < last_time:
            raise ClaimError(f"entry {position} is dated before the entry preceding it")
        previous, last_time = entry.digest(), when


@dataclass(frozen=True)
class Head:
    """The signed end of a log: how many entries it has and the last one's hash."""

    count: int
    last: str
    signature: str

    @staticmethod
    def message(count: int, last: str) -> bytes:
        return HEAD_DOMAIN + _canonical({"count": count, "last": last})

    @classmethod
    def of(cls, entries: list[Entry], signing_key: Ed25519PrivateKey) -> Head:
        last = entries[-1].digest() if entries else GENESIS
        return cls(len(entries), last, signing_key.sign(cls.message(len(entries), last)).hex())

    def check(self, entries: list[Entry], public_key: Ed25519PublicKey) -> None:
        if not _verify(public_key, self.signature, self.message(self.count, self.last)):
            raise ClaimError("the log's head is not signed with the owner's public key")
        last = entries[-1].digest() if entries else GENESIS
        if self.count != len(entries) or not hmac.compare_digest(self.last, last):
            raise ClaimError(
                f"the log has {len(entries)} entries where its signed head records "
                f"{self.count}: it was truncated or extended without the owner's key"
            )

    @classmethod
    def from_json(cls, document: object) -> Head:
        if not isinstance(document, dict) or sorted(document) != ["count", "last", "signature"]:
            raise ClaimError("the log's head is not a {count, last, signature} document")
        head = cls(**document)
        if not (
            isinstance(head.count, int) and _is_hex(head.last, 64) and _is_hex(head.signature, 128)
        ):
            raise ClaimError("the log's head is malformed")
        return head


class ClaimLog:
    """An append-only claim log in ``path`` (JSON Lines) with its signed head in
    ``path`` + ``.head``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def head_path(self) -> Path:
        return self.path.with_name(self.path.name + ".head")

    def entries(self) -> list[Entry]:
        """Every entry, parsed (not checked: :meth:`check`); a missing log has none."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8", errors="replace")
        if text and not text.endswith("\n"):
            raise ClaimError(f"{self.path} ends in an incomplete entry (an interrupted write)")
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                document = json.loads(line)
            except json.JSONDecodeError:
                raise ClaimError(f"{self.path}, line {number}, is not JSON") from None
            entries.append(Entry.from_json(document, f"{self.path}, line {number}"))
        return entries

    def head(self) -> Head:
        try:
            return Head.from_json(json.loads(self.head_path.read_text()))
        except FileNotFoundError:
            raise ClaimError(
                f"{self.head_path} is missing: the log's end cannot be checked"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ClaimError(f"{self.head_path} cannot be read: {exc}") from None

    def check(self, public_key: Ed25519PublicKey) -> list[Entry]:
        """The entries, after checking the chain and the signed head."""
        entries = self.entries()
        check_chain(entries, public_key)
        if entries or self.head_path.exists():
            self.head().check(entries, public_key)
        return entries

    def append(self, signing_key: Ed25519PrivateKey, commitment: str, label: str = "") -> Entry:
        """Check the log, then add a signed entry for ``commitment`` and re-sign the head, under
        an exclusive lock (two appends at once cannot both take the same index). The entry is
        on disk (fsync) before the head moves; an append interrupted before that is completed
        by the next one (:meth:`_recover`), so no acknowledged entry is ever lost."""
        if not _is_hex(commitment, 64):
            raise ClaimError("a commitment is 64 hex digits (a SHA-256)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            self._recover(signing_key)
            entries = self.check(signing_key.public_key())
            now = datetime.now(UTC)
            if entries and now < parse_time(entries[-1].time):
                raise ClaimError("the clock is behind the log's last entry; fix the clock first")
            body = {
                "index": len(entries),
                "time": now.strftime(TIME_FORMAT),
                "previous": entries[-1].digest() if entries else GENESIS,
                "commitment": commitment,
                "label": label,
                "public_key": _raw(signing_key.public_key()),
            }
            unsigned = Entry(**body, signature="0" * 128)
            signature = signing_key.sign(bytes.fromhex(unsigned.digest())).hex()
            entry = Entry(**body, signature=signature)
            created = not self.path.exists()
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, (json.dumps(asdict(entry), sort_keys=True) + "\n").encode())
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            if created:
                _sync_folder(self.path.parent)
            _write_atomically(self.head_path, asdict(Head.of([*entries, entry], signing_key)))
            return entry

    def _recover(self, signing_key: Ed25519PrivateKey) -> None:
        """Complete an append that a crash interrupted: drop an incomplete last line (never
        acknowledged) and, when the log holds exactly one valid signed entry past its head,
        sign the head over it. Anything else is left for :meth:`check` to refuse."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                handle.flush()
                os.fsync(handle.fileno())
        entries = self.entries()
        if not entries:
            return
        check_chain(entries, signing_key.public_key())
        if not self.head_path.exists():
            complete = len(entries) == 1  # the first append stopped before its head
        else:
            head = self.head()
            complete = head.count == len(entries) - 1
            if complete:
                head.check(entries[:-1], signing_key.public_key())  # refuses a forged head
        if complete:
            _write_atomically(self.head_path, asdict(Head.of(entries, signing_key)))


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a file created or renamed in it survives a crash."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(json.dumps(document, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _sync_folder(path.parent)


def generate_keys(folder: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair in ``folder``: ``signing.key`` (private, mode 0600) and
    ``signing.pub`` (give it to judges). Existing files are never overwritten."""
    folder = Path(folder)
    private_path, public_path = folder / "signing.key", folder / "signing.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise ModelheistError(f"{path} already exists; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise ModelheistError(f"signing key {path} does not exist") from None
    except (ValueError, TypeError):
        raise ModelheistError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ModelheistError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise ModelheistError(f"public key {path} does not exist") from None
    except ValueError:
        raise ModelheistError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ModelheistError(f"{path} is not an Ed25519 public key")
    return key


def make_bundle(log: ClaimLog, opening: Opening) -> dict[str, Any]:
    """A claim bundle for a judge: the whole log and its head, the opening, and which entry
    the opening opens (the owner's public key is not trusted from the bundle)."""
    entries = log.entries()
    matching = [e.index for e in entries if e.commitment == opening.commitment()]
    if not matching:
        raise ClaimError(f"no entry of {log.path} commits to this opening")
    return {
        "format": BUNDLE_FORMAT,
        "entries": [asdict(e) for e in entries],
        "head": asdict(log.head()),
        "opening": opening.to_json(),
        "entry": matching[0],
    }


@dataclass(frozen=True)
class ClaimVerdict:
    """What a judge concludes from a claim bundle."""

    holds: bool
    reason: str
    entry: Entry | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "decision": "claim holds" if self.holds else "cannot verify",
            "reason": self.reason,
            "entry": asdict(self.entry) if self.entry else None,
        }


def check_bundle(
    bundle: object,
    public_key: Ed25519PublicKey,
    model: str | Path | None = None,
    secret: str | Path | None = None,
    before: datetime | None = None,
    published_head: str | None = None,
) -> ClaimVerdict:
    """Check a claim bundle offline; any failure is a "cannot verify" with its reason."""
    try:
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            raise ClaimError(f"not a {BUNDLE_FORMAT} document")
        raw_entries = bundle.get("entries")
        if not isinstance(raw_entries, list):
            raise ClaimError("the bundle holds no log entries")
        entries = [Entry.from_json(e, f"bundle entry {i}") for i, e in enumerate(raw_entries)]
        check_chain(entries, public_key)
        Head.from_json(bundle.get("head")).check(entries, public_key)
        positions = {e.digest(): e.index for e in entries}
        if published_head is not None and published_head not in positions:
            raise ClaimError(
                "the log does not contain the head published earlier: it was truncated"
            )
        opening = Opening.from_json(bundle.get("opening"))
        index = bundle.get("entry")
        if not isinstance(index, int) or not 0 <= index < len(entries):
            raise ClaimError("the bundle names no entry of its log")
        entry = entries[index]
        if published_head is not None and index > positions[published_head]:
            raise ClaimError(
                f"entry {index} comes after the head published earlier (entry "
                f"{positions[published_head]}): it did not exist when that head was published"
            )
        if not hmac.compare_digest(entry.commitment, opening.commitment()):
            raise ClaimError(f"the opening does not open entry {index}'s commitment")
        if model is not None and model_digest(model) != opening.model_digest:
            raise ClaimError("the model put before the judge is not the committed one")
        if secret is not None and secret_digest(secret) != (
            opening.secret_kind,
            opening.secret_digest,
        ):
            raise ClaimError("the watermark secret put before the judge is not the committed one")
        when = parse_time(entry.time)
        if before is not None and when >= before:
            raise ClaimError(f"the commitment ({entry.time}) does not predate {before.isoformat()}")
    except ModelheistError as exc:  # ClaimError, or an unreadable model or secret
        return ClaimVerdict(False, str(exc))
    checked = ["log intact", "commitment opens"]
    if model is not None:
        checked.append("model matches")
    if secret is not None:
        checked.append("secret matches")
    if before is not None:
        checked.append(f"dated before {before.isoformat()}")
    if published_head is not None:
        checked.append("committed before the published head")
    return ClaimVerdict(True, ", ".join(checked), entry)
