"""The verifier's commands: ``verify SCHEME`` against a suspect model folder or URL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelheist.cli.common import (
    ApiKeyOption,
    JsonOption,
    TargetOption,
    app,
    console,
    user_errors,
    write_json,
)
from modelheist.errors import ModelheistError

verify_app = typer.Typer(
    help="Decide whether a suspect model derives from yours, with a p-value.",
    no_args_is_help=True,
)
app.add_typer(verify_app, name="verify")

SuspectOption = Annotated[
    Path | None, typer.Option("--suspect", help="Suspect model folder (queried in-process).")
]


@verify_app.command("backdoor-watermark")
@user_errors
def verify_backdoor_watermark(
    triggers: Annotated[
        Path, typer.Option(help="The watermark's trigger-set folder (from train --secret-out).")
    ],
    owner_model: Annotated[
        Path,
        typer.Option(help="The owner's watermarked model folder: its card records the set."),
    ],
    suspect: SuspectOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    significance: Annotated[float, typer.Option(help="Significance level of the test.")] = 0.01,
    budget: Annotated[
        int | None, typer.Option(help="Most queries to spend on the suspect (default: as needed).")
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """Query the suspect with the watermark's triggers; an exact binomial test decides. The
    trigger set must be the one the owner's model card recorded when it was embedded."""
    if (suspect is None) == (target is None):
        raise ModelheistError("name one suspect: --suspect DIR or --target URL --api-key KEY")
    from modelheist.experiments.targets import http_oracle, local_oracle
    from modelheist.models.store import load_card, load_model
    from modelheist.oracle import Oracle
    from modelheist.ownership.watermark import (
        BackdoorWatermarkScheme,
        TriggerSet,
        recorded_commitment,
    )

    commitment = recorded_commitment(load_card(owner_model))
    scheme = BackdoorWatermarkScheme(TriggerSet.load(triggers), commitment)
    oracle: Oracle = (
        http_oracle(target, api_key)
        if target is not None
        else local_oracle(load_model(suspect), client="verifier")  # type: ignore[arg-type]
    )
    evidence = scheme.verify(oracle, significance, budget)
    if evidence.decision == "cannot verify":
        console.print(f"cannot verify: {evidence.reason}", highlight=False)
    else:
        console.print(
            f"{evidence.decision}: {evidence.statistic_name} {evidence.statistic:.4f}, "
            f"p-value {evidence.p_value:.3g} at significance {significance:g} "
            f"({evidence.queries} queries)",
            highlight=False,
        )
    write_json(json_path, evidence.to_json())
