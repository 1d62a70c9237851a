"""The conflicts table's adversarially trained cells at a learning rate of their own, chosen
on the validation split (issue 13).

The table's rate (SGD at 0.1, benchmarks/conflicts.py) was chosen on validation for clean,
DP-SGD and watermarked models, without an adversarially trained one in view; PGD training
from scratch at 0.1 collapsed to chance on some seeds (docs/benchmarks.md). Per rate in RATES
and seed: the adversarial-training cell's model (``adv``: the table's PGD, 0.125 / 0.005 / 25
steps, benchmarks/conflicts.py's settings otherwise), its clean accuracy on the validation
split and its accuracy under the same PGD on ``adversarial_test`` validation images (never the
test split). The rule, fixed before the run: the largest mean validation adversarial accuracy
over seeds, the quantity adversarial training is for (as Rice et al., ICML '20, select robust
models); the clean accuracy is shown beside it (docs_tables.choose_rate, which the docs
apply too: every rate needs rows for the same seeds; a tie goes to the larger rate). At the
table's own rate the table's models are read, not retrained, when the table's run folder
holds them under the same configuration.
Then, at the chosen rate, the table's cells with adversarial training (adv, adv+wm, adv+rad)
per seed, measured as the table measures them (``ConflictsConfig.adv_lr``; the run folder of
each seed and rate, benchmarks/results/conflicts-runs/D/adversarial/seed-S-lr-R, keeps its
configuration and refuses another; the validation model of the chosen rate is the adv cell's
own, not trained twice; the table's trigger set and radioactive mark are copied from its run
folder where it holds them). Rows go to benchmarks/results/conflicts-adversarial.jsonl; a
row's ``seconds`` is the training and measuring time; ``seconds_to_train`` is 0
(validation) or the loading time (test) when the model was already there.

    python benchmarks/conflicts_adversarial.py [--seeds 3] [--dataset fashion-mnist]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from modelheist.errors import ModelheistError
from modelheist.experiments.conflicts import (
    CONFIG,
    CellJob,
    ConflictsConfig,
    cell_model,
    cells,
    owner_data,
    prepare_secrets,
    run_cell,
)
from modelheist.experiments.results import ResultsStore
from modelheist.experiments.run_folder import check_config, write_whole
from modelheist.models.adversarial_training import adversarial_accuracy
from modelheist.models.classifier import accuracy
from modelheist.models.store import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conflicts import (  # noqa: E402
    RESULTS,
    cell_study_arguments,
    folder_of,
    study_settings,
    table_config,
)
from docs_tables import choose_rate  # noqa: E402

STORE = RESULTS / "conflicts-adversarial.jsonl"
#: The rates tried (for Fashion-MNIST): the table's 0.1 and a factor of about three and ten
#: below it (a rate above 0.1 is where PGD training already collapsed).
RATES = (0.01, 0.03, 0.1)
#: The order they are trained in: the middle one first, so that a stopped run has compared the
#: table's rate with one below it before it reaches the grid's edge.
TRAIN_ORDER = (0.03, 0.1, 0.01)


def adversarial_cells(config: ConflictsConfig) -> list:
    """The table's cells with adversarial training, in table order (adv first)."""
    return [c for c in cells(config) if "adv" in c.mechanisms]


def table_folder(config: ConflictsConfig) -> Path | None:
    """The table's run folder of ``config``'s seed when it was made under ``config`` but for
    the adversarial rate (the table's own); else None."""
    folder = folder_of(config.dataset) / f"seed-{config.seed}"
    table = replace(config, adv_lr=None)
    if (folder / CONFIG).is_file() and json.loads((folder / CONFIG).read_text()) == table.as_json():
        return folder
    return None


def table_model(config: ConflictsConfig, rate: float):
    """The table's own adv model of ``config``'s seed when ``rate`` is the table's and the
    table's run folder holds it; else None."""
    folder = table_folder(config)
    if rate != config.lr or folder is None:
        return None
    model_folder = folder / "models" / "adv"
    return load_model(model_folder) if (model_folder / "card.json").is_file() else None


def table_secrets(config: ConflictsConfig, run_folder: Path) -> None:
    """The table's own secrets (trigger set, radioactive mark) copied into ``run_folder`` when
    the table's run folder of the seed holds them, so that adv+wm and adv+rad carry the marks
    the table's wm and rad cells carry; else made as the table makes them (seeded, but the
    marking network's training is not promised to repeat bit for bit)."""
    folder = table_folder(config)
    if (
        folder is not None
        and (folder / "secrets").is_dir()
        and not (run_folder / "secrets").exists()
    ):
        write_whole(run_folder / "secrets", lambda tmp: shutil.copytree(folder / "secrets", tmp))
    prepare_secrets(config, owner_data(config), run_folder)  # whatever is still missing


def main() -> None:
    try:
        study()
    except ModelheistError as error:  # a run folder of other settings: one line
        raise SystemExit(str(error)) from None


def study() -> None:
    args = cell_study_arguments(__doc__.split("\n\n")[0])
    console = Console(stderr=True)
    store = ResultsStore(STORE)
    store.freeze_environment()
    base = table_config(args.dataset)
    common = {
        **study_settings("conflicts-adversarial", args.dataset),
        "pgd": {"epsilon": base.adv_epsilon, "step": base.adv_step, "steps": base.adv_steps},
        "architecture": base.architecture,
        "adversarial_test": base.adversarial_test,
    }

    def ours(row: dict) -> bool:  # rows of this dataset and these settings
        return all(row[k] == v for k, v in common.items())

    def done(split: str) -> set[tuple]:
        return {
            (r["seed"], r["adv_lr"], r["cell"])
            for r in store.rows()
            if ours(r) and r["split"] == split
        }

    folder = folder_of(args.dataset) / "adversarial"
    (adv,) = [c for c in cells(base) if c.mechanisms == ("adv",)]
    for rate in TRAIN_ORDER:
        for seed in range(args.seeds):
            if (seed, rate, adv.name) in done("validation"):
                continue
            config = replace(base, seed=seed, adv_lr=rate)
            data = owner_data(config)
            assert data.validation is not None
            start = time.perf_counter()
            model = table_model(config, rate)
            source = "table"
            if model is None:
                run_folder = folder / f"seed-{seed}-lr-{rate:g}"
                run_folder.mkdir(parents=True, exist_ok=True)
                check_config(run_folder, config.as_json())  # other settings' model not reused
                model, fresh = cell_model(config, adv, data, run_folder)
                source = "trained" if fresh else "folder"
            trained = time.perf_counter() - start if source == "trained" else 0.0
            take = np.random.default_rng([seed, 5]).permutation(len(data.validation))
            take = np.sort(take[: config.adversarial_test])
            metrics = {
                "validation_accuracy": accuracy(model, data.validation.x, data.validation.y),
                "validation_adversarial_accuracy": adversarial_accuracy(
                    model,
                    data.validation.x[take],
                    data.validation.y[take],
                    config.adv_epsilon,
                    config.adv_step,
                    config.adv_steps,
                    seed=seed,
                ),  # fmt: skip
                "seconds_to_train": trained,
                "seconds": time.perf_counter() - start,
            }
            row = {**common, "split": "validation", "adv_lr": rate, "cell": adv.name}
            row |= {"rates": list(RATES), "model": source}
            store.append({**row, "metrics": metrics}, seed=seed)
            console.print(f"seed {seed} rate {rate:g} (validation, {source}): {metrics}")

    scores: dict[float, dict[int, float]] = {rate: {} for rate in RATES}  # the latest per seed
    for r in store.rows():
        if ours(r) and r["split"] == "validation" and r["adv_lr"] in scores:
            metric = r["metrics"]["validation_adversarial_accuracy"]
            scores[r["adv_lr"]][r["seed"]] = metric
    chosen = choose_rate(scores, RATES)  # the docs' rule, over every seed in the store
    if chosen is None:
        raise SystemExit("not every rate has validation rows for the same seeds")
    choice = {
        "means": {
            f"{rate:g}": statistics.fmean(by_seed.values()) for rate, by_seed in scores.items()
        },
        "seeds": sorted(scores[chosen]),
    }
    console.print(f"chosen on validation: rate {chosen:g} (mean adversarial accuracies {choice})")
    if chosen == base.lr:
        console.print("the table's own rate: its adversarial cells (conflicts.jsonl) stand")
        return

    for seed in range(args.seeds):
        config = replace(base, seed=seed, adv_lr=chosen)
        run_folder = folder / f"seed-{seed}-lr-{chosen:g}"
        run_folder.mkdir(parents=True, exist_ok=True)
        check_config(run_folder, config.as_json())  # a model of other settings is not reused
        for cell in adversarial_cells(config):
            if (seed, chosen, cell.name) in done("test"):
                continue
            table_secrets(config, run_folder)
            row = run_cell(CellJob(str(run_folder), config.as_json(), asdict(cell)))
            metrics = {
                **row["metrics"],
                "seconds_to_train": row["seconds_to_train"],
                "seconds": row["seconds"],
            }
            test = {**common, "split": "test", "adv_lr": chosen, "cell": cell.name}
            test["choice"] = choice
            store.append({**test, "metrics": metrics}, seed=seed)
            console.print(f"seed {seed} {cell.name} rate {chosen:g} (test): {metrics}")


if __name__ == "__main__":
    main()
