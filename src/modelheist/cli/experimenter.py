"""The experimenter's commands: ``datasets``, ``quickstart``, ``experiment run``, ``experiment
ownership`` and ``experiment conflicts``."""

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
from modelheist.errors import ModelheistError


@app.command()
@user_errors
def datasets() -> None:
    """List the datasets modelheist knows and whether each is present here."""
    from modelheist.data.registry import PREFIXES, REGISTRY, dataset_available
    from modelheist.data.translation import TASKS, translation_names

    table = Table(title="datasets")
    for col in ("name", "kind", "available", "description"):
        table.add_column(col)
    available = {name: "yes" if dataset_available(name) else "no" for name in REGISTRY}
    for info in REGISTRY.values():
        table.add_row(info.name, info.kind, available[info.name], info.description)
    for prefix, description in PREFIXES.items():
        table.add_row(f"{prefix}:<folder>", "image", "-", description)
    for name in translation_names():  # the image-to-image tasks on each image set
        source, _, task = name.rpartition("-")
        table.add_row(name, "image-to-image", available[source], f"{source}: {TASKS[task]}")
    console.print(table)


def _at(query: int | None) -> str:
    return "never" if query is None else f"at query {query:,}"


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
    from modelheist.experiments.report import (
        DETECTION_COLUMNS,
        WATERMARK_COLUMNS,
        write_quickstart_report,
    )

    config = QuickstartConfig.fast(seed) if fast else QuickstartConfig.full(seed)
    report.mkdir(parents=True, exist_ok=True)  # an unusable folder fails now, not after the work
    with progress_bar() as progress:
        progress.console.print(f"quickstart ({'fast' if fast else 'full'}): training the victim...")
        _, document = run_quickstart(
            config,
            progress,
            on_result=lambda m, run: progress.console.print(
                f"  {m.transfer_set:>13} {m.output:>6} {m.queries_used:>5} queries: "
                f"fidelity {m.fidelity_test:.4f}; PRADA alarm "
                f"{_at(run['prada_alarm'])}, OOD alarm {_at(run['ood_alarm'])}; DAWN: "
                f"{run['dawn_verdict']} ({run['dawn_watermarks']} watermarks)"
            ),
        )
    victim = document["victim"]
    console.print(
        f"victim: {victim['architecture']} on {victim['dataset']}, "
        f"test accuracy {victim['test_accuracy']:.4f}"
    )
    console.print(
        measurement_table(document["runs"], "Knockoff Nets (random), shortened: see below")
    )
    console.print(
        measurement_table(
            document["runs"],
            "The API's detectors (flag policy): the query of the first alarm",
            DETECTION_COLUMNS,
        )
    )
    console.print(
        measurement_table(
            document["runs"],
            f"DAWN ({document['watermark']}): each surrogate against its client's watermark set",
            WATERMARK_COLUMNS,
        )
    )
    independent = document["independent_model"]
    console.print(
        f"An independently trained model: accused by {independent['accused']} of "
        f"{len(independent['checks'])} clients' watermark sets (each at "
        f"{independent['significance_per_set']:.3g}).",
        highlight=False,
    )
    console.print("Detectors: " + ", ".join(document["detectors"]), highlight=False, soft_wrap=True)
    console.print(f"This is {document['note']}.", highlight=False, soft_wrap=True)
    path = write_quickstart_report(document, report)
    write_json(json_path, document)
    console.print(f"report: {path}" + (f"; JSON: {json_path}" if json_path else ""))


experiment_app = typer.Typer(help="Run scenarios into results stores.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _seeds(count: int | None) -> list[int] | None:
    """``--seeds N``: seeds 0 .. N-1 in place of the file's list."""
    if count is None:
        return None
    if count < 1:
        raise ModelheistError(f"--seeds must be at least 1, got {count}")
    return list(range(count))


@experiment_app.command("run")
@user_errors
def experiment_run(
    scenario_path: Annotated[
        Path, typer.Argument(help="A scenario file (TOML; see examples/).", show_default=False)
    ],
    store: Annotated[
        Path | None,
        typer.Option(help="Results store (JSON Lines); default: results/SCENARIO-NAME.jsonl."),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(help="Run seeds 0 .. N-1 instead of the file's list (e.g. 3: 0, 1, 2)."),
    ] = None,
    victims: Annotated[
        Path | None,
        typer.Option(help="Folder caching the trained victims (default: beside the store)."),
    ] = None,
) -> None:
    """Run every grid point of a scenario not yet in its results store, one row per run."""
    import sys

    from modelheist.experiments.results import ResultsStore
    from modelheist.experiments.runner import ScenarioRunner
    from modelheist.experiments.scenario import Scenario

    scenario = Scenario.load(scenario_path)
    chosen = _seeds(seeds)
    path = store or Path("results") / f"{scenario.name}.jsonl"
    command = " ".join(["modelheist", *sys.argv[1:]])
    with progress_bar() as progress:
        runner = ScenarioRunner(
            ResultsStore(path, command),
            victims or path.with_name(f"{path.stem}-victims"),
            progress=progress,
        )

        def show(row: dict) -> None:
            m = row["metrics"]
            progress.console.print(
                f"  seed {row['seed']} {row['variant']:>8} {row['transfer_set']:>13} "
                f"{row['output']:>6} {row['budget']:>6}: fidelity {m['fidelity_test']:.4f} "
                f"(validation {m.get('fidelity_validation', float('nan')):.4f}), "
                f"{row['queries_counted']} queries",
                highlight=False,
            )

        rows = runner.run(scenario, chosen, on_row=show)
    table = Table(title=f"{len(rows)} new runs of {scenario.name} (stored in {path})")
    for column in ("seed", "variant", "transfer set", "output", "budget", "queries"):
        table.add_column(column)
    for column in ("fidelity (validation)", "fidelity (test)"):
        table.add_column(column, justify="right")
    for row in rows:
        m = row["metrics"]
        table.add_row(
            str(row["seed"]),
            row["variant"],
            row["transfer_set"],
            row["output"],
            str(row["budget"]),
            str(row["queries_counted"]),
            f"{m.get('fidelity_validation', float('nan')):.4f}",
            f"{m['fidelity_test']:.4f}",
        )
    console.print(table)


@experiment_app.command("ownership")
@user_errors
def experiment_ownership(
    dataset: Annotated[str, typer.Option(help="The owner's dataset.")] = "fashion-mnist",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run folder (resumed if it holds this run); default: runs/ownership-DATASET-seedS."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data split and of everything.")] = 0,
    independents: Annotated[
        int | None, typer.Option(help="Independent models (default: 20; --fast: 4).")
    ] = None,
    budget: Annotated[
        int | None, typer.Option(help="Queries per extraction (default: 10,000; --fast: 400).")
    ] = None,
    significance: Annotated[float, typer.Option(help="Significance of every decision.")] = 0.01,
    jobs: Annotated[
        int,
        typer.Option(
            help="Models made at once, each in a worker process with its share of the cores "
            "(the independent and removal-attacked suspects, the fingerprint's ensemble, the "
            "judge's references); the extractions through the API run one after another."
        ),
    ] = 1,
    fast: Annotated[
        bool,
        typer.Option(help="Few models, short training (a minute on digits); numbers indicative."),
    ] = False,
) -> None:
    """Every ownership scheme against the same suspects: the marked model, surrogates stolen
    through the DAWN-served API, removal-attacked copies, and independent models; per cell the
    p-value and decision, per scheme the ROC AUC, detections and false accusations."""
    from dataclasses import replace

    from modelheist.experiments.executors import LocalExecutor
    from modelheist.experiments.matrix_report import write_matrix_report
    from modelheist.experiments.ownership_matrix import MatrixConfig, MatrixRun, default_ood

    config = (
        MatrixConfig.small(dataset, seed)
        if fast
        else MatrixConfig(dataset=dataset, ood_dataset=default_ood(dataset), seed=seed)
    )
    changes: dict = {"significance": significance}
    if independents is not None:
        changes["independents"] = independents
    if budget is not None:
        changes["budget"] = budget
    config = replace(config, **changes)
    executor = LocalExecutor(jobs)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset)
    folder = out or Path("runs") / f"ownership-{safe}-seed{seed}"
    with progress_bar() as progress:

        def show(cell: dict) -> None:
            p = cell["p_value"]
            progress.console.print(
                f"  {cell['suspect']:>18} {cell['scheme']:>22}: {cell['decision']}"
                + ("" if p is None else f" (p {p:.2g})"),
                highlight=False,
            )

        document = MatrixRun(config, folder, progress, executor).run(on_cell=show)
    table = Table(title=f"ownership matrix, {dataset} (significance {significance:g})")
    for column in ("scheme", "ROC AUC", "stolen detected", "independent accused", "cannot verify"):
        table.add_column(column)
    for scheme, s in document["summary"].items():
        table.add_row(
            scheme,
            "-" if s["roc_auc"] is None else f"{s['roc_auc']:.3f}",
            f"{s['detected']} of {s['stolen']}",
            f"{s['false_accusations']} of {s['independent']}",
            str(s["cannot_verify"]),
        )
    console.print(table)
    paths = write_matrix_report(document, folder)
    console.print(f"report: {paths['markdown']}, {paths['json']}, {paths['plot']}")


@experiment_app.command("conflicts")
@user_errors
def experiment_conflicts(
    dataset: Annotated[str, typer.Option(help="The owner's dataset.")] = "fashion-mnist",
    protections: Annotated[
        str,
        typer.Option(
            help="Mechanisms, comma-separated: wm (backdoor watermark), rad (radioactive "
            "data), di (dataset inference), dp (DP-SGD), adv (PGD adversarial training)."
        ),
    ] = "wm,rad,di,dp,adv",
    combinations: Annotated[
        str,
        typer.Option(
            help="pairs (each defense with each ownership mechanism), all (every set of two "
            "or more), or a list: dp+wm,adv+rad+wm."
        ),
    ] = "pairs",
    seeds: Annotated[int, typer.Option(help="Seeds 0 .. N-1.")] = 3,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run folder (resumed if it holds this run); default: runs/conflicts-DATASET."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs of every cell.")] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(help="adamw (default) or sgd (momentum 0.9, the study's optimiser)."),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate of every cell (default 2e-3).")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="Weight decay of every cell (default 1e-4).")
    ] = None,
    train_size: Annotated[
        int | None, typer.Option(help="Cap the owner's training split at this many images.")
    ] = None,
    trigger_rounds: Annotated[
        int | None,
        typer.Option(help="Watermark trigger passes after each epoch (default 1, the study's)."),
    ] = None,
    trigger_clip: Annotated[
        float | None,
        typer.Option(
            help="Clip each non-private trigger step's gradient norm at this (default: none, "
            "the study's; a deviation for short, fast schedules)."
        ),
    ] = None,
    dp_covers_triggers: Annotated[
        bool,
        typer.Option(
            help="Calibrate DP-SGD's noise for the watermark's private trigger steps too, so "
            "that a cell with both spends epsilon, not more (default: off, the study's: they "
            "come on top)."
        ),
    ] = False,
    relaxed_lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate of the larger-clip relaxation's cell (default: --lr; DP-SGD's "
            "noise grows with the clipping norm, so the study gives it a rate of its own)."
        ),
    ] = None,
    adv_lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate of the cells with adversarial training (default: --lr; PGD "
            "training from scratch may diverge at a rate chosen for clean training)."
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="Where cells run: local (a process pool) or ray.")
    ] = "local",
    jobs: Annotated[
        int,
        typer.Option(
            help="Cells at once, on this machine's cores (a process pool or a local Ray)."
        ),
    ] = 1,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster address (HOST:PORT, ray://HOST:PORT or auto); none: a "
            "local Ray instance for the run."
        ),
    ] = None,
    fast: Annotated[
        bool,
        typer.Option(
            help="The test suite's short run, for a look in seconds on --dataset digits: 12 "
            "epochs at batch 64, 20 noise triggers, small dataset-inference secrets, DP-SGD "
            "at epsilon 8 (not 3) and a 3-step PGD (0.15, step 0.05); numbers indicative."
        ),
    ] = False,
) -> None:
    """Train the same model with no protection, each protection alone and each combination;
    the talk's conflict table (accuracy, watermark accuracy, radioactive loss difference,
    dataset-inference p, adversarial accuracy, epsilon spent) over seeds and the conflict
    verdicts, as Markdown, JSON and a plot."""
    from modelheist.experiments.conflicts import (
        ConflictsConfig,
        default_trigger_source,
        run_conflicts,
    )
    from modelheist.experiments.executors import executor_for

    if seeds < 1:
        raise ModelheistError(f"--seeds must be at least 1, got {seeds}")
    chosen = tuple(p.strip() for p in protections.split(",") if p.strip())
    changes: dict = {"protections": chosen, "combinations": combinations}
    for name, value in (
        ("epochs", epochs),
        ("optimizer", optimizer),
        ("lr", lr),
        ("weight_decay", weight_decay),
        ("trigger_rounds", trigger_rounds),
        ("trigger_clip", trigger_clip),
        ("relaxed_lr", relaxed_lr),
        ("adv_lr", adv_lr),
    ):
        if value is not None:
            changes[name] = value
    if train_size is not None:
        changes["train_size"] = train_size
    if dp_covers_triggers:
        changes["dp_covers_triggers"] = True
    if fast:
        config = ConflictsConfig.small(dataset, **changes)
    else:
        config = ConflictsConfig(
            dataset=dataset, trigger_source=default_trigger_source(dataset), **changes
        )
    runner = executor_for(executor, jobs, address)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset)
    folder = out or Path("runs") / f"conflicts-{safe}"
    with progress_bar() as progress:

        def show(row: dict) -> None:
            m = row["metrics"]
            shown = ", ".join(
                f"{k} {v:.3g}" for k, v in m.items() if isinstance(v, float) and k != "seconds"
            )
            progress.console.print(
                f"  seed {row['seed']} {row['cell']:>28}: {shown}", highlight=False
            )

        doc = run_conflicts(config, range(seeds), folder, runner, progress, show)
    from modelheist.experiments.conflicts_report import markdown

    console.print(markdown(doc), highlight=False)
    console.print(
        f"report: {folder / 'conflicts.md'}, {folder / 'conflicts.json'}, {folder / 'conflicts.png'}"
    )
