"""Scenarios and the runner: a grid into a results store, resumed, never silently mixed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelheist.errors import ModelheistError
from modelheist.experiments.results import ResultsStore
from modelheist.experiments.runner import ScenarioRunner
from modelheist.experiments.scenario import Scenario

TINY = """
name = "tiny"
seeds = [0, 1]
budgets = [60, 120]
outputs = ["probs", "labels"]

[victim]
dataset = "digits"
arch = "mlp"
epochs = 3

[attack]
name = "knockoff"
params = { epochs = 2, min_steps = 10 }
"""


def write(tmp_path, text, name="scenario.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def runner(tmp_path):
    return ScenarioRunner(ResultsStore(tmp_path / "runs.jsonl"), tmp_path / "victims")


def test_a_grid_runs_into_the_store_and_resumes(tmp_path, runner):
    scenario = Scenario.load(write(tmp_path, TINY))
    rows = runner.run(scenario)
    assert len(rows) == 2 * 2 * 2
    for row in rows:
        assert {"command", "commit", "date", "machine", "versions", "seed"} <= set(row)
        assert row["queries_counted"] == row["budget"]  # counted by the API, not copied
        metrics = row["metrics"]
        assert 0 <= metrics["fidelity_validation"] <= 1 and 0 <= metrics["fidelity_test"] <= 1
        assert metrics["victim_accuracy"] > 0.6  # three epochs of an MLP on 8x8 digits
    assert {row["seed"] for row in rows} == {0, 1}
    victims = sorted(p.name for p in (tmp_path / "victims").iterdir())
    assert len(victims) == 2  # one victim per seed, shared by the grid
    weights = [(tmp_path / "victims" / v / "weights.safetensors").read_bytes() for v in victims]
    assert weights[0] != weights[1]  # the seed reaches the victim (split and training)
    assert runner.run(scenario) == []  # everything is stored: nothing reruns
    more = Scenario.load(write(tmp_path, TINY.replace("seeds = [0, 1]", "seeds = [0, 1, 2]")))
    assert {row["seed"] for row in runner.run(more)} == {2}
    assert len(runner.store.rows()) == 12


def test_a_changed_scenario_under_the_same_name_is_refused(tmp_path, runner):
    runner.run(Scenario.load(write(tmp_path, TINY)), seeds=[0])
    changed = Scenario.load(write(tmp_path, TINY.replace("epochs = 2", "epochs = 4")))
    with pytest.raises(ModelheistError, match=r"params\.epochs: 2 -> 4"):
        runner.run(changed)
    deeper = Scenario.load(write(tmp_path, TINY.replace('arch = "mlp"', 'arch = "cnn"')))
    with pytest.raises(ModelheistError, match=r"victim\.arch: 'mlp' -> 'cnn'"):
        runner.run(deeper)


def test_a_changed_attack_default_is_refused(tmp_path, runner, monkeypatch):
    from modelheist.attacks.knockoff import KnockoffNets

    scenario = Scenario.load(write(tmp_path, TINY))
    rows = runner.run(scenario, seeds=[0])
    assert rows[0]["attack_params"]["temperature"] == KnockoffNets.temperature
    monkeypatch.setattr(KnockoffNets, "__init__", _with_default(KnockoffNets, temperature=2.5))
    with pytest.raises(ModelheistError, match=r"attack default temperature: 4\.0 -> 2\.5"):
        runner.run(scenario)


def _with_default(cls, **defaults):
    """``cls.__init__`` with other defaults, as if a later release had changed them."""
    original = cls.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **{**defaults, **kwargs})

    return init


def test_variants_are_runs_of_their_own(tmp_path, runner):
    text = TINY + "\n[attack.variants]\ndefault = {}\nplain = { temperature = 1.0 }\n"
    rows = runner.run(Scenario.load(write(tmp_path, text)), seeds=[0])
    assert {row["variant"] for row in rows} == {"default", "plain"} and len(rows) == 8
    assert {row["config"]["params"].get("temperature") for row in rows} == {None, 1.0}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (TINY.replace("[victim]", "[victim]\ncolour = 1"), "victim.colour: Extra inputs"),
        (TINY.replace("budgets = [60, 120]", "budgets = [0]"), "budgets"),
        (TINY + "\n[[", "not a TOML scenario"),
        (TINY.replace('name = "tiny"', 'name = "a b"'), "name"),
        (
            TINY + "\n[attack.variants]\nt-0.5 = { temperature = 0.5 }\n",
            r"variant 't-0': '5' is a table.*quote the name: \"t-0\.5\"",
        ),
    ],
)
def test_bad_scenario_files_are_one_line(tmp_path, text, needle):
    with pytest.raises(ModelheistError, match=needle):
        Scenario.load(write(tmp_path, text))


def test_bad_attacks_are_refused_before_any_run(tmp_path, runner):
    unknown = Scenario.load(write(tmp_path, TINY.replace('name = "knockoff"', 'name = "nope"')))
    with pytest.raises(ModelheistError, match="unknown attack 'nope'"):
        runner.run(unknown)
    wrong = Scenario.load(write(tmp_path, TINY.replace("min_steps = 10", "min_stepz = 10")))
    with pytest.raises(ModelheistError, match="min_stepz"):
        runner.run(wrong)
    assert not runner.store.path.exists()


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_scenario_loads_and_its_attack_takes_its_parameters(path, tmp_path):
    """The scenario files behind the docs' tables parse, and each variant's parameters build
    its attack (peers of benchmarks/peers.py are checked by their own runs)."""
    from modelheist.attacks.registry import ATTACKS

    scenario = Scenario.load(path)
    if scenario.attack.name not in ATTACKS:
        pytest.skip(f"{scenario.attack.name} is a peer of benchmarks/peers.py")
    runner = ScenarioRunner(ResultsStore(tmp_path / "store.jsonl"), tmp_path / "victims")
    runner.check(scenario)  # builds every variant's attack; refuses unknown parameters


def test_a_variant_naming_its_own_transfer_set_must_match_the_scenarios(tmp_path, runner):
    text = """
name = "thieves-source"
budgets = [10]
[victim]
dataset = "digits"
arch = "mlp"
[attack]
name = "thieves"
[attack.variants]
other = { queries = "natural:fortunes" }
"""
    with pytest.raises(ModelheistError, match='transfer_sets = \\["fortunes"\\]'):
        runner.check(Scenario.load(write(tmp_path, text)))


def test_experiment_run_from_the_command_line(tmp_path):
    scenario = write(tmp_path, TINY.replace("budgets = [60, 120]", "budgets = [60]"))
    store = tmp_path / "cli.jsonl"
    command = [sys.executable, "-m", "modelheist.cli", "experiment", "run", str(scenario)]
    proc = subprocess.run(
        [*command, "--store", str(store), "--seeds", "1", "--victims", str(tmp_path / "v")],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in store.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["command"].startswith("modelheist experiment run")
    assert "fidelity" in proc.stdout
    bad = subprocess.run(
        [*command[:-1], str(tmp_path / "none.toml"), "--store", str(store)],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
    )
    assert bad.returncode == 2 and "no scenario file" in bad.stderr


def test_named_transfer_sets(digits):
    from modelheist.experiments.transfers import transfer_set

    own = transfer_set("digits", digits, 0)
    assert own.in_distribution.all() and (own.labels == digits.pool.y).all()
    other = transfer_set("mnist5k", digits, 0)
    assert other.x.shape[1:] == (1, 8, 8) and not other.in_distribution.any()
    assert len(other.labels) == len(other.x) == 5000
    mixed = transfer_set("mixed:in=100,noise=20", digits, 0)
    # against a digits victim, the other source is mnist5k (digits is the victim's own data)
    assert mixed.in_distribution.sum() == 100 and len(mixed.x) == 100 + 5000 + 20
    assert len(np.unique(mixed.labels)) == 10 + 10 + 1  # each source keeps its classes
    for spec in ("mixed:in=0", "mixed:colour=3", "mixed:in=x"):
        with pytest.raises(ModelheistError, match="transfer set"):
            transfer_set(spec, digits, 0)


def test_the_stores_own_rows_do_not_mark_the_commit_dirty_but_code_does(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    store = ResultsStore(tmp_path / "results" / "bench.jsonl", command="bench")
    store.append({"metrics": {"a": 1}}, seed=0)
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")

    store.append({"metrics": {"a": 2}}, seed=1)  # from here on the store itself is changed
    second = store.append({"metrics": {"a": 2}}, seed=1)
    assert not second["commit"].endswith("+dirty")
    assert second["changed_files"] == ["results/bench.jsonl"]

    (tmp_path / "code.py").write_text("x = 2\n")
    third = store.append({"metrics": {"a": 3}}, seed=2)
    assert third["commit"].endswith("+dirty")
    assert third["changed_files"] == ["code.py", "results/bench.jsonl"]


def test_a_run_folder_names_the_setting_an_older_configuration_lacks(tmp_path):
    from modelheist.experiments.run_folder import check_config

    check_config(tmp_path, {"seed": 0})
    check_config(tmp_path, {"seed": 0})  # the same configuration resumes
    with pytest.raises(ModelheistError, match=r"\(trigger_clip differ\)"):
        check_config(tmp_path, {"seed": 0, "trigger_clip": None})
