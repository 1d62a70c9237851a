"""Every generated table in docs/benchmarks.md is what its results store says."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "docs_tables.py"


def _script(path: Path):
    """A benchmarks/ script loaded as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _module():
    return _script(SCRIPT)


def test_generated_tables_match_their_results_stores():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_number_edited_by_hand_is_rewritten():
    module = _module()
    document = module.DOC.read_text()
    block = re.search(r"<!-- generated: state_scaling -->\n(.*?)\n<!-- end", document, re.DOTALL)
    doctored = document.replace(block.group(1), block.group(1) + "\n| invented | 1 |")
    assert module.render(doctored) == document


def test_a_table_emptied_by_hand_is_filled_again():
    module = _module()
    document = module.DOC.read_text()
    emptied = re.sub(
        r"(<!-- generated: tramer -->\n).*?\n(<!-- end: tramer -->)",
        r"\1\2",
        document,
        flags=re.DOTALL,
    )
    assert emptied != document
    assert module.render(emptied) == document


def test_an_unpaired_or_unknown_marker_is_refused():
    module = _module()
    document = module.DOC.read_text()
    with pytest.raises(ValueError, match="unpaired"):
        module.render(document.replace("<!-- end: tramer -->", "", 1))
    with pytest.raises(ValueError, match="no generator for the table"):
        module.render(document + "\n<!-- generated: invented -->\n<!-- end: invented -->\n")


def test_the_conflicts_optimiser_choice_follows_its_rule():
    """Among settings whose watermark reaches 0.9 on the mean (and with the most seeds), the
    largest mean validation accuracy of none, DP-SGD and the watermarked model is chosen."""
    module = _module()

    def row(lr, seed, wm_val, wm_acc, clipped_val, clipped_acc):
        metrics = {"none_validation_accuracy": 0.9, "dp_validation_accuracy": 0.8}
        metrics["mean_validation_accuracy"] = 0.85
        for name, val, acc in (("wm1", wm_val, wm_acc), ("wm1_clip1", clipped_val, clipped_acc)):
            metrics |= {f"{name}_validation_accuracy": val, f"{name}_watermark_accuracy": acc}
        training = {"epochs": 10, "train_size": 100, "batch_size": 8}
        return {
            "dataset": "d", "training": training, "optimizer": "sgd", "lr": lr,
            "weight_decay": 0.0, "seed": seed, "metrics": metrics, "machine": "m",
            "command": "c", "commit": "x", "date": "2026-12-03",
        }  # fmt: skip

    rows = [row(0.1, s, 0.89, 0.5, 0.86, 0.95) for s in (0, 1)]  # wm1 best but not embedded
    rows += [row(0.03, s, 0.7, 1.0, 0.88, 0.92) for s in (0, 1)]  # the best embedded one
    rows += [row(0.3, 0, 0.9, 1.0, 0.9, 1.0)]  # better still, but one seed only
    table = module.conflicts_validation(rows)
    chosen = [line for line in table.splitlines() if line.endswith("| chosen |")]
    assert len(chosen) == 1 and "| 0.03 | 1 pass, clip 1 | 2 |" in chosen[0]
    assert "| 0.1 | 1 pass | 2 | 0.50 |" in table and "watermark, 1 pass, clip 1" in table


def test_the_conflicts_choice_bounds_the_watermarks_epsilon_inside_dp_sgd():
    """Where the rows train the passes inside DP-SGD too, a variant whose epsilon there exceeds
    the DP-SGD model's by more than EPSILON_SLACK is not eligible; each training setting (here
    two batch sizes) gets its own choice."""
    module = _module()

    def row(batch, lr, seed, one_pass, ten_passes, ten_passes_epsilon):
        metrics = {"none_validation_accuracy": 0.9, "dp_validation_accuracy": 0.8}
        metrics |= {"mean_validation_accuracy": 0.85, "dp_epsilon": 3.0}
        for rounds, (val, acc), epsilon in (
            (1, one_pass, 3.3),
            (10, ten_passes, ten_passes_epsilon),
        ):
            metrics |= {
                f"wm{rounds}_clip1_validation_accuracy": val,
                f"wm{rounds}_clip1_watermark_accuracy": acc,
                f"dp_wm{rounds}_validation_accuracy": 0.5,
                f"dp_wm{rounds}_watermark_accuracy": 0.4,
                f"dp_wm{rounds}_epsilon": epsilon,
            }
        training = {"epochs": 10, "train_size": 100, "batch_size": batch}
        return {
            "dataset": "d", "training": training, "optimizer": "sgd", "lr": lr,
            "weight_decay": 0.0, "seed": seed, "metrics": metrics, "machine": "m",
            "command": "c", "commit": "x", "date": "2026-12-04",
        }  # fmt: skip

    # batch 8: ten passes are best and embedded but spend 10 against 3: one pass is chosen
    rows = [row(8, 0.1, s, (0.8, 0.95), (0.89, 1.0), 10.0) for s in (0, 1)]
    # batch 4: ten passes spend 3.6 (within a quarter more than 3): they are chosen
    rows += [row(4, 0.1, s, (0.8, 0.95), (0.89, 1.0), 3.6) for s in (0, 1)]
    table = module.conflicts_validation(rows)
    chosen = [line for line in table.splitlines() if line.endswith("| chosen |")]
    assert len(chosen) == 2
    assert "| d | 8 | sgd | 0.1 | 1 pass, clip 1 | 2 | 0.95 | 0.40 / 3.30 (3.00) |" in chosen[0]
    assert "| d | 4 | sgd | 0.1 | 10 passes, clip 1 | 2 | 1.00 | 0.40 / 3.60 (3.00) |" in chosen[1]
    assert "inside DP-SGD, 10 passes: validation acc. / watermark acc. / epsilon" in table
    assert "| 0.5000 ± 0.0000 / 0.40 ± 0.00 / 10.00 ± 0.00 |" in table


def test_a_supplement_joins_its_seeds_full_row_and_each_setting_keeps_its_own_variants():
    """Passes measured later (a row marked ``supplement``) join the seed's latest full row and
    can be chosen; a setting that never measured them still gets its own choice."""
    module = _module()

    def row(dataset, seed, metrics, supplement=False):
        training = {"epochs": 10, "train_size": 100, "batch_size": 8}
        return {
            "dataset": dataset, "training": training, "optimizer": "sgd", "lr": 0.1,
            "weight_decay": 0.0, "seed": seed, "metrics": metrics, "machine": "m",
            "command": "c", "commit": "x", "date": "2026-12-04",
        } | ({"supplement": True} if supplement else {})  # fmt: skip

    def full(val, acc, epsilon):
        return {
            "none_validation_accuracy": 0.9, "dp_validation_accuracy": 0.8,
            "mean_validation_accuracy": 0.85, "dp_epsilon": 3.0,
            "wm1_clip1_validation_accuracy": val, "wm1_clip1_watermark_accuracy": acc,
            "dp_wm1_validation_accuracy": 0.5, "dp_wm1_watermark_accuracy": 0.3,
            "dp_wm1_epsilon": epsilon,
        }  # fmt: skip

    two_passes = {
        "wm2_clip1_validation_accuracy": 0.88, "wm2_clip1_watermark_accuracy": 0.95,
        "dp_wm2_validation_accuracy": 0.6, "dp_wm2_watermark_accuracy": 0.5,
        "dp_wm2_epsilon": 3.5,
    }  # fmt: skip
    rows = [row("a", s, full(0.89, 0.6, 3.2)) for s in (0, 1)]  # one pass does not embed
    rows += [row("a", s, two_passes, supplement=True) for s in (0, 1)]
    rows += [row("b", s, full(0.87, 0.95, 3.2)) for s in (0, 1)]  # never measured two passes
    table = module.conflicts_validation(rows)
    chosen = [line for line in table.splitlines() if line.endswith("| chosen |")]
    assert len(chosen) == 2
    assert "| a | 8 | sgd | 0.1 | 2 passes, clip 1 | 2 | 0.95 | 0.50 / 3.50 (3.00) |" in chosen[0]
    assert "| b | 8 | sgd | 0.1 | 1 pass, clip 1 | 2 | 0.95 | 0.30 / 3.20 (3.00) |" in chosen[1]
    measured = [line for line in table.splitlines() if line.startswith("| a | 10 |")]
    assert len(measured) == 1 and "| 0.8800 ± 0.0000 / 0.95 ± 0.00 |" in measured[0]


def test_the_validation_script_supplements_only_the_seeds_latest_full_row():
    """What conflicts_validation.py counts as measured for a seed and setting: its latest full
    row and the supplements after it (as the docs table reads them), not older full rows."""
    module = _script(ROOT / "benchmarks" / "conflicts_validation.py")
    key = {"seed": 0, "optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0}
    rows = [
        key | {"metrics": {"none_validation_accuracy": 0.5, "wm3_validation_accuracy": 0.1}},
        key | {"metrics": {"none_validation_accuracy": 0.9}},
        key | {"metrics": {"wm2_validation_accuracy": 0.8}, "supplement": True},
        key | {"seed": 1, "metrics": {"wm5_validation_accuracy": 0.7}, "supplement": True},
    ]
    assert module.measured(rows, (0, "sgd", 0.1, 0.0)) == (
        {"none_validation_accuracy": 0.9, "wm2_validation_accuracy": 0.8},
        rows[1],
    )
    assert module.measured(rows, (2, "sgd", 0.1, 0.0)) == ({}, None)
    assert module.figures("dp_wm2") == [
        "dp_wm2_validation_accuracy", "dp_wm2_watermark_accuracy", "dp_wm2_epsilon"
    ]  # fmt: skip
    assert module.watermark_variants((2,), (None, 1.0)) == [("wm2", 2, None), ("wm2_clip1", 2, 1.0)]


def test_dp_sgd_covering_the_trigger_steps_is_a_candidate_of_its_own():
    """Where the passes on top of DP-SGD's budget spend too much, the same passes with the
    noise covering them can be chosen; where both are eligible, the study's way is."""
    module = _module()

    def row(batch, seed, on_top):
        metrics = {
            "none_validation_accuracy": 0.9, "dp_validation_accuracy": 0.8,
            "mean_validation_accuracy": 0.85, "dp_epsilon": 3.0,
            "wm10_clip1_validation_accuracy": 0.88, "wm10_clip1_watermark_accuracy": 1.0,
            "dp_wm10_validation_accuracy": 0.5, "dp_wm10_watermark_accuracy": 0.8,
            "dp_wm10_epsilon": on_top,
            "dp_wm10_cover_validation_accuracy": 0.4, "dp_wm10_cover_watermark_accuracy": 0.6,
            "dp_wm10_cover_epsilon": 2.99,
        }  # fmt: skip
        training = {"epochs": 10, "train_size": 100, "batch_size": batch}
        return {
            "dataset": "d", "training": training, "optimizer": "sgd", "lr": 0.1,
            "weight_decay": 0.0, "seed": seed, "metrics": metrics, "machine": "m",
            "command": "c", "commit": "x", "date": "2026-12-04",
        }  # fmt: skip

    rows = [row(8, s, 5.4) for s in (0, 1)] + [row(4, s, 3.3) for s in (0, 1)]
    table = module.conflicts_validation(rows)
    chosen = [line for line in table.splitlines() if line.endswith("| chosen |")]
    covering = "10 passes, clip 1, DP-SGD's noise covering them"
    assert f"| d | 8 | sgd | 0.1 | {covering} | 2 | 1.00 | 0.60 / 2.99 (3.00) |" in chosen[0]
    assert "| d | 4 | sgd | 0.1 | 10 passes, clip 1 | 2 | 1.00 | 0.80 / 3.30 (3.00) |" in chosen[1]
    assert len(chosen) == 2 and f"| {covering} | 2 | 1.00 | 0.60 / 2.99 (3.00) |" in table
    assert "inside DP-SGD, 10 passes, noise covering them: validation acc." in table


def test_the_adversarial_rate_is_chosen_by_validation_adversarial_accuracy():
    """The largest mean validation adversarial accuracy wins (each seed's latest row), not
    the clean accuracy; no rate is chosen until every rate of the grid has rows for the same
    seeds; only the chosen rate's test rows are shown."""
    module = _module()

    def row(rate, seed, clean, robust, split="validation", cell="adv"):
        return {
            "dataset": "d", "optimiser": {"optimizer": "sgd", "lr": 0.1}, "training": {},
            "pgd": {"epsilon": 0.125, "step": 0.005, "steps": 25}, "split": split,
            "adv_lr": rate, "cell": cell, "seed": seed, "machine": "m", "command": "c",
            "commit": "x", "date": "2026-12-05", "rates": [0.01, 0.03, 0.1], "model": "trained",
            "metrics": {"validation_accuracy": clean, "validation_adversarial_accuracy": robust,
                        "accuracy": clean, "adversarial_accuracy": robust},
        }  # fmt: skip

    def chosen(table: str) -> list[str]:  # the marked rows (the header ends alike)
        return [
            line
            for line in table.splitlines()
            if line.endswith("| chosen |") and not line.startswith("| learning rate")
        ]

    rows = [row(0.1, s, 0.9, 0.3) for s in (0, 1)]  # cleaner, less robust
    rows += [row(0.03, s, 0.8, 0.5) for s in (0, 1)]
    assert not chosen(module.conflicts_adversarial(rows))  # 0.01 not run yet
    rows += [row(0.01, 0, 0.7, 0.1), row(0.01, 1, 0.7, 0.1)]
    rows += [row(0.01, 1, 0.7, 0.95)]  # seed 1's later row replaces its first
    rows += [row(0.01, s, 0.6, 0.5, split="test") for s in (0, 1)]
    rows += [row(0.03, 0, 0.2, 0.2, split="test")]  # an earlier choice's: not shown
    table = module.conflicts_adversarial(rows)
    assert chosen(table) == ["| 0.01 | 2 | 0.7000 ± 0.0000 | 0.5250 ± 0.6010 | 0 | chosen |"]
    assert "| adv | 0.01 | 2 | 0.600 ± 0.000 | 0.500 ± 0.000 |" in table
    assert "| adv | 0.03 |" not in table
    assert not chosen(module.conflicts_adversarial([*rows, row(0.03, 2, 0.6, 1.0)]))


def test_a_rate_choice_needs_every_rate_at_the_same_seeds_and_breaks_ties_upward():
    module = _module()
    choose = module.choose_rate
    assert choose({0.01: {0: 0.5, 1: 0.7}, 0.1: {0: 0.6, 1: 0.5}}, (0.01, 0.1)) == 0.01
    assert choose({0.01: {0: 0.5}, 0.1: {0: 0.5}}, (0.1, 0.01)) == 0.1  # a tie: the larger
    assert choose({0.01: {0: 0.5}, 0.1: {1: 0.4}}, (0.01, 0.1)) is None  # other seeds
    assert choose({0.01: {0: 0.5}}, (0.01, 0.1)) is None  # a rate not run
    assert choose({0.01: {}, 0.1: {}}, (0.01, 0.1)) is None


def test_splits_partition_each_dataset_and_bad_names_are_one_line():
    splits = _script(SCRIPT.parent / "splits.py")
    sizes = splits.split_sizes("mnist5k")
    assert sum(sizes.values()) == 5000  # every image in one split (load_dataset's tests: disjoint)
    assert splits.split_sizes("mnist5k", seed=1) == sizes  # the seed moves examples, not counts
    assert sizes["test"] == 1000 and sizes["validation"] > 0
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "splits.py"), "--datasets", "no-such-set"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown datasets: no-such-set" in proc.stderr


def test_the_quickstart_table_says_it_is_shortened_and_gives_the_full_attack():
    """Issue 15: the quickstart's table says plainly that its attack is shortened and what the
    attack as users run it reaches (the Knockoff grid's default at the same point, over seeds)."""
    module = _module()
    common = {"machine": "m", "command": "c", "commit": "x", "date": "2026-12-06"}
    run = {
        "transfer_set": "fashion-mnist", "output": "probs", "budget": 500, "queries_used": 500,
        "fidelity_test": 0.9, "prada_alarm": None, "ood_alarm": 120,
    }  # fmt: skip
    quickstart = {
        **common, "benchmark": "quickstart", "preset": "full", "seed": 0,
        "metrics": {"wall_seconds": 120.0, "victim_accuracy": 0.9, "runs": [run]},
    }  # fmt: skip

    def grid_row(seed, fidelity, budget=500, variant="default"):
        return {
            **common, "scenario": "knockoff-fmnist", "variant": variant, "seed": seed,
            "transfer_set": "fashion-mnist", "output": "probs", "budget": budget,
            "config": {"victim": {"epochs": 5}}, "metrics": {"fidelity_test": fidelity},
        }  # fmt: skip

    table = module.quickstart(
        [
            quickstart,
            grid_row(0, 0.92),
            grid_row(1, 0.94),
            grid_row(0, 0.10, budget=1000),  # another budget: not this run's
            grid_row(0, 0.10, variant="augment"),  # not the default
        ]
    )
    assert "| fashion-mnist | probs | 500 | 500 | 0.9000 | 0.9300 ± 0.0141 | none | 120 |" in table
    assert "A shortened run" in table and "over 2 seeds" in table
