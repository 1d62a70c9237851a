"""The conflicts table (Szyller & Asokan's pairs): the cells planned, refusals before any
training, a tiny run on digits with the direction of the two strongest effects, resumption,
and the same results from a local process pool and from a Ray instance the test starts."""

import json
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from modelheist.errors import ModelheistError
from modelheist.experiments.conflicts import (
    CELLS,
    ConflictsConfig,
    cells,
    run_conflicts,
)
from modelheist.experiments.conflicts_report import markdown
from modelheist.experiments.executors import LocalExecutor, RayExecutor, executor_for
from modelheist.experiments.run_folder import read_lines

pytestmark = pytest.mark.filterwarnings(
    "ignore:Secure RNG turned off", "ignore:Full backward hook", "ignore::DeprecationWarning"
)


def names(config):
    return [cell.name for cell in cells(config)]


def test_the_talks_pairs_and_the_relaxations_are_planned():
    assert names(ConflictsConfig()) == [
        "none", "wm", "rad", "dp", "adv", "dp+wm", "dp+rad", "adv+wm", "adv+rad",
        "dp+wm (watermark-outside-dp)", "dp+wm (larger-clip)",
    ]  # fmt: skip
    assert names(ConflictsConfig(protections=("wm", "adv", "di"), relaxed=False)) == [
        "none", "wm", "adv", "adv+wm",
    ]  # fmt: skip
    every = names(ConflictsConfig(protections=("wm", "rad", "dp"), combinations="all"))
    assert every == [
        "none", "wm", "rad", "dp", "wm+rad", "dp+wm", "dp+rad", "dp+wm+rad",
        "dp+wm (watermark-outside-dp)", "dp+wm (larger-clip)",
    ]  # fmt: skip
    listed = names(ConflictsConfig(combinations="dp+adv+wm, adv+di", relaxed=False))
    # adv+di is the adv cell: dataset inference is read off every cell
    assert listed == ["none", "wm", "rad", "dp", "adv", "dp+adv+wm"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"protections": ("wm", "dropout")}, "unknown protection 'dropout'"),
        ({"protections": ()}, "unknown protection"),
        ({"combinations": "dp+wm+x"}, "unknown protection 'x'"),
        ({"protections": ("wm", "adv"), "combinations": "dp+wm"}, "leaves out"),
        ({"combinations": ","}, "no combination"),
        ({"dp_epsilon": 0.0}, "epsilon > 0"),
        ({"adv_steps": 0}, "PGD needs"),
        ({"trigger_source": "fashion-mnist"}, "another dataset"),
        ({"optimizer": "rmsprop"}, "adamw or sgd"),
        ({"trigger_clip": 0.0}, "trigger_clip must be > 0"),
        ({"trigger_rounds": 0}, "trigger_rounds must be at least 1"),
        ({"relaxed_lr": -0.01}, "relaxed_lr must be > 0"),
        ({"adv_lr": 0.0}, "adv_lr must be > 0"),
    ],
)
def test_bad_settings_are_one_line_errors(changes, message):
    with pytest.raises(ModelheistError, match=message):
        ConflictsConfig(**changes)


def test_the_larger_clip_cell_alone_takes_the_relaxed_rate():
    plain = ConflictsConfig(optimizer="sgd", lr=0.1)
    assert "relaxed_lr" not in plain.as_json()  # run folders made before it still match
    own = replace(plain, relaxed_lr=0.01)
    assert own.as_json()["relaxed_lr"] == 0.01
    rates = {cell.name: own.cell_train_config(cell).lr for cell in cells(own)}
    assert rates.pop("dp+wm (larger-clip)") == 0.01
    assert set(rates.values()) == {0.1}
    assert {plain.cell_train_config(cell).lr for cell in cells(plain)} == {0.1}


def test_the_adversarial_cells_take_their_own_rate():
    plain = ConflictsConfig(optimizer="sgd", lr=0.1, combinations="all")
    assert "adv_lr" not in plain.as_json()  # run folders made before it still match
    own = replace(plain, adv_lr=0.03, relaxed_lr=0.01)
    assert own.as_json()["adv_lr"] == 0.03
    rates = {cell.name: own.cell_train_config(cell).lr for cell in cells(own)}
    assert rates.pop("dp+wm (larger-clip)") == 0.01  # the relaxation keeps its own rate
    adversarial = {name for name in rates if "adv" in name.split("+")}
    assert adversarial >= {"adv", "adv+wm", "adv+rad", "dp+adv+wm+rad"}
    assert {rates[name] for name in adversarial} == {0.03}
    assert {rate for name, rate in rates.items() if name not in adversarial} == {0.1}


def test_dp_sgd_covers_the_triggers_only_when_asked(tmp_path):
    from modelheist.experiments.conflicts import cell_protections, owner_data, prepare_secrets
    from modelheist.models.privacy import DpSgd

    plain = ConflictsConfig.small()
    assert "dp_covers_triggers" not in plain.as_json()  # run folders made before it match
    covering = replace(plain, dp_covers_triggers=True)
    assert covering.as_json()["dp_covers_triggers"] is True
    prepare_secrets(plain, owner_data(plain), tmp_path)
    for config, expected in ((plain, False), (covering, True)):
        for cell in cells(config):
            if "dp" in cell.mechanisms:
                (dp,) = [
                    p for p in cell_protections(config, cell, tmp_path) if isinstance(p, DpSgd)
                ]
                assert dp.cover_other_steps is expected


def test_what_cannot_train_is_refused_before_any_training(tmp_path):
    for changes, message in [
        ({"architecture": "cnn"}, "BatchNorm"),
        ({"dp_epsilon": 1e-6, "dp_delta": 1e-9}, "cannot reach epsilon"),
        ({"train_size": 100, "mark_control": 200}, "radioactive data"),
    ]:
        folder = tmp_path / message.replace(" ", "-")
        config = ConflictsConfig.small(**changes)
        with pytest.raises(ModelheistError, match=message):
            run_conflicts(config, [0], folder)
        assert not folder.exists()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The tiny table on digits, every mechanism, one seed: the command a user runs, in this
    process."""
    from typer.testing import CliRunner

    from modelheist.cli import app

    folder = tmp_path_factory.mktemp("conflicts") / "run"
    args = f"experiment conflicts --fast --dataset digits --seeds 1 --out {folder}".split()
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stdout
    assert "| dp+wm |" in result.stdout and "report:" in result.stdout
    report = (folder / "conflicts.md").read_text()
    assert "the larger-clip relaxation: clipping norm 10 at rate 0.002" in report
    return ConflictsConfig.small(), folder, json.loads((folder / "conflicts.json").read_text())


def test_the_table_has_every_cell_and_metric(small_run):
    config, folder, doc = small_run
    by_cell = {row["cell"]: row["metrics"] for row in doc["rows"]}
    assert list(by_cell) == names(config)
    for name, metrics in by_cell.items():
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert 0.0 <= metrics["adversarial_accuracy"] <= 1.0  # adv asked: on every cell
        if name in ("none", "dp", "adv"):  # the talk's pairs: DI on each defense's model
            assert 0.0 <= metrics["di_p"] <= 1.0 and 0.0 <= metrics["di_notebook_p"] <= 1.0
        else:
            assert "di_p" not in metrics
        assert ("watermark_accuracy" in metrics) == ("wm" in name)
        assert ("loss_difference" in metrics) == ("rad" in name)
        assert ("epsilon_spent" in metrics) == ("dp" in name)
    assert by_cell["dp"]["epsilon_spent"] <= config.dp_epsilon + 0.05
    assert by_cell["none"]["accuracy"] > 0.85
    verdicts = {(v["cell"], v["mechanism"]): v["verdict"] for v in doc["conflicts"]}
    assert ("dp+wm", "wm") in verdicts and ("adv+rad", "rad") in verdicts
    assert ("adv+wm", "adv") in verdicts and ("dp", "di") in verdicts and ("adv", "di") in verdicts
    text = (folder / "conflicts.md").read_text()
    assert text == markdown(doc) and "| dp+wm (watermark-outside-dp) |" in text
    assert json.loads((folder / "conflicts.json").read_text())["rows"] == doc["rows"]
    assert (folder / "conflicts.png").stat().st_size > 1000


def test_the_two_strongest_effects_point_the_talks_way(small_run):
    _, _, doc = small_run
    m = {row["cell"]: row["metrics"] for row in doc["rows"]}
    assert m["wm"]["watermark_accuracy"] >= 0.9
    assert m["dp+wm"]["watermark_accuracy"] < m["wm"]["watermark_accuracy"] - 0.2
    # the study's relaxation: the watermark trained outside DP-SGD comes back
    relaxed = m["dp+wm (watermark-outside-dp)"]["watermark_accuracy"]
    assert relaxed > m["dp+wm"]["watermark_accuracy"] + 0.2
    assert m["adv"]["adversarial_accuracy"] > m["none"]["adversarial_accuracy"] + 0.1
    verdicts = {(v["cell"], v["mechanism"]): v["verdict"] for v in doc["conflicts"]}
    assert verdicts[("dp+wm", "wm")] == "conflict"
    # Adversarial training lowers the radioactive signal where there is one; a mark trained
    # from scratch on digits leaves none (as on Fashion-MNIST, docs/benchmarks.md), and then
    # the verdict must say that the mark did not work alone, never "no conflict".
    if m["rad"]["radioactive_p"] < 0.01:
        assert m["adv+rad"]["loss_difference"] < m["rad"]["loss_difference"]
    else:
        assert verdicts[("adv+rad", "rad")] == verdicts[("dp+rad", "rad")] == "ineffective alone"


def test_an_interrupted_run_redoes_only_what_it_lacks(small_run, tmp_path):
    config, folder, doc = small_run
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    seed_folder = copy / "seed-0"
    lines = (seed_folder / CELLS).read_text().splitlines()
    (seed_folder / CELLS).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30])  # torn
    last = doc["rows"][-1]["cell"]
    card = seed_folder / "models" / "dp+wm__larger-clip_" / "card.json"
    written = card.stat().st_mtime_ns
    redone = []
    again = run_conflicts(config, [0], copy, on_row=redone.append)
    assert [row["cell"] for row in redone] == [last]
    assert card.stat().st_mtime_ns == written  # its model reloaded, not retrained
    assert redone[0]["metrics"] == doc["rows"][-1]["metrics"]
    assert again["rows"] == doc["rows"][:-1] + redone
    assert len(read_lines(seed_folder / CELLS)) == len(lines)
    with pytest.raises(ModelheistError, match="another configuration"):
        run_conflicts(replace(config, epochs=3), [0], copy)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.filterwarnings("ignore")
def test_a_process_pool_and_a_ray_cluster_give_the_same_table(tmp_path):
    config = ConflictsConfig.small(protections=("wm", "dp"), di_notebook=False, relaxed=False)
    pool = LocalExecutor(2)
    local = run_conflicts(config, [0], tmp_path / "local", pool)
    ray_cli = Path(sys.executable).with_name("ray")
    port = _free_port()
    threads = pool.threads()  # each job gets as many threads either way
    start = [str(ray_cli), "start", "--head", f"--port={port}", f"--num-cpus={2 * threads}"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, check=True, capture_output=True, timeout=180)
    try:
        remote = run_conflicts(
            config, [0], tmp_path / "ray", RayExecutor(f"127.0.0.1:{port}", threads)
        )
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120)
    assert [r["cell"] for r in remote["rows"]] == [r["cell"] for r in local["rows"]]
    for mine, theirs in zip(local["rows"], remote["rows"], strict=True):
        assert mine["metrics"] == pytest.approx(theirs["metrics"], abs=1e-6)


def test_an_unreachable_ray_cluster_is_one_line_and_writes_nothing(tmp_path):
    folder = tmp_path / "never"
    runner = executor_for("ray", 1, f"127.0.0.1:{_free_port()}")
    with pytest.raises(ModelheistError, match="cannot reach the Ray cluster"):
        run_conflicts(ConflictsConfig.small(protections=("wm",)), [0], folder, runner)
    assert not folder.exists()
    with pytest.raises(ModelheistError, match="HOST:PORT"):
        executor_for("ray", 1, "nowhere").connect()
    with pytest.raises(ModelheistError, match="local or ray"):
        executor_for("slurm")
    with pytest.raises(ModelheistError, match="--address goes with"):
        executor_for("local", 1, "127.0.0.1:1")


def test_the_command_refuses_bad_input_in_one_line(tmp_path, cli_in_process):
    for args, needle in [
        ("--protections wm,dropout", "unknown protection 'dropout'"),
        ("--combinations dp+wm+x", "unknown protection 'x'"),
        ("--seeds 0", "--seeds must be at least 1"),
        ("--executor slurm", "choose local or ray"),
        ("--executor ray --address nowhere", "HOST:PORT"),
        ("--jobs 0", "--jobs must be at least 1"),
        ("--trigger-clip -1", "trigger_clip must be > 0"),
        ("--adv-lr 0", "adv_lr must be > 0"),
    ]:
        folder = tmp_path / f"refused-{len(needle)}"
        proc = cli_in_process(
            *f"experiment conflicts --fast --dataset digits --out {folder} {args}".split()
        )
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not folder.exists()


def test_the_conflict_rule_by_hand():
    from modelheist.experiments.conflicts_report import conflicts, summarise

    def row(cell, seed, **metrics):
        return {"cell": cell, "seed": seed, "metrics": metrics}

    rows = [
        row("none", 0, di_p=1e-5), row("none", 1, di_p=1e-4),
        row("wm", 0, watermark_accuracy=0.99), row("wm", 1, watermark_accuracy=0.97),
        row("rad", 0, loss_difference=0.2, radioactive_p=1e-6),
        row("rad", 1, loss_difference=0.18, radioactive_p=1e-5),
        row("adv", 0, adversarial_accuracy=0.7), row("adv", 1, adversarial_accuracy=0.68),
        row("dp+wm", 0, watermark_accuracy=0.3, di_p=1e-6),
        row("dp+wm", 1, watermark_accuracy=0.35, di_p=0.02),  # one seed not found: conflict
        row("adv+rad", 0, loss_difference=0.17, adversarial_accuracy=0.6, di_p=1e-6),
        row("adv+rad", 1, loss_difference=0.16, adversarial_accuracy=0.61, di_p=1e-7),
    ]  # fmt: skip
    plan = [
        {"cell": "none", "mechanisms": []},
        {"cell": "dp+wm", "mechanisms": ["dp", "wm"]},
        {"cell": "adv+rad", "mechanisms": ["adv", "rad"]},
        {"cell": "wm", "mechanisms": ["wm"]},  # alone: never judged
    ]
    summary = summarise(rows)
    assert summary["wm"]["watermark_accuracy"]["mean"] == pytest.approx(0.98)
    assert summary["wm"]["watermark_accuracy"]["seeds"] == 2
    got = {(v["cell"], v["mechanism"]): v["verdict"] for v in conflicts(plan, summary, 0.05, 0.01)}
    assert got == {
        ("dp+wm", "wm"): "conflict",  # 0.98 -> 0.325
        ("dp+wm", "di"): "conflict",  # found alone, not in one seed of the combination
        ("adv+rad", "adv"): "conflict",  # 0.69 -> 0.605
        ("adv+rad", "rad"): "no conflict",  # 0.19 -> 0.165: within the tolerance
        ("adv+rad", "di"): "no conflict",
    }
    rows[4]["metrics"]["radioactive_p"] = 0.2  # the mark not found alone in one seed
    got = {
        (v["cell"], v["mechanism"]): v["verdict"]
        for v in conflicts(plan, summarise(rows), 0.05, 0.01)
    }
    assert got[("adv+rad", "rad")] == "ineffective alone"
