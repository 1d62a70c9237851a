"""Radioactive data (Sablayrolles et al., ICML '20): marking, the training hook, the white-box
and black-box tests, the secret's file format and the commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import kstest

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.errors import ModelheistError
from modelheist.models.anatomy import split_head
from modelheist.oracle import WhiteBoxOracle
from modelheist.ownership.radioactive import (
    RadioactiveData,
    RadioactiveMark,
    RadioactiveMarking,
    RadioactiveScheme,
    cosine_log_sf,
    fisher_log_p,
    parse_marking,
)


def suspect(model, output="probs", white_box=False):
    from modelheist.defenses.registry import parse_output

    oracle = LocalOracle.for_new_client(PredictionService(model, parse_output(output)), None)
    return WhiteBoxOracle(oracle, model.module) if white_box else oracle


@pytest.fixture(scope="module")
def independent_cnn(pool_cnn):
    """Trained without the mark, on the attacker's pool of the same distribution."""
    return pool_cnn


def test_marking_stays_inside_the_bound_and_withholds_the_controls(digits, radioactive_mark):
    mark = radioactive_mark
    assert len(mark.indices) == round(0.5 * len(digits.train)) and len(mark.control_indices) == 100
    assert not set(mark.indices) & set(mark.control_indices)
    assert np.array_equal(digits.train.x[mark.indices], mark.originals)
    change = np.abs(mark.marked - mark.originals)
    assert change.max() <= mark.epsilon + 1e-6 and change.mean() > 0.1 * mark.epsilon
    assert mark.marked.min() >= 0.0 and mark.marked.max() <= 1.0
    assert np.allclose(np.linalg.norm(mark.carriers, axis=1), 1.0)
    assert mark.psnr() > 25.0


def test_the_marked_training_set_replaces_originals_and_drops_controls(digits, radioactive_mark):
    hook = RadioactiveData(radioactive_mark)
    x, y = hook.replace_data(digits.train.x, digits.train.y)
    assert len(x) == len(digits.train) - 100
    assert not any(np.array_equal(x[i], radioactive_mark.control_marked[0]) for i in range(len(x)))
    with pytest.raises(ModelheistError, match="not the one the radioactive mark was made for"):
        hook.replace_data(digits.pool.x[: len(digits.train)], digits.train.y)


def test_the_white_box_test_finds_rows_aligned_with_the_carriers_and_no_more(
    planted_cnn, independent_cnn, digits_cnn, radioactive_mark
):
    scheme = RadioactiveScheme(radioactive_mark)
    found = scheme.verify(suspect(planted_cnn, white_box=True), significance=1e-3)
    assert found.decision == "stolen" and found.queries == 0
    assert found.details["mode"] == "white-box" and found.statistic > 0.3
    assert found.details["log10_p"] < -10
    for model in (independent_cnn, digits_cnn):  # never trained on the marked data
        clean = scheme.verify(suspect(model, white_box=True), significance=1e-3)
        assert clean.decision == "not stolen" and clean.p_value > 1e-3


def test_the_white_box_null_is_uniform_over_fresh_carriers(independent_cnn, radioactive_mark):
    """The p-value of a model that never saw the mark is uniform over the draw of the carriers
    (the only randomness the exact null relies on)."""
    from dataclasses import replace

    rng = np.random.default_rng(0)
    p_values = []
    for _ in range(200):
        carriers = rng.standard_normal(radioactive_mark.carriers.shape)
        carriers /= np.linalg.norm(carriers, axis=1, keepdims=True)
        scheme = RadioactiveScheme(replace(radioactive_mark, carriers=carriers))
        p_values.append(scheme._white_box(independent_cnn.module).p_value)
    assert kstest(p_values, "uniform").pvalue > 0.01


def test_the_cosine_tail_is_exact():
    rng = np.random.default_rng(1)
    d = 16
    draws = rng.standard_normal((20000, d))
    cosines = draws[:, 0] / np.linalg.norm(draws, axis=1)
    for c in (-0.3, 0.0, 0.25, 0.5):
        assert np.exp(cosine_log_sf(c, d)) == pytest.approx((cosines >= c).mean(), abs=0.01)
    assert np.isfinite(cosine_log_sf(0.999, 128)) and cosine_log_sf(0.999, 128) < -300
    # beyond float range (SciPy's tail underflows): the asymptotic tail stays finite, monotone
    deep = [cosine_log_sf(c, 512) for c in (0.99, 0.995, 0.999)]
    assert all(np.isfinite(deep)) and deep[0] > deep[1] > deep[2] and deep[0] < -900
    assert np.isfinite(fisher_log_p(np.array(deep * 4))) and fisher_log_p(np.array(deep)) < -1000


def test_the_black_box_test_compares_published_with_withheld_images(
    radioactive_cnn, independent_cnn, radioactive_mark
):
    scheme = RadioactiveScheme(radioactive_mark, mode="black-box", images=300)
    oracle = suspect(radioactive_cnn)
    found = scheme.verify(oracle, significance=0.01)
    assert found.decision in ("stolen", "not stolen") and found.details["mode"] == "black-box"
    assert found.queries == oracle.queries_used == 2 * (300 + 100)
    assert found.details["published_images"] == 300 and found.details["control_images"] == 100
    assert np.isfinite(found.statistic) and np.isfinite(found.details["control_loss_difference"])
    assert scheme.verify(suspect(independent_cnn), significance=0.01).decision == "not stolen"
    labels_only = scheme.verify(suspect(radioactive_cnn, "labels"))
    assert labels_only.decision == "cannot verify" and "probabilities" in labels_only.reason


def test_what_the_white_box_test_cannot_read_is_cannot_verify(radioactive_mark, digits, marked_cnn):
    from modelheist.models.architectures import build_network
    from modelheist.models.classifier import TorchClassifier

    scheme = RadioactiveScheme(radioactive_mark, mode="white-box")
    no_weights = scheme.verify(suspect(marked_cnn))
    assert no_weights.decision == "cannot verify" and "weights" in no_weights.reason
    ensemble = build_network("cnn", digits.input_shape, 10, [0.5], [0.3], members=2)
    model = TorchClassifier(ensemble, marked_cnn.card)
    evidence = scheme.verify(suspect(model, white_box=True))
    assert evidence.decision == "cannot verify" and "linear" in evidence.reason
    with pytest.raises(ModelheistError, match="linear"):
        split_head(ensemble)
    other = RadioactiveScheme(radioactive_mark, commitment="0" * 64)
    assert other.verify(suspect(marked_cnn, white_box=True)).decision == "cannot verify"


def test_a_mark_round_trips_and_a_damaged_one_is_refused(tmp_path, radioactive_mark):
    folder = radioactive_mark.save(tmp_path / "mark")
    again = RadioactiveMark.load(folder)
    assert again.digest == radioactive_mark.digest and again.seed == radioactive_mark.seed
    card = json.loads((folder / "mark.json").read_text())
    card["sha256"] = "0" * 64
    (folder / "mark.json").write_text(json.dumps(card))
    with pytest.raises(ModelheistError, match="digest"):
        RadioactiveMark.load(folder)
    with pytest.raises(ModelheistError, match="not a radioactive-mark folder"):
        RadioactiveMark.load(tmp_path)
    with pytest.raises(ModelheistError, match="already exists"):
        radioactive_mark.save(folder)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("radioactive:fraction=0", "fraction"),
        ("radioactive:fraction=1.5", "fraction"),
        ("radioactive:epsilon=2", "epsilon"),
        ("radioactive:size=3", "bad argument"),
        ("radioactive:steps=many", "must be a number"),
        ("glow", "unknown data mark"),
    ],
)
def test_bad_marking_parameters_are_one_line_errors(spec, message):
    with pytest.raises(ModelheistError, match=message):
        parse_marking(spec)


def test_a_fraction_too_large_to_leave_controls_is_refused(digits, digits_cnn):
    with pytest.raises(ModelheistError, match="needs more than"):
        RadioactiveMarking(fraction=1.0, seed=0).make(digits_cnn, digits.train.x, digits.train.y)


def test_train_with_a_mark_then_verify_it_from_the_command_line(tmp_path, cli_in_process):
    model, secret = tmp_path / "model", tmp_path / "mark"
    done = cli_in_process(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "cnn",
        "--epochs",
        "12",
        "--out",
        model,
        "--mark",
        "radioactive:fraction=0.5,control=100,steps=40,seed=3",
        "--secret-out",
        secret,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "radioactive mark of" in done.stdout
    card = json.loads((model / "card.json").read_text())
    assert card["protections"][0]["name"] == "radioactive-data"
    verdict = tmp_path / "verdict.json"
    result = cli_in_process(
        "verify",
        "radioactive",
        "--mark",
        secret,
        "--owner-model",
        model,
        "--suspect",
        model,
        "--significance",
        "0.001",
        "--json",
        verdict,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    evidence = json.loads(verdict.read_text())
    assert evidence["decision"] in ("stolen", "not stolen") and evidence["queries"] == 0
    assert evidence["details"]["mode"] == "white-box" and len(evidence["details"]["cosines"]) == 10
    refused = cli_in_process(
        "train", "--dataset", "digits", "--arch", "logreg", "--out", tmp_path / "x",
        "--mark", "radioactive", "--secret-out", tmp_path / "y",
    )  # fmt: skip
    assert refused.returncode != 0 and "network" in refused.stdout + refused.stderr
    both = cli_in_process(
        "verify", "radioactive", "--mark", secret, "--suspect", model, "--mode", "grey",
    )  # fmt: skip
    assert both.returncode != 0 and "--mode" in both.stdout + both.stderr
