"""The malicious client's commands: ``attack NAME`` and ``query``.

``attack`` has one subcommand per registered extraction attack, generated from the attack's own
declared hyper-parameters (its dataclass fields, their types and defaults, and its
``param_help``), with the options every attack shares. The attack modules (and PyTorch) are
imported only when an ``attack`` command is used, so the other commands start fast.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import click
import typer
from rich.table import Table

from modelheist.cli.common import (
    ApiKeyOption,
    JsonOption,
    TargetOption,
    VictimOption,
    app,
    console,
    err_console,
    fresh_folder,
    measurement_table,
    positive,
    progress_bar,
    user_errors,
    write_json,
)
from modelheist.errors import ModelheistError

if TYPE_CHECKING:
    import numpy as np

    from modelheist.attacks.base import ExtractionAttack
    from modelheist.attacks.interruption import AttackInterrupted


def _attack_command(cls: type[ExtractionAttack]) -> click.Command:
    """The ``attack NAME`` command of attack ``cls``: the shared options, then one option per
    hyper-parameter of the attack."""
    hints = typing.get_type_hints(cls)
    shared = [
        _option("budget", int, inspect.Parameter.empty, "Maximum number of queries (hard limit)."),
        _option("victim", Path | None, None, "", VictimOption),
        _option("target", str | None, None, "", TargetOption),
        _option("api_key", str | None, None, "", ApiKeyOption),
        _option(
            "output",
            str | None,
            None,
            f"Output of the local victim: probs, labels, top-k:K, round:N, ... "
            f"(default: {cls.local_output}).",
        ),
        _option(
            "transfer_set",
            str | None,
            None,
            "Dataset the attacker holds (default: the victim's own task's data; for "
            "`attack translate`, an image-to-image task such as fashion-mnist-sr).",
        ),
        _option("out", Path | None, None, "New folder for the surrogate model."),
        _option("json_path", Path | None, None, "", JsonOption),
        _option("seed", int, 0, "Seed of every random choice."),
    ]
    own = []
    for param in dataclasses.fields(cls):
        kind, default = _cli_type(hints[param.name]), param.default
        if default is dataclasses.MISSING and param.default_factory is not dataclasses.MISSING:
            default = param.default_factory()
        if default is dataclasses.MISSING:  # a required hyper-parameter: a required option
            default = inspect.Parameter.empty
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        flags = cls.flag_names.get(param.name)
        own.append(
            _option(param.name, kind, default, cls.param_help.get(param.name, ""), flags=flags)
        )
    extra = []
    if cls.transfer_labels_help is not None:
        extra.append(_option("transfer_labels", Path | None, None, cls.transfer_labels_help))
    for option, default in cls.local_service.items():
        extra.append(_option(option, bool, default, f"Local --victim: {option.replace('_', ' ')}."))
    parameters = shared + own + extra
    field_names = {param.name for param in dataclasses.fields(cls)}

    def command(**options: Any) -> None:
        attack_options = {name: options.pop(name) for name in field_names}
        for name, value in attack_options.items():
            if isinstance(value, str) and typing.get_origin(hints[name]) is tuple:
                attack_options[name] = _tuple(value, hints[name], name)
        service_options = {name: options.pop(name) for name in cls.local_service}
        labels_path = options.pop("transfer_labels", None)
        attack = cls(**attack_options)
        if labels_path is not None:
            attack.check_transfer_labels()
        if options["target"] is not None and service_options != cls.local_service:
            raise ModelheistError(
                f"--{'/--'.join(o.replace('_', '-') for o in cls.local_service)} apply to a "
                "local --victim; the server sets its own"
            )
        labels = _read_labels(labels_path) if labels_path is not None else None
        run_attack(attack, transfer_labels=labels, service_options=service_options, **options)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    first_paragraph = (cls.__doc__ or cls.name).strip().split("\n\n")[0]
    command.__doc__ = " ".join(first_paragraph.replace("``", "").split())
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(cls.name)(user_errors(command))
    return typer.main.get_command(single)


def _cli_type(hint: Any) -> Any:
    """The type Typer parses an attack parameter as (choices and tuples as text)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal or origin is tuple:
        return str
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _cli_type(inner[0]) | None
    return hint


def _tuple(text: str, hint: Any, name: str) -> tuple[Any, ...]:
    item = typing.get_args(hint)[0]
    parse = float if item is float else int if item is int else str
    try:
        return tuple(parse(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise ModelheistError(
            f"--{name.replace('_', '-')} takes comma-separated values, got {text!r}"
        ) from None


def _option(
    name: str,
    kind: Any,
    default: Any,
    help_text: str,
    annotated: Any = None,
    flags: str | None = None,
) -> inspect.Parameter:
    if annotated is None:
        declared = [flags] if flags else []
        annotated = Annotated[kind, typer.Option(*declared, help=help_text)]
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotated
    )


class _AttackGroup(typer.core.TyperGroup):
    """The ``attack`` group: its commands are built from the attack registry on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from modelheist.attacks.registry import ATTACKS

        return [*ATTACKS, *_ownership_attacks().list_commands(ctx)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from modelheist.attacks.registry import ATTACKS

        cls = ATTACKS.get(cmd_name)
        if cls is None:  # the adversaries of ownership resolution (remove, false-claim)
            return _ownership_attacks().get_command(ctx, cmd_name)
        return _attack_command(cls)


def _ownership_attacks() -> Any:
    """The group of ``remove`` and ``false-claim`` (a Typer group)."""
    from modelheist.cli.ownership_attacks import ownership_attacks

    return typer.main.get_command(ownership_attacks)


attack_app = typer.Typer(
    cls=_AttackGroup,
    help="Extract a surrogate of a victim model.",
    no_args_is_help=True,
)
app.add_typer(attack_app, name="attack")


def _read_labels(path: Path) -> np.ndarray:
    """A .npy file of integer labels (never unpickled)."""
    import numpy as np

    try:
        labels = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ModelheistError(f"{path} is not a .npy array of integers: {exc}") from None
    if not isinstance(labels, np.ndarray):  # an .npz archive
        labels.close()
        raise ModelheistError(f"{path} is an .npz archive; give one .npy array of integers")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ModelheistError(
            f"{path} must hold a 1-D integer array, not {labels.dtype} of shape {labels.shape}"
        )
    return labels.astype(np.int64)


def run_attack(
    attack: ExtractionAttack,
    budget: int,
    victim: Path | None,
    target: str | None,
    api_key: str | None,
    output: str | None,
    transfer_set: str | None,
    out: Path | None,
    json_path: Path | None,
    seed: int,
    transfer_labels: np.ndarray | None = None,
    service_options: dict[str, Any] | None = None,
) -> None:
    """Run ``attack`` against --victim or --target, print and save what it measured."""
    from dataclasses import asdict

    from modelheist.attacks.interruption import AttackInterrupted
    from modelheist.experiments.extraction import measure_extraction
    from modelheist.experiments.targets import resolve_attack_target
    from modelheist.models.store import save_model

    fresh_folder(out, "output folder")
    positive("--budget", budget)
    if attack.extracts == "translation":
        if output is not None:
            raise ModelheistError("--output applies to classifiers; an image model answers images")
        _run_translation(
            attack, budget, victim, target, api_key, transfer_set, out, json_path, seed
        )
        return
    source = attack.transfer_source()
    if source is not None:
        if transfer_set not in (None, source):
            raise ModelheistError(
                f"the attack's options name {source} as its queries' source and --transfer-set "
                f"{transfer_set}: give one"
            )
        transfer_set = source
    where = resolve_attack_target(
        victim,
        target,
        api_key,
        output,
        transfer_set,
        seed,
        local_output=type(attack).local_output,
        service_options=service_options,
        text=attack.extracts == "text",
        needs_data=attack.needs_transfer_set(),
    )
    try:
        with progress_bar() as progress:
            result, measured = measure_extraction(
                where.victim,
                attack,
                where.transfer_set,
                where.evaluation,
                budget,
                where.output,
                where.transfer_name,
                seed,
                progress=progress,
                oracle=where.oracle,
                transfer_labels=transfer_labels,
            )
    except AttackInterrupted as stop:
        _keep_partial(stop, out, json_path, seed)
    if out is not None:
        save_model(result.surrogate, out)
        if result.log is not None and len(result.log):
            from modelheist.experiments.partial import LOG

            result.log.save(out / LOG)  # what was asked, for `modelheist detect-eval`
    row = asdict(measured)
    console.print(measurement_table([row], f"{attack.display_name()} against {target or victim}"))
    write_json(json_path, {**row, "params": result.params, "seed": seed, "details": result.details})


def _run_translation(
    attack: ExtractionAttack,
    budget: int,
    victim: Path | None,
    target: str | None,
    api_key: str | None,
    transfer_set: str | None,
    out: Path | None,
    json_path: Path | None,
    seed: int,
) -> None:
    """``attack translate``: run it, print and save PSNR and SSIM (see
    :mod:`modelheist.experiments.translation`)."""
    from dataclasses import asdict

    from modelheist.attacks.interruption import AttackInterrupted
    from modelheist.experiments.translation import measure_translation, resolve_translation_target
    from modelheist.models.store import save_model

    where = resolve_translation_target(victim, target, api_key, transfer_set)
    try:
        with progress_bar() as progress:
            result, measured = measure_translation(attack, where, budget, seed, progress)
    except AttackInterrupted as stop:
        _keep_partial(stop, out, json_path, seed)
    if out is not None:
        save_model(result.surrogate, out)
        if result.log is not None and len(result.log):
            from modelheist.experiments.partial import LOG

            result.log.save(out / LOG)  # every image sent and every image answered
    row = asdict(measured)
    table = Table(title=f"{attack.display_name()} against {target or victim}")
    for column in ("queries", "", "PSNR (dB)", "SSIM"):
        table.add_column(column, justify="right")
    table.add_row(
        str(measured.queries_used),
        "victim vs truth",
        _figure(measured.victim_psnr),
        _figure(measured.victim_ssim),
    )
    table.add_row(
        "", "surrogate vs truth", _figure(measured.surrogate_psnr), _figure(measured.surrogate_ssim)
    )
    table.add_row(
        "",
        "surrogate vs victim",
        _figure(measured.psnr_to_victim),
        _figure(measured.ssim_to_victim),
    )
    console.print(table)
    write_json(json_path, {**row, "params": result.params, "seed": seed, "details": result.details})


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _keep_partial(
    stop: AttackInterrupted, out: Path | None, json_path: Path | None, seed: int
) -> NoReturn:
    """Save an interrupted attack's query log at once, then train and save its partial
    surrogate; say where, and exit with status 3."""
    from modelheist.experiments.partial import add_partial_surrogate, save_interrupted

    document = save_interrupted(stop, out, seed)
    folder = document["folder"]
    err_console.print(
        f"[red]error:[/red] {stop}; its query log was saved to {folder}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        with progress_bar() as progress:
            if add_partial_surrogate(stop, document, progress):
                err_console.print(f"a partial surrogate trained on those answers is in {folder}")
    except (ModelheistError, MemoryError, KeyboardInterrupt) as exc:
        err_console.print(f"no partial surrogate: {exc or 'interrupted'}", highlight=False)
    write_json(json_path, document)
    raise typer.Exit(3)


@app.command()
@user_errors
def query(
    inputs: Annotated[
        Path,
        typer.Argument(help="A .npy file of inputs or a folder of images.", show_default=False),
    ],
    victim: VictimOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    output: Annotated[
        str | None, typer.Option(help="Output of the local victim: probs, labels, top-k:K, ...")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the answers as JSON.")
    ] = None,
) -> None:
    """Send inputs to a model (a folder or a URL) and print its answers."""
    from modelheist.data.files import read_inputs
    from modelheist.experiments.targets import http_oracle, local_oracle
    from modelheist.models.store import load_model
    from modelheist.oracle import Oracle

    if (victim is None) == (target is None):
        raise ModelheistError("name one model: --victim DIR or --target URL --api-key KEY")
    oracle: Oracle
    if target is not None:
        oracle = http_oracle(target, api_key, output)
    else:
        assert victim is not None
        oracle = local_oracle(load_model(victim), output or "probs", client="cli")
    x, names = read_inputs(inputs, oracle.input_shape)
    answer = oracle.query(x)
    if answer.images is not None:  # an image-to-image model
        _show_images(answer.images, names, target or str(victim), json_path, oracle)
        return
    classes = oracle.classes
    table = Table(title=f"{len(x)} answers from {target or victim}")
    for column in ("input", "label", "class", "answer"):
        table.add_column(column)
    rows = []
    for i, label in enumerate(answer.labels.tolist()):
        row: dict[str, Any] = {"input": names[i], "label": label, "class": classes[label]}
        if answer.probabilities is not None:
            row["probabilities"] = answer.probabilities[i].tolist()
            shown = f"p={answer.probabilities[i][label]:.4f}"
        elif answer.top_k is not None and answer.top_k_probabilities is not None:
            row["top_k"] = [
                {"label": int(c), "probability": float(p)}
                for c, p in zip(answer.top_k[i], answer.top_k_probabilities[i], strict=True)
            ]
            shown = ", ".join(f"{classes[e['label']]}:{e['probability']:.3f}" for e in row["top_k"])
        else:
            shown = "label only"
        rows.append(row)
        table.add_row(names[i], str(label), classes[label], shown)
    console.print(table)
    proof_seconds = float(getattr(oracle, "proof_seconds", 0.0))
    if proof_seconds:
        console.print(f"proof of work asked by the server: {proof_seconds:.2f} s solving it")
    write_json(
        json_path,
        {"answers": rows, "queries_used": oracle.queries_used, "proof_seconds": proof_seconds},
    )


def _show_images(
    images: np.ndarray, names: list[str], where: str, json_path: Path | None, oracle: Any
) -> None:
    """``query``'s report of an image-to-image model's answers: each output's shape and range
    on screen, the images themselves in the JSON."""
    table = Table(title=f"{len(images)} images from {where}")
    for column in ("input", "output shape", "min", "mean", "max"):
        table.add_column(column)
    for name, image in zip(names, images, strict=True):
        table.add_row(
            name,
            "x".join(map(str, image.shape)),
            f"{image.min():.3f}",
            f"{image.mean():.3f}",
            f"{image.max():.3f}",
        )
    console.print(table)
    write_json(
        json_path,
        {
            "outputs": [
                {"input": n, "image": i.tolist()} for n, i in zip(names, images, strict=True)
            ],
            "queries_used": oracle.queries_used,
        },
    )
