"""The adversaries of ownership resolution, as ``attack`` subcommands: ``attack remove`` (the
malicious suspect strips a watermark from a stolen copy) and ``attack false-claim`` (the
malicious accuser frames independent models with crafted "watermarks")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelheist.cli.common import (
    JsonOption,
    console,
    fresh_folder,
    progress_bar,
    user_errors,
    write_json,
)
from modelheist.errors import ModelheistError

ownership_attacks = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@ownership_attacks.command("remove")
@user_errors
def remove(
    model: Annotated[Path, typer.Option(help="The stolen copy (a model folder).")],
    method: Annotated[
        list[str],
        typer.Option(
            help="Removal (repeat): ftll, ftal, rtll, rtal, prune:RATE, noise:SIGMA, extract.",
            show_default=False,
        ),
    ],
    triggers: Annotated[
        Path | None, typer.Option(help="Measure this backdoor trigger-set folder's evidence.")
    ] = None,
    dawn_state: Annotated[
        Path | None, typer.Option(help="Measure a DAWN watermark kept in this state folder.")
    ] = None,
    client: Annotated[
        str | None, typer.Option(help="With --dawn-state: the client whose set to test.")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.")] = 10,
    lr: Annotated[float, typer.Option(help="Fine-tuning peak learning rate.")] = 1e-3,
    examples: Annotated[
        int | None,
        typer.Option(help="Labelled attacker examples to fine-tune with (default: all)."),
    ] = None,
    extract_budget: Annotated[int, typer.Option(help="Queries of the extract removal.")] = 10_000,
    significance: Annotated[float, typer.Option(help="Significance of the verdicts.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="New folder for the modified copy (one --method only).")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write accuracy against evidence as a PNG.")
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """Modify a stolen copy to remove the owner's watermark, and report each result's test
    accuracy and the watermark evidence left (p-value and verdict)."""
    from modelheist.attacks.removal import parse_removal

    removals = [parse_removal(spec) for spec in method]
    if out is not None and len(removals) != 1:
        raise ModelheistError("--out keeps one modified copy: give one --method")
    fresh_folder(out, "output folder")
    if triggers is None and dawn_state is None:
        raise ModelheistError("name the watermark to measure: --triggers DIR or --dawn-state DIR")
    if client is not None and dawn_state is None:
        raise ModelheistError("--client goes with --dawn-state")
    from modelheist.experiments.removal import (
        RemovalSettings,
        plot_removal,
        removal_rows,
    )
    from modelheist.experiments.targets import victim_split
    from modelheist.models.store import load_model, save_model

    settings = RemovalSettings(epochs, lr, examples, extract_budget, seed)
    stolen = load_model(model)
    schemes = _schemes(triggers, dawn_state, client)
    data = victim_split(stolen)
    keep = None if out is None else (lambda _, copy: save_model(copy, out))
    with progress_bar() as progress:
        rows = removal_rows(
            stolen, removals, schemes, data, settings, significance, progress, on_copy=keep
        )
    table = Table(title=f"removal attacks on {model}")
    for column in ("removal", "watermark", "test acc.", "wm acc.", "p-value", "verdict"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["removal"],
            row["scheme"],
            f"{row['test_accuracy']:.4f}",
            _fmt(row["watermark_accuracy"], ".3f"),
            _fmt(row["p_value"], ".3g"),
            row["decision"] + (f" ({row['reason']})" if row["reason"] else ""),
        )
    console.print(table)
    if plot is not None:
        plot_removal(rows, plot, significance)
    write_json(json_path, {"significance": significance, "seed": seed, "rows": rows})


def _schemes(triggers: Path | None, dawn_state: Path | None, client: str | None):
    from modelheist.ownership.watermark import BackdoorWatermarkScheme, TriggerSet

    schemes = {}
    if triggers is not None:
        schemes["backdoor"] = BackdoorWatermarkScheme(TriggerSet.load(triggers))
    if dawn_state is not None:
        from modelheist.api.watermark_sets import dawn_watermark_sets
        from modelheist.ownership.dawn import DawnScheme

        sets = dawn_watermark_sets(dawn_state, client)
        if len(sets) != 1:
            raise ModelheistError(
                f"{len(sets)} clients have a DAWN watermark in {dawn_state}; name one with --client"
            )
        mark = sets[0]
        schemes[f"dawn ({mark.client})"] = DawnScheme(
            mark.inputs, mark.labels, mark.num_classes, mark.client
        )
    return schemes


@ownership_attacks.command("false-claim")
@user_errors
def false_claim(
    scheme: Annotated[str, typer.Option(help="The scheme to abuse: backdoor or dawn.")],
    accuser: Annotated[
        list[Path],
        typer.Option(
            help="A model the accuser crafts on (repeat for an ensemble).", show_default=False
        ),
    ],
    suspect: Annotated[
        list[Path],
        typer.Option(help="An independently trained model to accuse (repeat).", show_default=False),
    ],
    reference: Annotated[
        list[Path] | None,
        typer.Option(help="The judge's independent reference model (repeat): enables the screen."),
    ] = None,
    examples: Annotated[int, typer.Option(help="Crafted watermark examples.")] = 100,
    epsilon: Annotated[float, typer.Option(help="L-infinity budget (the paper: 16/255).")] = 16
    / 255,
    steps: Annotated[int, typer.Option(help="I-FGSM steps.")] = 40,
    grind_tries: Annotated[
        int, typer.Option(help="Backdoor: seeds the grinding accuser searches (0: skip).")
    ] = 1000,
    significance: Annotated[float, typer.Option(help="Significance of the verdicts.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="New folder for the crafted set (a trigger-set folder).")
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """Craft transferable adversarial examples on the accuser's models (Liu et al., USENIX
    Security '24), present them as a watermark, and report which independent suspects a naive
    verification, and each countermeasure, would declare stolen."""
    from modelheist.experiments.false_claims import (
        FalseClaimSettings,
        false_claim_rows,
        success_rates,
    )
    from modelheist.experiments.targets import victim_split
    from modelheist.models.classifier import TorchClassifier
    from modelheist.models.store import load_model

    if scheme not in ("backdoor", "dawn"):
        raise ModelheistError(f"--scheme is backdoor or dawn, not {scheme!r}")
    fresh_folder(out, "output folder")
    accusers = [load_model(path) for path in accuser]
    if not all(isinstance(m, TorchClassifier) for m in accusers):
        raise ModelheistError("the accuser crafts on networks (gradients); give network folders")
    suspects = {str(path): load_model(path) for path in suspect}
    references = [load_model(path) for path in reference or []]
    everyone = [*accusers, *suspects.values(), *references]
    if len({(tuple(m.card.input_shape), m.card.num_classes) for m in everyone}) != 1:
        raise ModelheistError(
            "the accuser's, suspects' and references' input shapes or class counts differ"
        )
    settings = FalseClaimSettings(examples, epsilon, steps, grind_tries, significance, seed=seed)
    data = victim_split(accusers[0])
    natural = data.pool.x if len(data.pool) else data.test.x
    rows, crafted = false_claim_rows(
        scheme,  # type: ignore[arg-type]
        accusers,  # type: ignore[arg-type]
        natural,
        data.num_classes,
        suspects,
        references,
        settings,
        grind_source=data.name if grind_tries > 0 else None,
    )
    rates = success_rates(rows)
    table = Table(title=f"false claims ({scheme}) against {len(suspects)} independent model(s)")
    for column in ("accuser", "verification", "declared stolen", "share"):
        table.add_column(column)
    for (_, claim, defense), rate in rates.items():
        stolen = sum(
            r["decision"] == "stolen"
            for r in rows
            if (r["claim"], r["defense"]) == (claim, defense)
        )
        table.add_row(claim, defense, f"{stolen} of {len(suspects)}", f"{rate:.2f}")
    console.print(table)
    if out is not None:
        crafted.save(out)
    write_json(
        json_path,
        {
            "scheme": scheme,
            "significance": significance,
            "seed": seed,
            "rates": [{"claim": c, "defense": d, "rate": r} for (_, c, d), r in rates.items()],
            "rows": rows,
        },
    )
