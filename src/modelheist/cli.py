"""The ``modelheist`` command: one subcommand per actor (DESIGN.md, "CLI").

Library code raises :class:`~modelheist.errors.ModelheistError` for a user's mistake; this module
turns it into one line on stderr and exit status 2, with no traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
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
attack_app = typer.Typer(help="Extract a surrogate of a victim model.", no_args_is_help=True)
app.add_typer(attack_app, name="attack")

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


def _fresh_folder(path: Path | None, what: str) -> None:
    if path is not None and path.exists():
        raise ModelheistError(
            f"{what} {path} already exists; choose a new path (nothing was overwritten)"
        )


def _write_json(path: Path | None, document: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        raise ModelheistError(f"cannot write {path}: {exc.strerror}") from None


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ModelheistError(f"{name} must be at least 1, got {value}")
    return value


def _measurement_table(rows: list[dict[str, Any]], title: str) -> Table:
    from modelheist.experiments.report import COLUMNS

    table = Table(title=title)
    for key, header in COLUMNS:
        table.add_column(header, justify="left" if key in ("transfer_set", "output") else "right")
    for row in rows:
        table.add_row(
            *(f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k, _ in COLUMNS)
        )
    return table


@app.command()
@user_errors
def datasets() -> None:
    """List the datasets modelheist knows and whether each is present here."""
    from modelheist.data.registry import PREFIXES, REGISTRY, dataset_available

    table = Table(title="datasets")
    for col in ("name", "kind", "available", "description"):
        table.add_column(col)
    for info in REGISTRY.values():
        table.add_row(
            info.name, info.kind, "yes" if dataset_available(info.name) else "no", info.description
        )
    for prefix, description in PREFIXES.items():
        table.add_row(f"{prefix}:<folder>", "image", "-", description)
    console.print(table)


@app.command()
@user_errors
def train(
    dataset: Annotated[str, typer.Option(help="Dataset name (see `modelheist datasets`).")],
    arch: Annotated[str, typer.Option(help="Architecture: mlp, cnn, logreg or tree.")],
    out: Annotated[Path, typer.Option(help="New folder for the model (weights + card).")],
    epochs: Annotated[int, typer.Option(help="Training epochs (networks).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the data split and the training.")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the model card as JSON.")
    ] = None,
) -> None:
    """Train a victim model and save it (safetensors weights + JSON card)."""
    from modelheist.data import load_dataset
    from modelheist.models import TrainConfig, save_model, train_model

    _fresh_folder(out, "output folder")
    config = TrainConfig(epochs=_positive("--epochs", epochs), seed=seed)
    data = load_dataset(dataset, seed=seed)
    with progress_bar() as progress:
        model = train_model(data, arch, config, progress)
    save_model(model, out)
    _write_json(json_path, asdict(model.card))
    metrics = model.card.metrics
    console.print(
        f"trained {arch} on {dataset}: test accuracy {metrics['test_accuracy']:.4f} "
        f"(train {metrics['train_accuracy']:.4f}); saved to {out}"
    )


@attack_app.command("knockoff")
@user_errors
def attack_knockoff(
    victim: Annotated[Path, typer.Option(help="Victim model folder.")],
    transfer_set: Annotated[str, typer.Option(help="Dataset the attacker queries with.")],
    budget: Annotated[int, typer.Option(help="Maximum number of queries (hard limit).")],
    output: Annotated[
        str, typer.Option(help="API output: probs, labels, top-k:K, round:N.")
    ] = "probs",
    out: Annotated[Path | None, typer.Option(help="New folder for the surrogate model.")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of sampling and training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Surrogate training epochs.")] = 60,
    temperature: Annotated[
        float, typer.Option(help="Distillation temperature (1: the paper's plain KL).")
    ] = 4.0,
    temperature_weight: Annotated[
        float, typer.Option(help="Weight of the tempered loss against plain KL (1: tempered only).")
    ] = 0.5,
    unlabeled: Annotated[
        int | None, typer.Option(help="Unqueried transfer inputs for self-training (default: all).")
    ] = None,
    rounds: Annotated[
        int, typer.Option(help="Self-training rounds on the unqueried transfer inputs (0: off).")
    ] = 0,
    members: Annotated[
        int, typer.Option(help="Train an ensemble of this many surrogates on the same answers.")
    ] = 1,
) -> None:
    """Knockoff Nets (random strategy) against a victim folder."""
    from modelheist.attacks import KnockoffNets
    from modelheist.data import attacker_transfer_set, load_dataset
    from modelheist.defenses import parse_output
    from modelheist.experiments.extraction import Evaluation, measure_extraction
    from modelheist.models import load_model, save_model

    _fresh_folder(out, "output folder")
    _positive("--budget", budget)
    parse_output(output)  # a bad spec fails before any work
    attack = KnockoffNets(
        epochs=_positive("--epochs", epochs),
        temperature=temperature,
        temperature_weight=temperature_weight,
        unlabeled=unlabeled,
        rounds=rounds,
        members=_positive("--members", members),
    )
    model = load_model(victim)
    split = model.card.training.get("split", {"seed": 0, "pool_fraction": 0.5})
    data = load_dataset(
        model.card.dataset, seed=split["seed"], pool_fraction=split["pool_fraction"]
    )
    pool = attacker_transfer_set(transfer_set, data)
    with progress_bar() as progress:
        result, m = measure_extraction(
            model,
            attack,
            pool,
            Evaluation.of(model, data.test, seed=seed),
            budget,
            output,
            transfer_set,
            seed,
            progress=progress,
        )
    if out is not None:
        save_model(result.surrogate, out)
    row = asdict(m)
    console.print(_measurement_table([row], f"Knockoff Nets against {victim}"))
    _write_json(
        json_path, {**row, "params": result.params, "seed": seed, "details": result.details}
    )


@app.command()
@user_errors
def quickstart(
    fast: Annotated[
        bool, typer.Option(help="Small run (under a minute); numbers only indicative.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON.")
    ] = None,
    report: Annotated[Path, typer.Option(help="Folder for report.md and fidelity.png.")] = Path(
        "runs/quickstart"
    ),
    seed: Annotated[int, typer.Option(help="Seed of everything.")] = 0,
) -> None:
    """Train a victim, attack it with Knockoff Nets in three settings, print and report."""
    from modelheist.experiments.quickstart import QuickstartConfig, run_quickstart
    from modelheist.experiments.report import write_quickstart_report

    config = QuickstartConfig.fast(seed) if fast else QuickstartConfig.full(seed)
    report.mkdir(parents=True, exist_ok=True)  # an unusable folder fails now, not after the work
    with progress_bar() as progress:
        progress.console.print(f"quickstart ({'fast' if fast else 'full'}): training the victim...")
        _, document = run_quickstart(
            config,
            progress,
            on_result=lambda m: progress.console.print(
                f"  {m.transfer_set:>13} {m.output:>6} {m.queries_used:>5} queries: "
                f"fidelity {m.fidelity_test:.4f}"
            ),
        )
    victim = document["victim"]
    console.print(
        f"victim: {victim['architecture']} on {victim['dataset']}, "
        f"test accuracy {victim['test_accuracy']:.4f}"
    )
    console.print(_measurement_table(document["runs"], "Knockoff Nets (random)"))
    path = write_quickstart_report(document, report)
    _write_json(json_path, document)
    console.print(f"report: {path}" + (f"; JSON: {json_path}" if json_path else ""))


if __name__ == "__main__":
    app()
