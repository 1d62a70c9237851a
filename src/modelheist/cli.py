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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelheist.errors import ModelheistError

if TYPE_CHECKING:
    import numpy as np

    from modelheist.api.oracle import Oracle
    from modelheist.attacks.base import ExtractionAttack
    from modelheist.attacks.interruption import AttackInterrupted
    from modelheist.experiments.extraction import Evaluation
    from modelheist.models.classifier import Classifier

app = typer.Typer(
    help="modelheist: model stealing attacks, API defenses and ownership verification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
attack_app = typer.Typer(help="Extract a surrogate of a victim model.", no_args_is_help=True)
app.add_typer(attack_app, name="attack")
keys_app = typer.Typer(
    help="Manage the API keys of a served model's clients.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

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


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _measurement_table(rows: list[dict[str, Any]], title: str) -> Table:
    from modelheist.experiments.report import COLUMNS

    table = Table(title=title)
    for key, header in COLUMNS:
        table.add_column(header, justify="left" if key in ("transfer_set", "output") else "right")
    for row in rows:
        table.add_row(*(_cell(row[k]) for k, _ in COLUMNS))
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


def _http_oracle(target: str, api_key: str | None, output: str | None) -> Oracle:
    from modelheist.api.http_client import HttpOracle

    if not api_key:
        raise ModelheistError("--target needs --api-key KEY (or MODELHEIST_API_KEY)")
    if output is not None:
        raise ModelheistError("--output applies to a local --victim; the server sets its own")
    return HttpOracle(target, api_key)


@dataclass
class _Target:
    """Where an attack's queries go (a local victim or a URL) and what it is measured against."""

    oracle: Oracle | None  # None: serve the local victim in-process at --output
    victim: Classifier | None
    evaluation: Evaluation | None
    transfer_set: np.ndarray
    output: str


def _attack_target(
    victim_dir: Path | None,
    target: str | None,
    api_key: str | None,
    output: str | None,
    transfer_set: str,
    seed: int,
    service_options: dict[str, Any] | None = None,
) -> _Target:
    """Resolve --victim / --target / --api-key / --output / --transfer-set for an attack.

    With --target the queries go over HTTP and the server decides the output granularity; a
    --victim given as well is used only to measure the surrogate (the lab setting). With
    --target alone the transfer set is the attacker's pool of the default split (seed 0).
    """
    from modelheist.data import attacker_transfer_set, load_dataset
    from modelheist.data.transforms import fit_to_shape
    from modelheist.defenses import parse_output
    from modelheist.experiments.extraction import Evaluation
    from modelheist.models import load_model

    if victim_dir is None and target is None:
        raise ModelheistError("name the victim: --victim DIR or --target URL --api-key KEY")
    oracle: Oracle | None = None
    if target is not None:
        oracle = _http_oracle(target, api_key, output)
        output = oracle.output_kind  # connects now: an unreachable URL fails before any work
    else:
        output = output or "probs"
        parse_output(output)  # a bad spec fails before any work
    victim = evaluation = None
    if victim_dir is not None:
        victim = load_model(victim_dir)
        split = victim.card.training.get("split", {"seed": 0, "pool_fraction": 0.5})
        data = load_dataset(
            victim.card.dataset, seed=split["seed"], pool_fraction=split["pool_fraction"]
        )
        pool = attacker_transfer_set(transfer_set, data)
        evaluation = Evaluation.of(victim, data.test, seed=seed)
    else:
        assert oracle is not None
        pool = fit_to_shape(
            attacker_transfer_set(transfer_set, load_dataset(transfer_set)), oracle.input_shape
        )
    if oracle is None and service_options:  # serve the local victim as the attack needs
        from modelheist.api.oracle import LocalOracle
        from modelheist.api.service import PredictionService

        assert victim is not None
        service = PredictionService(victim, parse_output(output), **service_options)
        oracle = LocalOracle.for_new_client(service, None)
    return _Target(oracle, victim, evaluation, pool, output)


VictimOption = Annotated[
    Path | None, typer.Option("--victim", help="Victim model folder (queried in-process).")
]
TargetOption = Annotated[
    str | None, typer.Option("--target", help="URL of a served model to attack over HTTP.")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="MODELHEIST_API_KEY", help="API key for --target."),
]


TransferOption = Annotated[
    str | None,
    typer.Option(help="Dataset the attacker holds (default: the victim's own task's data)."),
]
BudgetOption = Annotated[int, typer.Option(help="Maximum number of queries (hard limit).")]
OutOption = Annotated[Path | None, typer.Option(help="New folder for the surrogate model.")]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON.")]
SeedOption = Annotated[int, typer.Option(help="Seed of every random choice.")]
MembersOption = Annotated[
    int, typer.Option(help="Final surrogate: an ensemble of this many networks.")
]
OutputOption = Annotated[
    str | None, typer.Option(help="Output of the local victim: probs, labels, round:N, ...")
]


@attack_app.command("knockoff")
@user_errors
def attack_knockoff(
    budget: BudgetOption,
    victim: VictimOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    output: OutputOption = None,
    transfer_set: TransferOption = None,
    out: OutOption = None,
    json_path: JsonOption = None,
    seed: SeedOption = 0,
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
    members: MembersOption = 1,
    strategy: Annotated[
        str, typer.Option(help="Sampling: random, or adaptive (gradient bandit, §4.1.2).")
    ] = "random",
    transfer_labels: Annotated[
        Path | None,
        typer.Option(
            help="Adaptive: .npy of one integer label per transfer-set input (the transfer "
            "set's own annotation), the bandit's arms; default: k-means clusters."
        ),
    ] = None,
    clusters: Annotated[int, typer.Option(help="Adaptive: k-means clusters as arms.")] = 30,
    rewards: Annotated[
        str, typer.Option(help="Adaptive: comma-separated rewards among cert, div, loss.")
    ] = "cert,div,loss",
) -> None:
    """Knockoff Nets (random or adaptive strategy) against a victim folder or a served URL."""
    from modelheist.attacks import KnockoffNets

    if transfer_labels is not None and strategy != "adaptive":
        raise ModelheistError("--transfer-labels is used by --strategy adaptive only")
    attack = KnockoffNets(
        strategy=strategy,  # type: ignore[arg-type]  # checked by KnockoffNets
        epochs=_positive("--epochs", epochs),
        temperature=temperature,
        temperature_weight=temperature_weight,
        unlabeled=unlabeled,
        rounds=rounds,
        members=_positive("--members", members),
        clusters=_positive("--clusters", clusters),
        rewards=tuple(r.strip() for r in rewards.split(",")),  # type: ignore[arg-type]
    )
    labels = _read_labels(transfer_labels) if transfer_labels is not None else None
    _run_attack(
        attack, victim, target, api_key, output, transfer_set, budget, seed, out, json_path,
        f"Knockoff Nets ({strategy})", transfer_labels=labels,
    )  # fmt: skip


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


def _run_attack(
    attack: ExtractionAttack,
    victim: Path | None,
    target: str | None,
    api_key: str | None,
    output: str | None,
    transfer_set: str | None,
    budget: int,
    seed: int,
    out: Path | None,
    json_path: Path | None,
    title: str,
    service_options: dict[str, Any] | None = None,
    transfer_labels: np.ndarray | None = None,
) -> None:
    """Run ``attack`` against --victim or --target, print and save what it measured."""
    from modelheist.attacks.interruption import AttackInterrupted
    from modelheist.experiments.extraction import measure_extraction
    from modelheist.models import save_model
    from modelheist.models.store import load_card

    if victim is None and target is None:
        raise ModelheistError("name the victim: --victim DIR or --target URL --api-key KEY")
    _fresh_folder(out, "output folder")
    _positive("--budget", budget)
    if transfer_set is None:  # the attacker holds data of the victim's task
        if victim is None:
            raise ModelheistError("name the attacker's data: --transfer-set DATASET")
        transfer_set = load_card(victim).dataset
    where = _attack_target(victim, target, api_key, output, transfer_set, seed, service_options)
    try:
        with progress_bar() as progress:
            result, m = measure_extraction(
                where.victim,
                attack,
                where.transfer_set,
                where.evaluation,
                budget,
                where.output,
                transfer_set,
                seed,
                progress=progress,
                oracle=where.oracle,
                transfer_labels=transfer_labels,
            )
    except AttackInterrupted as stop:
        _keep_partial(stop, out, json_path, seed)
    if out is not None:
        save_model(result.surrogate, out)
    row = asdict(m)
    console.print(_measurement_table([row], f"{title} against {target or victim}"))
    _write_json(
        json_path, {**row, "params": result.params, "seed": seed, "details": result.details}
    )


def _keep_partial(
    stop: AttackInterrupted, out: Path | None, json_path: Path | None, seed: int
) -> NoReturn:
    """Save an interrupted attack's query log at once, then train and save its partial
    surrogate; say where, and exit with status 3."""
    from modelheist.models import save_model

    folder = out or _unused_folder(Path(f"{stop.attack}-partial"))
    folder.mkdir(parents=True)
    stop.log.save(folder / "query_log.npz")  # first: training may be cut short too
    document = {
        "attack": stop.attack,
        "interrupted": str(stop.reason),
        "queries_used": len(stop.log),
        "folder": str(folder),
        "partial_surrogate": False,
        "params": stop.params,
        "seed": seed,
    }
    _write_json(folder / "interrupted.json", document)
    err_console.print(
        f"[red]error:[/red] {stop}; its query log was saved to {folder}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        with progress_bar() as progress:
            partial = stop.partial_surrogate(progress)
    except (ModelheistError, MemoryError, KeyboardInterrupt) as exc:
        partial = None
        err_console.print(f"no partial surrogate: {exc or 'interrupted'}", highlight=False)
    if partial is not None:
        save_model(partial, folder, overwrite=True)
        document["partial_surrogate"] = True
        _write_json(folder / "interrupted.json", document)
        err_console.print(f"a partial surrogate trained on those answers is in {folder}")
    _write_json(json_path, document)
    raise typer.Exit(3)


def _unused_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


@attack_app.command("tramer-lr")
@user_errors
def attack_tramer_lr(
    budget: BudgetOption,
    victim: VictimOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    output: OutputOption = None,
    transfer_set: TransferOption = None,
    out: OutOption = None,
    json_path: JsonOption = None,
    seed: SeedOption = 0,
    step: Annotated[
        float, typer.Option(help="Coordinate step, fraction of a feature's spread.")
    ] = 0.1,
) -> None:
    """Tramèr '16 equation solving: logistic/softmax regression from d + 1 probability answers."""
    from modelheist.attacks import LogisticEquationSolving

    _run_attack(
        LogisticEquationSolving(step=step), victim, target, api_key, output, transfer_set,
        budget, seed, out, json_path, "Equation solving (LR)",
    )  # fmt: skip


@attack_app.command("tramer-mlp")
@user_errors
def attack_tramer_mlp(
    budget: BudgetOption,
    victim: VictimOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    output: OutputOption = None,
    transfer_set: TransferOption = None,
    out: OutOption = None,
    json_path: JsonOption = None,
    seed: SeedOption = 0,
    alpha: Annotated[float, typer.Option(help="Queries per unknown parameter.")] = 1.0,
    hidden: Annotated[int, typer.Option(help="Hidden units of the victim (known).")] = 20,
) -> None:
    """Tramèr '16: a one-hidden-layer network from alpha x (unknowns) probability answers."""
    from modelheist.attacks import MlpEquationSolving

    _run_attack(
        MlpEquationSolving(hidden=hidden, alpha=alpha), victim, target, api_key, output,
        transfer_set, budget, seed, out, json_path, "Equation solving (MLP)",
    )  # fmt: skip


@attack_app.command("lowd-meek")
@user_errors
def attack_lowd_meek(
    budget: BudgetOption,
    victim: VictimOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    output: OutputOption = None,
    transfer_set: TransferOption = None,
    out: OutOption = None,
    json_path: JsonOption = None,
    seed: SeedOption = 0,
    steps: Annotated[int, typer.Option(help="Bisection steps per line search.")] = 24,
) -> None:
    """Lowd-Meek line search: a binary linear classifier from its labels."""
    from modelheist.attacks import LowdMeek

    _run_attack(
        LowdMeek(steps=_positive("--steps", steps)), victim, target, api_key, output,
        transfer_set, budget, seed, out, json_path, "Lowd-Meek",
    )  # fmt: skip


@attack_app.command("retrain")
@user_errors
def attack_retrain(
    budget: BudgetOption,
    victim: VictimOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    output: OutputOption = None,
    transfer_set: TransferOption = None,
    out: OutOption = None,
    json_path: JsonOption = None,
    seed: SeedOption = 0,
    rounds: Annotated[int, typer.Option(help="Adaptive rounds after the first d + 1 queries.")] = 9,
) -> None:
    """Tramèr '16 adaptive retraining: a binary logistic regression from its labels."""
    from modelheist.attacks import AdaptiveRetraining

    _run_attack(
        AdaptiveRetraining(rounds=_positive("--rounds", rounds)), victim, target, api_key,
        output, transfer_set, budget, seed, out, json_path, "Adaptive retraining",
    )  # fmt: skip


@attack_app.command("jbda")
@user_errors
def attack_jbda(
    budget: BudgetOption,
    victim: VictimOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    output: OutputOption = None,
    transfer_set: TransferOption = None,
    out: OutOption = None,
    json_path: JsonOption = None,
    seed: SeedOption = 0,
    seeds_per_class: Annotated[int, typer.Option(help="Natural seeds per class.")] = 10,
    step: Annotated[float, typer.Option(help="Jacobian step lambda.")] = 0.1,
) -> None:
    """Papernot et al. '17 Jacobian-based dataset augmentation from a few seeds."""
    from modelheist.attacks import JacobianAugmentation

    attack = JacobianAugmentation(
        seeds_per_class=_positive("--seeds-per-class", seeds_per_class), step=step
    )
    _run_attack(
        attack, victim, target, api_key, output, transfer_set, budget, seed, out, json_path, "JBDA"
    )  # fmt: skip


def _register_ifgsm(name: str, title: str, members_default: int, doc: str) -> None:
    """``attack t-rnd`` and ``attack n-ifgsm``: PRADA's I-FGSM crafters share every option."""

    def run_ifgsm(
        budget: BudgetOption,
        victim: VictimOption = None,
        target: TargetOption = None,
        api_key: ApiKeyOption = None,
        output: OutputOption = None,
        transfer_set: TransferOption = None,
        out: OutOption = None,
        json_path: JsonOption = None,
        seed: SeedOption = 0,
        seeds_per_class: SeedsPerClassOption = 10,
        epsilon: EpsilonOption = 0.25,
        steps: StepsOption = 4,
        members: MembersOption = members_default,
    ) -> None:
        from modelheist.attacks import ATTACKS

        attack = ATTACKS[name](
            seeds_per_class=_positive("--seeds-per-class", seeds_per_class),
            epsilon=epsilon,
            steps=_positive("--steps", steps),
            members=_positive("--members", members),
        )
        _run_attack(
            attack, victim, target, api_key, output, transfer_set, budget, seed, out, json_path,
            title,
        )  # fmt: skip

    run_ifgsm.__doc__ = doc
    attack_app.command(name)(user_errors(run_ifgsm))


SeedsPerClassOption = Annotated[int, typer.Option(help="Natural seeds per class.")]
EpsilonOption = Annotated[float, typer.Option(help="L-infinity size of each synthetic step.")]
StepsOption = Annotated[int, typer.Option(help="I-FGSM iterations (1: a single FGSM step).")]
_register_ifgsm(
    "t-rnd",
    "T-RND",
    3,
    "PRADA's T-RND: synthetic queries by targeted I-FGSM towards random classes.",
)
_register_ifgsm(
    "n-ifgsm",
    "N I-FGSM",
    1,
    "PRADA's N I-FGSM: synthetic queries by I-FGSM away from the API's label.",
)


@attack_app.command("tree-path")
@user_errors
def attack_tree_path(
    budget: BudgetOption,
    victim: VictimOption = None,
    target: TargetOption = None,
    api_key: ApiKeyOption = None,
    transfer_set: TransferOption = None,
    out: OutOption = None,
    json_path: JsonOption = None,
    seed: SeedOption = 0,
    incomplete: Annotated[
        bool | None,
        typer.Option(
            "--incomplete/--complete",
            help="Use incomplete queries (missing features); default: if the API accepts them.",
        ),
    ] = None,
    leaves: Annotated[
        bool, typer.Option(help="Local --victim: answer with leaf identities (as BigML did).")
    ] = True,
    incomplete_queries: Annotated[
        bool, typer.Option(help="Local --victim: accept incomplete queries (as BigML did).")
    ] = False,
) -> None:
    """Tramèr '16 path-finding: a decision tree from the leaf identities its API returns."""
    from modelheist.attacks import TreePathFinding

    if target is not None and (not leaves or incomplete_queries):
        raise ModelheistError(
            "--leaves/--incomplete-queries apply to a local --victim; the server sets its own"
        )
    service_options = {"leaves": leaves, "incomplete_queries": incomplete_queries}
    _run_attack(
        TreePathFinding(incomplete=incomplete), victim, target, api_key,
        None if target else "labels", transfer_set,
        budget, seed, out, json_path, "Tree path-finding", service_options if target is None else None,
    )  # fmt: skip


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


StateOption = Annotated[
    Path,
    typer.Option("--state", help="State folder: API keys, client state and the audit log."),
]
DEFAULT_STATE = Path("modelheist-state")


def _rate(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip().removesuffix("/s")
    try:
        rate = float(text)
    except ValueError:
        raise ModelheistError(
            f"--rate must be requests per second such as 5 or 5/s, got {value!r}"
        ) from None
    if not rate > 0 or rate == float("inf"):
        raise ModelheistError(f"--rate must be a positive number, got {value!r}")
    return rate


@app.command()
@user_errors
def serve(
    model_dir: Annotated[Path, typer.Argument(help="Model folder to serve.", show_default=False)],
    name: Annotated[
        str | None, typer.Option(help="Name in the URL (default: the folder's name).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8000,
    state: StateOption = DEFAULT_STATE,
    output: Annotated[
        str, typer.Option(help="Output granularity: probs, labels, top-k:K, round:N.")
    ] = "probs",
    defense: Annotated[
        list[str] | None,
        typer.Option(
            "--defense",
            help="Defense stage, repeatable, applied in order before --output: round:N, "
            "top-k:K, labels, reverse-sigmoid:beta=B,gamma=G, noise:sigma=S.",
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most inputs in one request.")] = 1024,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, in MiB.")] = 32.0,
    durable: Annotated[
        bool, typer.Option(help="fsync every commit (survives power loss, not only crashes).")
    ] = False,
    leaves: Annotated[
        bool, typer.Option(help="Tree models: answer with the leaf reached, as BigML did.")
    ] = False,
    incomplete_queries: Annotated[
        bool, typer.Option(help="Tree models: accept missing features (null / NaN), as BigML did.")
    ] = False,
) -> None:
    """Serve a model over HTTP with API keys, budgets, an audit log and defenses."""
    import re

    from modelheist.api.http_server import bind_socket, create_app, uvicorn_server
    from modelheist.api.ledger import Ledger
    from modelheist.api.service import PredictionService
    from modelheist.defenses import parse_defense, parse_output
    from modelheist.models import load_model

    name = name or model_dir.name
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        raise ModelheistError(f"--name must be 1-64 letters, digits, '.', '_' or '-', got {name!r}")
    _positive("--max-batch", max_batch)
    if not 0 < max_body_mb < 1024**2:
        raise ModelheistError(f"--max-body-mb must be positive and finite, got {max_body_mb}")
    if not 0 <= port <= 65535:
        raise ModelheistError(f"--port must be between 0 and 65535, got {port}")
    stages = [parse_defense(spec) for spec in defense or []] + parse_output(output)
    model = load_model(model_dir)
    ledger = Ledger.open(state, durable=durable)
    service = PredictionService(
        model,
        stages,
        max_batch=max_batch,
        ledger=ledger,
        name=name,
        leaves=leaves,
        incomplete_queries=incomplete_queries,
    )
    app_ = create_app(service, max_body_bytes=int(max_body_mb * 1024 * 1024))
    sock = bind_socket(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    pipeline = service.pipeline
    err_console.print(
        f"serving {name} ({model.card.architecture} on {model.card.dataset}; pipeline: "
        f"{pipeline}) at http://{shown_host}:{sock.getsockname()[1]}; state in {state}",
        highlight=False,
        soft_wrap=True,
    )
    if not ledger.clients():
        err_console.print(
            f"no clients yet: add one with `modelheist keys add NAME --state {state}`",
            highlight=False,
        )
    try:
        uvicorn_server(app_).run(sockets=[sock])
    finally:
        sock.close()
        ledger.close()


@keys_app.command("add")
@user_errors
def keys_add(
    name: Annotated[str, typer.Argument(help="Client name.", show_default=False)],
    state: StateOption = DEFAULT_STATE,
    budget: Annotated[
        int | None, typer.Option(help="Query budget (inputs answered); default unlimited.")
    ] = None,
    rate: Annotated[
        str | None, typer.Option(help="Rate limit in requests per second, e.g. 5 or 5/s.")
    ] = None,
    admin: Annotated[bool, typer.Option(help="May read /v1/admin/clients.")] = False,
) -> None:
    """Create a client and print its API key (shown once; only its hash is stored)."""
    from modelheist.api.ledger import Ledger

    ledger = Ledger.open(state)
    try:
        key = ledger.add_client(name, budget, _rate(rate), admin)
    finally:
        ledger.close()
    err_console.print(
        f"client {name!r} added to {state}"
        + (f", budget {budget}" if budget else "")
        + (f", rate {rate}" if rate else "")
        + (", admin" if admin else "")
        + "; its key (shown once):",
        highlight=False,
    )
    console.print(key, highlight=False, soft_wrap=True)


@keys_app.command("list")
@user_errors
def keys_list(state: StateOption = DEFAULT_STATE) -> None:
    """List the clients of a state folder and their usage."""
    from modelheist.api.ledger import Ledger

    if not state.is_dir():
        raise ModelheistError(f"no state folder {state}")
    ledger = Ledger.open(state)
    try:
        clients = ledger.clients()
    finally:
        ledger.close()
    table = Table(title=f"clients in {state}")
    for column in ("name", "budget", "used", "rate/s", "admin", "revoked"):
        table.add_column(column)
    for c in clients:
        table.add_row(
            c.name,
            "-" if c.budget is None else str(c.budget),
            str(c.queries_used),
            "-" if c.rate is None else f"{c.rate:g}",
            "yes" if c.admin else "",
            "yes" if c.revoked else "",
        )
    console.print(table)


@keys_app.command("revoke")
@user_errors
def keys_revoke(
    name: Annotated[str, typer.Argument(help="Client name.", show_default=False)],
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Revoke a client's key (a running server refuses it from its next request)."""
    from modelheist.api.ledger import Ledger

    if not state.is_dir():
        raise ModelheistError(f"no state folder {state}")
    ledger = Ledger.open(state)
    try:
        ledger.revoke(name)
    finally:
        ledger.close()
    err_console.print(f"client {name!r} revoked", highlight=False)


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
    from modelheist.api.oracle import LocalOracle
    from modelheist.api.service import PredictionService
    from modelheist.data.files import read_inputs
    from modelheist.defenses import parse_output
    from modelheist.models import load_model

    if (victim is None) == (target is None):
        raise ModelheistError("name one model: --victim DIR or --target URL --api-key KEY")
    oracle: Oracle
    if target is not None:
        oracle = _http_oracle(target, api_key, output)
    else:
        assert victim is not None
        service = PredictionService(load_model(victim), parse_output(output or "probs"))
        oracle = LocalOracle.for_new_client(service, None, "cli")
    x, names = read_inputs(inputs, oracle.input_shape)
    answer = oracle.query(x)
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
    _write_json(json_path, {"answers": rows, "queries_used": oracle.queries_used})


if __name__ == "__main__":
    app()
