"""The owner's and the judge's commands for signed commitments: ``claims keygen|add|show|bundle|
check`` (:mod:`modelheist.ownership.claims`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelheist.cli.common import JsonOption, app, console, err_console, user_errors, write_json
from modelheist.errors import ModelheistError

claims_app = typer.Typer(
    help="Commit to a model and its watermark secret in a signed, hash-chained log; let a "
    "judge check a claim offline.",
    no_args_is_help=True,
)
app.add_typer(claims_app, name="claims")

LogOption = Annotated[Path, typer.Option("--log", help="The claim log (JSON Lines).")]


@claims_app.command("keygen")
@user_errors
def claims_keygen(
    folder: Annotated[
        Path, typer.Argument(help="New folder for the key pair.", show_default=False)
    ],
) -> None:
    """Create the owner's Ed25519 key pair: signing.key (private, mode 0600) and signing.pub
    (what a judge checks signatures with)."""
    from modelheist.ownership.claims import generate_keys

    private, public = generate_keys(folder)
    err_console.print(f"signing key {private} (keep it private); public key {public}")


@claims_app.command("add")
@user_errors
def claims_add(
    log: LogOption,
    signing_key: Annotated[Path, typer.Option(help="The owner's signing.key.")],
    model: Annotated[Path, typer.Option(help="The model folder to commit to.")],
    secret: Annotated[
        Path,
        typer.Option(help="The watermark secret: a trigger-set folder or a DAWN key file."),
    ],
    opening_out: Annotated[
        Path, typer.Option(help="New file for the commitment's opening (keep it private).")
    ],
    label: Annotated[str, typer.Option(help="A public note for the entry.")] = "",
) -> None:
    """Commit to (model, secret, fresh salt): a signed entry chained to the log's last one.
    The opening, which reveals what was committed, goes to --opening-out; publish the head."""
    from modelheist.ownership.claims import ClaimLog, Opening, load_signing_key

    if opening_out.exists():
        raise ModelheistError(f"{opening_out} already exists; choose a new path")
    key = load_signing_key(signing_key)
    opening = Opening.fresh(model, secret)
    claim_log = ClaimLog(log)
    _write_private(opening_out, opening.to_json())  # first: a commitment is useless unopened
    try:
        entry = claim_log.append(key, opening.commitment(), label)
    except BaseException:
        try:
            written = any(e.commitment == opening.commitment() for e in claim_log.entries())
        except ModelheistError:
            written = True  # cannot tell: keep the opening
        if not written:  # nothing was committed: there is nothing to open
            opening_out.unlink(missing_ok=True)
        raise
    console.print(
        f"entry {entry.index} at {entry.time}: commitment {entry.commitment}\n"
        f"head (publish it): {entry.digest()}",
        highlight=False,
    )


@claims_app.command("show")
@user_errors
def claims_show(
    log: LogOption,
    public_key: Annotated[
        Path | None, typer.Option(help="Check the log against this public key too.")
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """List the log's entries and its head hash (checked if --public-key is given)."""
    from dataclasses import asdict

    from modelheist.ownership.claims import ClaimLog, load_public_key

    claim_log = ClaimLog(log)
    if not log.exists():
        raise ModelheistError(f"claim log {log} does not exist")
    entries = claim_log.check(load_public_key(public_key)) if public_key else claim_log.entries()
    table = Table("index", "time", "commitment", "label", title=str(log))
    for entry in entries:
        table.add_row(str(entry.index), entry.time, entry.commitment[:16] + "…", entry.label)
    console.print(table)
    head = entries[-1].digest() if entries else None
    status = "checked against the public key" if public_key else "not checked"
    console.print(f"head: {head} ({len(entries)} entries; {status})", highlight=False)
    write_json(json_path, {"entries": [asdict(e) for e in entries], "head": head})


@claims_app.command("bundle")
@user_errors
def claims_bundle(
    log: LogOption,
    opening: Annotated[Path, typer.Option(help="The opening written by `claims add`.")],
    out: Annotated[Path, typer.Option(help="New file for the claim bundle (JSON).")],
) -> None:
    """Write a claim bundle for a judge: the log, its signed head and the opening."""
    from modelheist.ownership.claims import ClaimLog, Opening, make_bundle

    if out.exists():
        raise ModelheistError(f"{out} already exists; choose a new path")
    bundle = make_bundle(ClaimLog(log), Opening.from_json(_read_json(opening)))
    write_json(out, bundle)
    console.print(f"claim bundle {out} (opens entry {bundle['entry']})", highlight=False)


@claims_app.command("check")
@user_errors
def claims_check(
    bundle: Annotated[Path, typer.Argument(help="A claim bundle.", show_default=False)],
    public_key: Annotated[
        Path, typer.Option(help="The owner's public key, obtained independently of the bundle.")
    ],
    model: Annotated[
        Path | None, typer.Option(help="The owner's model folder: must be the committed one.")
    ] = None,
    secret: Annotated[
        Path | None,
        typer.Option(help="The watermark secret presented: must be the committed one."),
    ] = None,
    before: Annotated[
        str | None,
        typer.Option(
            help="The suspect's registration time (ISO 8601): the commitment must predate it."
        ),
    ] = None,
    head: Annotated[
        str | None, typer.Option(help="A head hash the owner published earlier.")
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """Check a claim offline: the log is intact and signed, the opening opens the entry, the
    model and secret are the committed ones, and the commitment predates --before. Exit 0
    when the claim holds, 2 when it cannot be verified."""
    from modelheist.ownership.claims import check_bundle, load_public_key, parse_time

    when = parse_time(before, "--before") if before is not None else None
    verdict = check_bundle(
        _read_json(bundle), load_public_key(public_key), model, secret, when, head
    )
    if verdict.holds:
        assert verdict.entry is not None
        console.print(
            f"claim holds: entry {verdict.entry.index} of {verdict.entry.time} ({verdict.reason})",
            highlight=False,
        )
    else:
        console.print(f"cannot verify: {verdict.reason}", highlight=False)
    write_json(json_path, verdict.to_json())
    if not verdict.holds:
        raise typer.Exit(2)


def _write_private(path: Path, document: dict) -> None:
    """Write ``document`` to a new file readable by its owner only, synced to disk."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(document, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelheistError(f"{path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelheistError(f"{path} is not JSON") from None
