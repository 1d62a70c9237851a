"""The verifier's commands: ``verify SCHEME`` against a suspect model folder or URL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelheist.cli.common import (
    ApiKeyOption,
    JsonOption,
    StateOption,
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
SignificanceOption = Annotated[float, typer.Option(help="Significance level of the test.")]
BudgetOption = Annotated[
    int | None, typer.Option(help="Most queries to spend on the suspect (default: as needed).")
]
ReferenceOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--reference",
        help="The judge's independently trained reference model (repeat): a watermark set "
        "that also passes on one is refused (the screen against false claims); for a "
        "backdoor watermark, the chance agreement is estimated from them too.",
    ),
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
    significance: SignificanceOption = 0.01,
    budget: BudgetOption = None,
    reference: ReferenceOption = None,
    require_derived: Annotated[
        bool,
        typer.Option(
            help="Accept only a trigger set that its recorded seed regenerates (it cannot have "
            "been optimised against other models)."
        ),
    ] = False,
    json_path: JsonOption = None,
) -> None:
    """Query the suspect with the watermark's triggers; an exact binomial test decides. The
    trigger set must be the one the owner's model card recorded when it was embedded."""
    from modelheist.models.store import load_card
    from modelheist.ownership.screen import ScreenedScheme
    from modelheist.ownership.watermark import (
        BackdoorWatermarkScheme,
        TriggerSet,
        recorded_commitment,
        reference_chance,
    )

    oracle = _suspect_oracle(suspect, target, api_key)
    commitment = recorded_commitment(load_card(owner_model))
    trigger_set, oracles = TriggerSet.load(triggers), _reference_oracles(reference)
    plain = BackdoorWatermarkScheme(trigger_set, commitment, require_derived)
    scheme = plain
    if oracles:  # decide against the references' chance; screen with the plain test
        chance = reference_chance(trigger_set, oracles)
        estimated = BackdoorWatermarkScheme(trigger_set, commitment, require_derived, chance)
        scheme = ScreenedScheme(estimated, oracles, screening=plain)
    evidence = scheme.verify(oracle, significance, budget)
    _conclude(evidence, significance, json_path)


def _conclude(evidence, significance: float, json_path: Path | None) -> None:
    """Print the verdict, write it as JSON if asked, and exit 2 on "cannot verify"."""
    _say(evidence, significance)
    write_json(json_path, evidence.to_json())
    if evidence.decision == "cannot verify":
        raise typer.Exit(2)


def _say(evidence, significance: float, who: str = "") -> None:
    """One line per verdict: the decision and its evidence, or why there is none."""
    if evidence.decision == "cannot verify":
        console.print(f"{who}cannot verify: {evidence.reason}", highlight=False)
    else:
        console.print(
            f"{who}{evidence.decision}: {evidence.statistic_name} {evidence.statistic:.4f}, "
            f"p-value {evidence.p_value:.3g} at significance {significance:g} "
            f"({evidence.queries} queries)",
            highlight=False,
        )


def _reference_oracles(references: list[Path] | None) -> list:
    """The judge's reference models (folders), served in-process, each loaded once."""
    from modelheist.experiments.targets import local_oracle
    from modelheist.models.store import load_model

    return [local_oracle(load_model(path), "labels", client="judge") for path in references or []]


def _screened(scheme, oracles: list):
    """``scheme`` behind the judge's screen on the reference ``oracles``, if any."""
    if not oracles:
        return scheme
    from modelheist.ownership.screen import ScreenedScheme

    return ScreenedScheme(scheme, oracles)


def _suspect_oracle(
    suspect: Path | None, target: str | None, api_key: str | None, white_box: bool = False
):
    """The suspect as an oracle; a model folder's weights come with it when ``white_box``."""
    if (suspect is None) == (target is None):
        raise ModelheistError("name one suspect: --suspect DIR or --target URL --api-key KEY")
    from modelheist.experiments.targets import http_oracle, local_oracle
    from modelheist.models.store import load_model
    from modelheist.oracle import WhiteBoxOracle

    if target is not None:
        return http_oracle(target, api_key)
    model = load_model(suspect)  # type: ignore[arg-type]
    oracle = local_oracle(model, client="verifier")
    network = getattr(model, "module", None)
    return WhiteBoxOracle(oracle, network) if white_box and network is not None else oracle


@verify_app.command("radioactive")
@user_errors
def verify_radioactive(
    mark: Annotated[Path, typer.Option(help="The radioactive mark's folder (train --mark).")],
    owner_model: Annotated[
        Path | None,
        typer.Option(help="The owner's model folder: its card records the mark (checked)."),
    ] = None,
    suspect: SuspectOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    mode: Annotated[
        str,
        typer.Option(
            help="white-box (a suspect folder's weights), black-box (its probabilities on "
            "marked and original images) or auto (white-box when a folder is given)."
        ),
    ] = "auto",
    significance: SignificanceOption = 0.01,
    budget: BudgetOption = None,
    json_path: JsonOption = None,
) -> None:
    """Test whether the suspect was trained on your radioactive data: white-box, the cosines
    between its classifier rows and the carriers (exact null, Fisher-combined); black-box, its
    loss difference on published against withheld marked images (Mann-Whitney)."""
    from modelheist.models.store import load_card
    from modelheist.ownership.radioactive import RadioactiveMark, RadioactiveScheme, recorded_mark

    if mode not in ("auto", "white-box", "black-box"):
        raise ModelheistError(f"--mode must be auto, white-box or black-box, got {mode!r}")
    secret = RadioactiveMark.load(mark)
    commitment = recorded_mark(load_card(owner_model).protections) if owner_model else None
    oracle = _suspect_oracle(suspect, target, api_key, white_box=mode != "black-box")
    scheme = RadioactiveScheme(secret, mode, commitment=commitment)  # type: ignore[arg-type]
    evidence = scheme.verify(oracle, significance, budget)
    _conclude(evidence, significance, json_path)


@verify_app.command("dawn")
@user_errors
def verify_dawn(
    state: StateOption,
    client: Annotated[
        str | None,
        typer.Option(help="Test only this client's watermark set (default: every client's)."),
    ] = None,
    suspect: SuspectOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    significance: SignificanceOption = 0.01,
    budget: Annotated[
        int | None,
        typer.Option(help="Most queries to spend on the suspect per client (default: as needed)."),
    ] = None,
    reference: ReferenceOption = None,
    json_path: JsonOption = None,
) -> None:
    """Query the suspect with the inputs DAWN watermarked for each client of a served API
    (its --state folder) and test whether it gives them the wrong labels that client got; over
    several clients each is tested at significance / m (Bonferroni with Tarone's screen: sets
    too small to ever reach that level are not tested). Two clients who asked the same inputs
    share those watermarks, so a matching set names whose answers it matches, not a culprit."""
    from modelheist.api.watermark_sets import dawn_watermark_sets
    from modelheist.ownership.dawn import DawnScheme, verify_sets

    if not 0.0 < significance < 1.0:
        raise ModelheistError(f"--significance must lie in (0, 1), got {significance}")
    sets = dawn_watermark_sets(state, client)
    if not sets:
        raise ModelheistError(
            f"client {client!r} has no DAWN watermark in {state}"
            if client is not None
            else f"no client in {state} has a DAWN watermark yet (serve with --defense dawn:...)"
        )
    oracle = _suspect_oracle(suspect, target, api_key)
    schemes = [DawnScheme(s.inputs, s.labels, s.num_classes, s.client) for s in sets]
    oracles = _reference_oracles(reference)
    verdict = verify_sets(
        schemes, oracle, significance, budget, lambda scheme: _screened(scheme, oracles)
    )
    corrected = verdict.per_set_significance
    for name, evidence in verdict.clients.items():
        _say(evidence, corrected, f"client {name}: ")
    if verdict.not_tested:
        console.print(
            f"not tested (too few watermarks to reach {corrected:.3g}): "
            f"{', '.join(verdict.not_tested)}",
            highlight=False,
        )
    overall, matching = verdict.decision, verdict.matching
    console.print(
        f"{overall}"
        + (
            f": derived from the API's answers (watermark sets matched: {', '.join(matching)})"
            if matching
            else ""
        )
        + f" (significance {significance:g}; {len(verdict.clients)} client(s) tested at "
        f"{corrected:.3g} each)",
        highlight=False,
    )
    write_json(json_path, verdict.to_json())
    if overall == "cannot verify":
        raise typer.Exit(2)


@verify_app.command("dataset-inference")
@user_errors
def verify_dataset_inference(
    secret: Annotated[
        Path, typer.Option(help="The owner's dataset-inference folder (fingerprint ...).")
    ],
    suspect: SuspectOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    m: Annotated[
        int | None,
        typer.Option("--m", help="Revealed samples of each kind to test on (default: all)."),
    ] = None,
    significance: SignificanceOption = 0.01,
    budget: BudgetOption = None,
    json_path: JsonOption = None,
) -> None:
    """Measure the suspect's distances to its decision boundary from the owner's revealed
    private and public samples (Blind Walk through any API, labels suffice; MinGD on a model
    folder's weights); a one-sided Welch t-test of the regressor's scores decides."""
    from modelheist.ownership.dataset_inference import (
        DatasetInferenceScheme,
        DatasetInferenceSecret,
    )

    scheme = DatasetInferenceScheme(DatasetInferenceSecret.load(secret), m)
    oracle = _suspect_oracle(suspect, target, api_key, white_box=True)  # MinGD reads weights
    evidence = scheme.verify(oracle, significance, budget)
    _conclude(evidence, significance, json_path)


@verify_app.command("cae")
@user_errors
def verify_cae(
    fingerprint: Annotated[Path, typer.Option(help="The fingerprint folder (fingerprint cae).")],
    reference: Annotated[
        list[Path] | None,
        typer.Option(
            "--reference",
            help="An independently trained reference model not used in generation (repeat, at "
            "least 3): their retentions of the fingerprint are the test's null sample.",
        ),
    ] = None,
    suspect: SuspectOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    significance: SignificanceOption = 0.01,
    budget: BudgetOption = None,
    json_path: JsonOption = None,
) -> None:
    """Query the suspect with the fingerprint; its retention is tested against those of
    independent reference models not used in generation (--reference, repeat, at least 3)."""
    from modelheist.ownership.cae import CAEScheme, Fingerprint, reference_retentions

    secret = Fingerprint.load(fingerprint)
    null = tuple(reference_retentions(secret, _reference_oracles(reference)))
    evidence = CAEScheme(secret, null).verify(
        _suspect_oracle(suspect, target, api_key), significance, budget
    )
    _conclude(evidence, significance, json_path)
