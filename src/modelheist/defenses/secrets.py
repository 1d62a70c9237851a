"""Secrets of defense stages (a watermark's key, a noise key, a detector's model): files named in
a stage's spec, never inline.

A spec such as ``noise:sigma=0.05,key_file=keys/noise.key`` names the file; the spec string,
which ``serve`` prints and the ledger stores as the pipeline's identity, therefore carries the
path and never the secret. The file is checked when the spec is parsed and read when the
service opens its stages (:meth:`~modelheist.defenses.base.Defense.open`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from modelheist.errors import ModelheistError

#: Shortest accepted secret, in bytes (128 bits), and the longest a key file may be.
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 1 << 20
#: Argument names that look like a secret given inline: refused with a pointer to key files.
INLINE_SECRET_NAMES = frozenset({"key", "secret", "password", "token", "passphrase"})


class SecretFile:
    """A secret held in a file: its bytes, stripped of surrounding whitespace."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._secret: bytes | None = None

    def check(self) -> None:
        """Refuse, in one line, a path that is not a readable file holding a long enough key."""
        if not self.path.is_file():
            raise ModelheistError(f"key file {self.path} does not exist (or is not a file)")
        size = self.path.stat().st_size
        if size > MAX_SECRET_BYTES:
            raise ModelheistError(f"key file {self.path} is {size} bytes; a key file is small")
        if len(self.read()) < MIN_SECRET_BYTES:
            raise ModelheistError(
                f"key file {self.path} holds under {MIN_SECRET_BYTES} bytes; create one with "
                "`modelheist keys secret PATH`"
            )

    def read(self) -> bytes:
        """The secret (read once, then kept in memory)."""
        if self._secret is None:
            try:
                self._secret = self.path.read_bytes().strip()
            except OSError as exc:
                raise ModelheistError(f"cannot read key file {self.path}: {exc.strerror}") from None
        return self._secret

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:  # never the secret itself
        return f"SecretFile({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretFile) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


def create_secret_file(path: str | os.PathLike[str]) -> Path:
    """Write a new random 256-bit key (hex) to ``path``, readable by its owner only; an
    existing file is never overwritten."""
    path = Path(path)
    if path.exists():
        raise ModelheistError(f"{path} already exists; choose a new path (nothing was overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return path


def require_key_file(stage: str, what: str, key_file: SecretFile | None) -> None:
    """Refuse, in one line, a served stage whose secret is a public seed instead of a key file
    (a stage's ``check_serving``)."""
    if key_file is None:
        raise ModelheistError(
            f"{stage}: a served model's {what} needs the owner's key, key_file=PATH (make one "
            "with `modelheist keys secret PATH`); seed= is public, for experiments only"
        )
