"""What every subcommand of ``modelheist`` shares: the application, consoles, one-line errors,
progress bars, JSON output and the option types used by several actors.

Library code raises :class:`~modelheist.errors.ModelheistError` for a user's mistake; commands
wrapped in :func:`user_errors` turn it into one line on stderr and exit status 2, with no
traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelheist.errors import ModelheistError

app = typer.Typer(
    help="modelheist: model stealing attacks, API defenses and ownership verification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Tables stay whole when piped to a file or another program (Rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 132)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 132)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Print a ModelheistError or an OSError as one line and exit with status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ModelheistError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # an unwritable or missing path the user named
            where = f": {exc.filename}" if exc.filename else ""
            err_console.print(f"[red]error:[/red] {exc.strerror or exc}{where}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
    )


@contextmanager
def progress_bar() -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        yield progress


def fresh_folder(path: Path | None, what: str) -> None:
    if path is not None and path.exists():
        raise ModelheistError(
            f"{what} {path} already exists; choose a new path (nothing was overwritten)"
        )


def write_json(path: Path | None, document: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        raise ModelheistError(f"cannot write {path}: {exc.strerror}") from None


def positive(name: str, value: int) -> int:
    if value < 1:
        raise ModelheistError(f"{name} must be at least 1, got {value}")
    return value


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):  # small p-values keep their digits
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"
    return str(value)


def measurement_table(
    rows: list[dict[str, Any]],
    title: str,
    columns: tuple[tuple[str, str], ...] | None = None,
) -> Table:
    from modelheist.experiments.report import COLUMNS

    columns = columns or COLUMNS
    table = Table(title=title)
    for key, header in columns:
        table.add_column(header, justify="left" if key in ("transfer_set", "output") else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(k)) for k, _ in columns))
    return table


VictimOption = Annotated[
    Path | None, typer.Option("--victim", help="Victim model folder (queried in-process).")
]
TargetOption = Annotated[
    str | None, typer.Option("--target", help="URL of a served model to query over HTTP.")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="MODELHEIST_API_KEY", help="API key for --target."),
]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON.")]
StateOption = Annotated[
    Path,
    typer.Option("--state", help="State folder: API keys, client state and the audit log."),
]
DEFAULT_STATE = Path("modelheist-state")
