"""The ownership matrix (issue 12, item 5): a small run on digits, its resumption, its report
and its command."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from modelheist.cli import app
from modelheist.errors import ModelheistError
from modelheist.experiments.executors import LocalExecutor
from modelheist.experiments.matrix_report import matrix_markdown, write_matrix_report
from modelheist.experiments.ownership_matrix import (
    CELLS,
    ENSEMBLE,
    JUDGES,
    SCHEME_COLUMNS,
    SUSPECTS,
    MatrixConfig,
    MatrixRun,
    models_apart,
    read_lines,
    suspects_of,
)


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory):
    """The small matrix on digits, run once into a folder (about a minute)."""
    folder = tmp_path_factory.mktemp("matrix") / "run"
    config = MatrixConfig.small()
    return config, folder, MatrixRun(config, folder).run()


def test_every_suspect_meets_every_scheme(matrix_run):
    config, _, document = matrix_run
    names = [s.name for s in suspects_of(config)]
    assert [s["suspect"] for s in document["suspects"]] == names
    cells = {(c["suspect"], c["scheme"]) for c in document["cells"]}
    assert cells == {(name, scheme) for name in names for scheme in SCHEME_COLUMNS}
    kinds = [s["kind"] for s in document["suspects"]]
    assert kinds.count("independent") == config.independents
    assert set(document["summary"]) == set(SCHEME_COLUMNS)
    for summary in document["summary"].values():
        assert summary["cannot_verify"] == 0  # every scheme decided on every suspect
        assert 0.0 <= summary["roc_auc"] <= 1.0


def test_the_matrix_finds_the_marked_model_and_spares_independents(matrix_run):
    _, _, document = matrix_run
    cell = {(c["suspect"], c["scheme"]): c for c in document["cells"]}
    assert cell[("owner", "backdoor-watermark")]["decision"] == "stolen"
    assert cell[("fine-tuned", "backdoor-watermark")]["decision"] == "stolen"
    # DAWN marks the API's answers, not the model: the model itself matches no client's set.
    assert cell[("owner", "dawn")]["decision"] == "not stolen"
    # the extraction suspects spent their budget through the API, counted by its oracle
    spent = {s["suspect"]: s.get("extraction_queries") for s in document["suspects"]}
    assert spent["knockoff-probs"] == spent["jbda"] == MatrixConfig.small().budget
    independent = [c for c in document["cells"] if c["kind"] == "independent"]
    accused = [c for c in independent if c["decision"] == "stolen"]
    assert len(accused) <= 1, accused  # 24 tests at 0.01: one would be bad luck, two a bug
    assert all(c["decision"] != "cannot verify" for c in independent)


def test_an_interrupted_run_resumes_with_the_cells_it_lacks(matrix_run, tmp_path):
    config, folder, document = matrix_run
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    lines = (copy / CELLS).read_text().splitlines()
    (copy / CELLS).write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:20])  # torn write
    assert len(read_lines(copy / CELLS)) == len(lines) - 2
    redone = []
    again = MatrixRun(config, copy).run(on_cell=redone.append)
    assert [(c["suspect"], c["scheme"]) for c in redone] == [
        (c["suspect"], c["scheme"]) for c in document["cells"][-2:]
    ]
    assert [c["p_value"] for c in redone] == pytest.approx(
        [c["p_value"] for c in document["cells"][-2:]]
    )
    assert len(again["cells"]) == len(document["cells"])
    finished = []
    MatrixRun(config, copy).run(on_cell=finished.append)
    assert finished == []


def test_worker_processes_remake_the_models_made_apart_that_a_run_lacks(matrix_run, tmp_path):
    config, folder, document = matrix_run
    assert models_apart(config, folder) == []  # the run kept every one of them
    assert (folder / ENSEMBLE / "surrogate-0" / "card.json").is_file()
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    remade_folders = ["models/cnn-pool-0", "models/fine-tuned", f"{ENSEMBLE}/surrogate-0"]
    remade_folders += [f"{ENSEMBLE}/reference-1", f"{JUDGES}/judge-0"]
    trained = {name: _training(copy / name) for name in remade_folders}
    # the cards of trained networks keep their seed (a Knockoff or removal card does not)
    networks = ("models/cnn-pool-0", f"{ENSEMBLE}/reference-1", f"{JUDGES}/judge-0")
    assert all("seed" in trained[name] for name in networks)
    for gone in ("models/cnn-pool-0", "models/fine-tuned", ENSEMBLE, JUDGES, "secrets/cae"):
        shutil.rmtree(copy / gone)
    (copy / "secrets" / "cae-references.json").unlink()
    remade = {"cnn-pool-0", "fine-tuned"}
    for name, keep in (
        (CELLS, lambda c: c["suspect"] not in remade and c["scheme"] != "cae"),
        (SUSPECTS, lambda s: s["suspect"] not in remade),
    ):
        kept = [line for line in read_lines(copy / name) if keep(line)]
        (copy / name).write_text("".join(json.dumps(line) + "\n" for line in kept))
    jobs = models_apart(config, copy)
    assert sorted((j.role, j.name or j.index) for j in jobs) == sorted(
        [("suspect", "cnn-pool-0"), ("suspect", "fine-tuned")]
        + [(role, i) for role in ("surrogates", "references") for i in range(config.cae_members)]
        + [("judges", i) for i in range(config.references)]
    )
    redone = []
    again = MatrixRun(config, copy, executor=LocalExecutor(2)).run(on_cell=redone.append)
    assert models_apart(config, copy) == []
    assert {(c["suspect"], c["scheme"]) for c in redone} == {
        (c["suspect"], c["scheme"])
        for c in document["cells"]
        if c["suspect"] in remade or c["scheme"] == "cae"
    }
    # the same seeds: the remade models are trained as the first run's were, as far as their
    # cards say (a worker's thread count changes rounding, not the model)
    assert {name: _training(copy / name) for name in remade_folders} == trained
    before = {s["suspect"]: s for s in document["suspects"]}
    for row in again["suspects"]:
        if row["suspect"] in remade:
            assert row["seconds_to_make"] > 0
            assert row["test_accuracy"] == pytest.approx(
                before[row["suspect"]]["test_accuracy"], abs=0.03
            )
    first = {(c["suspect"], c["scheme"]): c["decision"] for c in document["cells"]}
    for c in redone:
        if c["scheme"] in ("backdoor-watermark", "dawn", "radioactive"):
            assert c["decision"] == first[(c["suspect"], c["scheme"])], c
        assert c["decision"] != "cannot verify"


def _training(folder):
    """How the model in ``folder`` was trained, seed included, from its card."""
    return json.loads((folder / "card.json").read_text())["training"]


def test_a_folder_refuses_another_configuration(matrix_run):
    config, folder, _ = matrix_run
    with pytest.raises(ModelheistError, match="another configuration"):
        MatrixRun(replace(config, budget=config.budget + 1), folder).run()


def test_bad_configurations_are_refused():
    with pytest.raises(ModelheistError, match="significance"):
        MatrixConfig(significance=1.5)
    with pytest.raises(ModelheistError, match="3 reference models"):
        MatrixConfig(references=2)
    with pytest.raises(ModelheistError, match="must differ"):
        MatrixConfig(dataset="mnist5k")
    assert MatrixConfig.small("mnist5k").ood_dataset == "digits"
    with pytest.raises(ModelheistError, match="min_size"):
        MatrixConfig(cae_min_size=-1)


def test_the_fixed_fingerprint_size_is_recorded_only_when_set(matrix_run):
    """Run folders and rows made before ``cae_min_size`` existed (the paper's rule, 0) still
    match; any other size is another configuration."""
    config, folder, _ = matrix_run
    assert "cae_min_size" not in MatrixConfig().as_json()
    assert MatrixConfig(cae_min_size=50).as_json()["cae_min_size"] == 50
    with pytest.raises(ModelheistError, match="another configuration"):
        MatrixRun(replace(config, cae_min_size=10), folder).run()


def test_the_report_shows_every_cell(matrix_run, tmp_path):
    _, _, document = matrix_run
    paths = write_matrix_report(document, tmp_path / "report")
    text = paths["markdown"].read_text()
    for suspect in document["suspects"]:
        assert f"| {suspect['suspect']} |" in text
    assert text.count("**stolen**") == sum(c["decision"] == "stolen" for c in document["cells"])
    assert json.loads(paths["json"].read_text())["summary"] == document["summary"]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matrix_markdown(document) == text


def test_the_command_resumes_a_run_and_writes_its_report(matrix_run):
    _, folder, document = matrix_run
    result = CliRunner().invoke(
        app, ["experiment", "ownership", "--dataset", "digits", "--fast", "--out", str(folder)]
    )
    assert result.exit_code == 0, result.output
    assert "backdoor-watermark" in result.output and "matrix.md" in result.output
    assert (folder / "matrix.png").is_file()
    assert len(read_lines(folder / CELLS)) == len(document["cells"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--significance", "2"], "significance"),
        (["--dataset", "no-such-set"], "no-such-set"),
        (["--independents", "1"], "independent"),
        (["--seed", "-1"], "seed"),
        (["--jobs", "0"], "jobs"),
    ],
)
def test_the_command_refuses_bad_input_in_one_line(args, message, tmp_path):
    result = CliRunner().invoke(
        app, ["experiment", "ownership", "--fast", "--out", str(tmp_path / "x"), *args]
    )
    assert result.exit_code == 2  # a one-line error, not an exception
    assert message in result.output
