"""The CLI end to end, as a user runs it: real processes, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelheist.data import dataset_available
from modelheist.models import save_model

CLI = [sys.executable, "-m", "modelheist.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=os.environ
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_quickstart_fast_end_to_end(tmp_path):
    proc = run(*f"quickstart --fast --json {tmp_path}/q.json --report {tmp_path}/report".split())
    assert proc.returncode == 0, proc.stderr
    document = json.loads((tmp_path / "q.json").read_text())
    assert document["victim"]["test_accuracy"] > 0.7
    runs = document["runs"]
    assert len(runs) == 9
    assert {(r["output"], r["budget"]) for r in runs} >= {("probs", 500), ("labels", 5000)}
    for r in runs:
        assert r["queries_used"] <= r["budget"]
        assert 0.0 <= r["fidelity_test"] <= 1.0
    in_dist = [
        r
        for r in runs
        if r["transfer_set"] == document["victim"]["dataset"] and r["output"] == "probs"
    ]
    assert max(r["fidelity_test"] for r in in_dist) > 0.7
    assert [spec.split(":")[0] for spec in document["detectors"]] == ["prada", "ood-msp"]
    # every run says when each detector flagged its client (None: never); the in-distribution
    # Knockoff client is the blind spot of the OOD detector (the fast victim is too weak for
    # its maximum softmax to separate mnist5k reliably: benchmarks/ood.py measures that)
    assert all({"prada_alarm", "ood_alarm"} <= set(r) for r in runs)
    assert all(r["ood_alarm"] is None for r in in_dist)
    assert "PRADA alarm (query)" in (tmp_path / "report" / "report.md").read_text()
    # DAWN ran too: each run's client got watermarks (~0.5% of its queries), each surrogate was
    # tested against its own set, and the independent model was accused by none of them
    assert document["watermark"].startswith("dawn:rate=0.005")
    five_thousand = [r for r in runs if r["budget"] == 5000]
    assert all(r["dawn_watermarks"] >= 10 for r in five_thousand)
    assert all(r["dawn_verdict"] in ("stolen", "not stolen", "cannot verify") for r in runs)
    assert document["independent_model"]["accused"] == 0
    assert "watermarked answers" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "report.md").read_text().count("| ") > 9
    assert (tmp_path / "report" / "fidelity.png").read_bytes()[:4] == b"\x89PNG"
    assert "fidelity (1-R_test)" in proc.stdout


def test_train_then_attack(tmp_path):
    proc = run(*f"train --dataset digits --arch mlp --out {tmp_path}/v --epochs 10".split())
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    proc = run(
        *f"attack knockoff --victim {tmp_path}/v --transfer-set digits --budget 300 --output top-k:3 "
        f"--epochs 10 --rounds 0 --json {tmp_path}/a.json --out {tmp_path}/s".split()
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((tmp_path / "a.json").read_text())
    assert figures["queries_used"] == 300 and figures["fidelity_test"] > 0.6
    assert (tmp_path / "s" / "weights.safetensors").is_file()


@pytest.fixture(scope="module")
def victim_dir(tmp_path_factory, breast_cancer):
    from modelheist.models import train_model

    folder = tmp_path_factory.mktemp("victims") / "lr"
    return save_model(train_model(breast_cancer, "logreg"), folder)


ATTACK = "attack knockoff --victim {victim} --transfer-set"
NEEDS_FORTUNES = pytest.mark.skipif(
    not dataset_available("fortunes"), reason="Debian's fortunes are not installed"
)
MISTAKES = [
    ("train --dataset nope --arch mlp --out {tmp}/x", "unknown dataset 'nope'"),
    ("train --dataset digits --arch resnet --out {tmp}/x", "unknown architecture"),
    ("train --dataset digits --arch mlp --out {tmp} --epochs 1", "already exists"),
    ("train --dataset digits --arch mlp --out {tmp}/x --epochs 0", "--epochs"),
    ("train --dataset digits --arch minilm --out {tmp}/x", "digits holds image"),
    (f"{ATTACK} breast-cancer --budget 0", "--budget"),
    (f"{ATTACK} breast-cancer --budget 5 --output softmax", "unknown output/defense spec"),
    (f"{ATTACK} nope --budget 5", "unknown dataset"),
    (f"{ATTACK} digits --budget 5", "cannot be fitted"),
    (f"{ATTACK} breast-cancer --budget 5 --out {{victim}}", "already exists"),
    ("attack knockoff --victim {tmp}/none --transfer-set digits --budget 5", "does not exist"),
    (f"{ATTACK} breast-cancer --budget 5 --strategy greedy", "unknown Knockoff strategy"),
    (f"{ATTACK} breast-cancer --budget 5 --strategy adaptive --rewards cert,fun", "reward"),
    (f"{ATTACK} breast-cancer --budget 5 --transfer-labels {{tmp}}/y.npy", "adaptive only"),
    (
        f"{ATTACK} breast-cancer --budget 5 --strategy adaptive --transfer-labels {{tmp}}/y.npy",
        "y.npy",
    ),  # fmt: skip
    (
        f"{ATTACK} breast-cancer --budget 5 --strategy adaptive --transfer-labels {{tmp}}/f.npy",
        "1-D integer array",
    ),  # fmt: skip
    (
        f"{ATTACK} breast-cancer --budget 5 --strategy adaptive --transfer-labels {{tmp}}/i.npy",
        "one per transfer-set input",
    ),  # fmt: skip
    (
        f"{ATTACK} breast-cancer --budget 5 --strategy adaptive --transfer-labels {{tmp}}/z.npz",
        "an .npz archive",
    ),  # fmt: skip
    ("attack thieves --victim {victim} --budget 5", "takes arrays, not text"),
    ("attack thieves --victim {victim} --budget 5 --queries natural:", "natural:DATASET"),
    ("attack thieves --victim {victim} --budget 5 --queries random:x", "natural:DATASET"),
    (
        "attack thieves --victim {victim} --budget 5 --queries natural:a --transfer-set b",
        "give one",
    ),  # fmt: skip
]
# The text set's mistakes, where Debian's fortunes are installed (`make data`).
MISTAKES += [
    pytest.param(command, needle, marks=NEEDS_FORTUNES)
    for command, needle in [
        ("train --dataset fortunes --arch mlp --out {tmp}/x", "fortunes holds text: train minilm"),
        (
            "train --dataset fortunes --arch vader --out {tmp}/x --watermark backdoor "
            "--secret-out {tmp}/s",
            "are for images",
        ),
        (f"{ATTACK} fortunes --budget 5", "of the victim's kind"),
    ]
]


@pytest.mark.parametrize(("command", "needle"), MISTAKES)
def test_user_mistakes_give_one_line_and_exit_2(
    tmp_path, victim_dir, cli_in_process, command, needle
):
    np.save(tmp_path / "f.npy", np.zeros(3, np.float32))
    np.save(tmp_path / "i.npy", np.zeros(3, np.int64))
    np.savez(tmp_path / "z.npz", labels=np.zeros(3, np.int64))
    formatted = command.format(tmp=tmp_path, victim=victim_dir).split()
    before = sorted(p.name for p in victim_dir.iterdir())
    assert_one_line_error(cli_in_process(*formatted), needle)
    assert sorted(p.name for p in victim_dir.iterdir()) == before  # nothing overwritten


def test_a_mistake_in_a_real_process(victim_dir):
    """The same exit path as the in-process checks, through the installed entry point."""
    assert_one_line_error(
        run(*ATTACK.format(victim=victim_dir).split(), "nope", "--budget", "5"), "unknown dataset"
    )


def test_corrupt_weights_file(tmp_path, victim_dir, cli_in_process):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(victim_dir, broken)
    (broken / "weights.safetensors").write_bytes(b"\x00\x01corrupt")
    proc = cli_in_process(
        "attack",
        "knockoff",
        "--victim",
        str(broken),
        "--transfer-set",
        "breast-cancer",
        "--budget",
        "5",
    )
    assert_one_line_error(proc, "not a valid safetensors file")


def test_unwritable_report_folder_is_one_line(tmp_path, cli_in_process):
    (tmp_path / "file").write_text("not a folder")
    proc = cli_in_process("quickstart", "--fast", "--report", str(tmp_path / "file" / "report"))
    assert_one_line_error(proc, "Not a directory")


def test_equation_solving_and_labels_only_attacks(tmp_path, victim_dir, cli_in_process):
    proc = run(
        *f"attack tramer-lr --victim {victim_dir} --budget 100 --json {tmp_path}/lr.json".split()
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((tmp_path / "lr.json").read_text())
    assert (
        figures["queries_used"] == 31
        and figures["fidelity_test"] == figures["fidelity_uniform"] == 1.0
    )
    assert figures["details"]["method"] == "exact"
    assert_one_line_error(
        cli_in_process(
            *f"attack tramer-lr --victim {victim_dir} --budget 100 --output labels".split()
        ),
        "cannot learn from labels",
    )
    assert_one_line_error(
        cli_in_process(*f"attack tramer-lr --victim {victim_dir} --budget 5".split()), "d + 1 = 31"
    )
    proc = run(
        *f"attack retrain --victim {victim_dir} --budget 310 --output labels --json {tmp_path}/r.json".split()
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["fidelity_test"] >= 0.95
    assert_one_line_error(
        cli_in_process("attack", "lowd-meek", "--budget", "10"), "name the victim"
    )


def test_tree_path_finding_from_the_command_line(tmp_path, breast_cancer, cli_in_process):
    from modelheist.models import train_model

    tree_dir = save_model(train_model(breast_cancer, "tree"), tmp_path / "tree")
    proc = run(
        *f"attack tree-path --victim {tree_dir} --budget 5000 --incomplete-queries --json {tmp_path}/t.json --out {tmp_path}/s".split()
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((tmp_path / "t.json").read_text())
    assert figures["fidelity_test"] == figures["fidelity_uniform"] == 1.0
    assert figures["details"]["incomplete_queries"] and figures["queries_used"] < 5000
    assert (tmp_path / "s" / "card.json").exists()
    assert_one_line_error(
        cli_in_process(*f"attack tree-path --victim {tree_dir} --budget 5000 --no-leaves".split()),
        "--leaves",
    )
    short = run(*f"attack tree-path --victim {tree_dir} --budget 100 --out {tmp_path}/p".split())
    assert short.returncode == 3, short.stderr  # cut short by its budget: keeps what it bought
    assert "budget of 100 queries" in short.stderr and f"{tmp_path}/p" in short.stderr
    assert len(np.load(tmp_path / "p" / "query_log.npz")["labels"]) == 100
    assert (tmp_path / "p" / "card.json").exists()


def test_synthetic_query_attacks_from_the_command_line(tmp_path, digits_cnn, cli_in_process):
    cnn_dir = save_model(digits_cnn, tmp_path / "cnn")
    proc = run(  # t-rnd shares this command's code; jbda its attack base (test_synthetic.py)
        *f"attack n-ifgsm --victim {cnn_dir} --budget 200 --seeds-per-class 5 --steps 1".split(),
        *["--learning-rates", "0.002,0.008", "--folds", "2", "--min-steps", "100"],
        *["--output", "labels", "--json", tmp_path / "n.json"],
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((tmp_path / "n.json").read_text())
    assert figures["queries_used"] == 200 and figures["details"]["seeds"] == 50
    assert figures["output"] == "labels" and figures["params"]["steps"] == 1
    assert figures["fidelity_test"] >= 0.6, figures  # from 200 queries
    assert set(figures["details"]["cv_agreement"]) == {"0.002", "0.008"}  # the CV-search ran
    assert_one_line_error(
        cli_in_process(*f"attack t-rnd --victim {cnn_dir} --budget 10".split()), "needs 100 queries"
    )


def test_train_with_a_watermark_then_verify(tmp_path, cli_in_process):
    marked, secret = tmp_path / "marked", tmp_path / "secret"
    proc = run(
        *f"train --dataset digits --arch cnn --out {marked} --epochs 15 --watermark "
        f"backdoor:triggers=40,repeats=10 --secret-out {secret}".split()
    )
    assert proc.returncode == 0, proc.stderr
    card = json.loads((marked / "card.json").read_text())
    assert card["protections"][0]["name"] == "backdoor-watermark"
    assert not (marked / "triggers.safetensors").exists()  # the secret lives apart
    verdicts = {}
    plain = tmp_path / "plain"
    # in this interpreter, but for the first train and the last verify (real processes)
    plain_run = cli_in_process(
        *f"train --dataset digits --arch cnn --out {plain} --epochs 15".split()
    )
    assert plain_run.returncode == 0, plain_run.stderr
    for suspect in (marked, plain):
        proc = (cli_in_process if suspect == marked else run)(
            *f"verify backdoor-watermark --triggers {secret} --owner-model {marked} "
            f"--suspect {suspect} --json {tmp_path}/{suspect.name}.json".split()
        )
        assert proc.returncode == 0, proc.stderr
        verdicts[suspect.name] = json.loads((tmp_path / f"{suspect.name}.json").read_text())
    assert verdicts["marked"]["decision"] == "stolen" and verdicts["marked"]["p_value"] < 1e-10
    assert verdicts["plain"]["decision"] == "not stolen" and verdicts["plain"]["queries"] == 40
    assert "not stolen: watermark accuracy" in proc.stdout  # the last suspect, the plain one
    few = cli_in_process(
        *f"verify backdoor-watermark --triggers {secret} --owner-model {marked} "
        f"--suspect {marked} --budget 5".split()
    )
    assert few.returncode == 2 and "cannot verify" in few.stdout  # a verdict, not a claim
    assert_one_line_error(  # a plain model's card records no watermark to verify against
        cli_in_process(
            *f"verify backdoor-watermark --triggers {secret} --owner-model {plain} "
            f"--suspect {marked}".split()
        ),
        "records no backdoor watermark",
    )


VERIFY = "verify backdoor-watermark --triggers {tmp} --owner-model {tmp}"
VERIFY_MISTAKES = [
    (VERIFY, "name one suspect"),
    (f"{VERIFY} --suspect {{tmp}} --target http://x", "one suspect"),
    (f"{VERIFY} --suspect {{tmp}}", "not a modelheist model folder"),
    ("train --dataset digits --arch cnn --out {tmp}/m --watermark backdoor", "go together"),
    (
        "train --dataset digits --arch cnn --out {tmp}/m --watermark dawn --secret-out {tmp}/s",
        "unknown watermark",
    ),
]


@pytest.mark.parametrize(("command", "needle"), VERIFY_MISTAKES)
def test_ownership_mistakes_give_one_line(tmp_path, cli_in_process, command, needle):
    assert_one_line_error(cli_in_process(*command.format(tmp=tmp_path).split()), needle)


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook")
def test_train_with_training_defenses(tmp_path, cli_in_process):
    out = tmp_path / "private"
    proc = run(
        *f"train --dataset digits --arch cnn-gn --out {out} --epochs 4 --defense "
        "dp-sgd:epsilon=4 --defense adversarial-training:epsilon=0.1,step_size=0.05,steps=2".split()
    )
    assert proc.returncode == 0, proc.stderr
    assert "DP-SGD spent epsilon" in proc.stdout and "adversarial accuracy" in proc.stdout
    card = json.loads((out / "card.json").read_text())
    assert [p["name"] for p in card["protections"]] == ["dp-sgd", "adversarial-training"]
    assert card["protections"][0]["epsilon_spent"] <= 4.05
    assert 0.0 <= card["metrics"]["adversarial_accuracy"] <= card["metrics"]["test_accuracy"]
    for args, needle in [
        ("--arch cnn --defense dp-sgd", "use an architecture without BatchNorm"),
        ("--arch cnn-gn --defense dp-sgd:epsilon=1e-9,delta=1e-9", "cannot reach epsilon"),
        ("--arch cnn-gn --defense dp-sgd:epsilon=x", "epsilon must be a number"),
        ("--arch cnn-gn --defense dp-sgd:clip=1", "bad argument 'clip=1'"),
        ("--arch cnn-gn --defense dp-sgd:cover_other_steps=2", "must be true or false"),
        ("--arch cnn-gn --defense dropout", "unknown training defense 'dropout'"),
        ("--arch tree --defense adversarial-training", "need images and a network"),
    ]:
        folder = tmp_path / f"refused-{len(needle)}"
        assert_one_line_error(
            cli_in_process(*f"train --dataset digits --out {folder} {args}".split()), needle
        )
        assert not folder.exists()  # refused before anything is written
