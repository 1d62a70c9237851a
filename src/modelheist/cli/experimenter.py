"""The experimenter's commands: ``datasets`` and ``quickstart``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelheist.cli.common import (
    app,
    console,
    measurement_table,
    progress_bar,
    user_errors,
    write_json,
)


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
    console.print(measurement_table(document["runs"], "Knockoff Nets (random)"))
    path = write_quickstart_report(document, report)
    write_json(json_path, document)
    console.print(f"report: {path}" + (f"; JSON: {json_path}" if json_path else ""))
