"""Dataset inference (Maini et al., ICLR '21): the Blind Walk embedding, the owner's regressor,
the judge's Welch test, the secret's file format and the commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.defenses.registry import parse_output
from modelheist.errors import ModelheistError
from modelheist.models import save_model
from modelheist.ownership.dataset_inference import (
    BlindWalk,
    DatasetInferenceScheme,
    DatasetInferenceSecret,
)

#: digits are 8x8: the reference's CIFAR noise scales would leave most walks censored
WALK = BlindWalk(directions=4, steps=30, scale=8.0, seed=0)


def labels_oracle(model):
    return LocalOracle.for_new_client(PredictionService(model, parse_output("labels")), None)


@pytest.fixture(scope="module")
def secret(di_secret):
    assert di_secret.embedding == WALK
    return di_secret


def test_the_blind_walk_counts_its_queries_and_stops_at_the_boundary(digits, digits_cnn):
    oracle = labels_oracle(digits_cnn)
    x, y = digits.test.x[:20], digits.test.y[:20]
    distances, censored = WALK.embed(oracle, x, y)
    assert distances.shape == (20, 12) and (distances >= 0).all()
    assert 0.0 <= censored < 0.5
    assert 20 * 12 <= oracle.queries_used <= 20 * 12 * WALK.steps
    again, _ = WALK.embed(labels_oracle(digits_cnn), x, y)
    assert np.array_equal(distances, again)  # seeded


def test_the_owner_model_is_singled_out_and_an_independent_one_is_not(
    di_owner, di_independent, secret
):
    scheme = DatasetInferenceScheme(secret)
    found = scheme.verify(labels_oracle(di_owner), significance=0.01)
    assert found.decision == "stolen" and found.statistic > 0
    assert found.details["m"] == 100 and found.queries > 0
    clean = scheme.verify(labels_oracle(di_independent), significance=0.01)
    assert clean.decision == "not stolen"


def test_too_few_revealed_samples_cannot_verify(di_owner, secret):
    for m in (1, 101):
        evidence = DatasetInferenceScheme(secret, m=m).verify(labels_oracle(di_owner))
        assert evidence.decision == "cannot verify" and "revealed samples" in evidence.reason
        assert evidence.queries == 0


def test_a_smaller_m_reports_the_papers_aggregate_beside_the_decision(di_owner, secret):
    evidence = DatasetInferenceScheme(secret, m=20, draws=10).verify(labels_oracle(di_owner))
    assert evidence.details["m"] == 20 and 0.0 <= evidence.details["paper_aggregate"] <= 1.0


def test_preparing_needs_enough_samples(digits, digits_cnn):
    with pytest.raises(ModelheistError, match="needs 700 private"):
        DatasetInferenceSecret.prepare(
            labels_oracle(digits_cnn),
            (digits.train.x, digits.train.y),
            (digits.test.x, digits.test.y),
            revealed=200,
            embedding=WALK,
            regressor_samples=500,
        )
    with pytest.raises(ModelheistError, match="at least 2 revealed"):
        DatasetInferenceSecret.prepare(
            labels_oracle(digits_cnn),
            (digits.train.x, digits.train.y),
            (digits.test.x, digits.test.y),
            revealed=1,
            embedding=WALK,
        )
    with pytest.raises(ModelheistError, match="needs >= 1 direction"):
        BlindWalk(directions=0)


def test_a_secret_round_trips_and_a_damaged_one_is_refused(tmp_path, secret):
    folder = secret.save(tmp_path / "di")
    again = DatasetInferenceSecret.load(folder)
    assert again.embedding == secret.embedding and np.array_equal(again.private_x, secret.private_x)
    embedded = np.random.default_rng(0).random((5, 12))
    assert np.allclose(again.score(embedded), secret.score(embedded))
    card = json.loads((folder / "dataset-inference.json").read_text())
    card["embedding"]["directions"] = 7  # the regressor no longer fits
    (folder / "dataset-inference.json").write_text(json.dumps(card))
    with pytest.raises(ModelheistError, match="incomplete"):
        DatasetInferenceSecret.load(folder)
    with pytest.raises(ModelheistError, match="not a dataset-inference folder"):
        DatasetInferenceSecret.load(tmp_path)


def test_fingerprint_then_verify_from_the_command_line(tmp_path, digits_cnn, cli_in_process):
    model = save_model(digits_cnn, tmp_path / "model")
    secret_dir = tmp_path / "secret"
    done = cli_in_process(
        "fingerprint", "dataset-inference", "--model", model, "--secret-out", secret_dir,
        "--revealed", "40", "--regressor-samples", "60", "--directions", "2", "--steps", "20",
        "--scale", "8",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = tmp_path / "verdict.json"
    result = cli_in_process(
        "verify", "dataset-inference", "--secret", secret_dir, "--suspect", model,
        "--json", verdict,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr  # a decision, either way
    evidence = json.loads(verdict.read_text())
    assert evidence["scheme"] == "dataset-inference" and evidence["details"]["m"] == 40
    starved = cli_in_process(
        "verify", "dataset-inference", "--secret", secret_dir, "--suspect", model,
        "--m", "1",
    )  # fmt: skip
    assert starved.returncode == 2 and "cannot verify" in starved.stdout


def test_mingd_reads_weights_and_without_them_cannot_verify(digits, di_owner, di_independent):
    from modelheist.oracle import WhiteBoxOracle
    from modelheist.ownership.dataset_inference import MinGD

    def white(model):
        return WhiteBoxOracle(labels_oracle(model), model.module)

    embedding = MinGD(iterations=150, step_linf=0.005, step_l2=0.05, step_l1=2.0, top_k=16)
    secret = DatasetInferenceSecret.prepare(
        white(di_owner),
        (digits.train.x[:200], digits.train.y[:200]),
        (digits.test.x, digits.test.y),
        revealed=100,
        embedding=embedding,
        regressor_samples=100,
    )
    distances, failed = embedding.embed(white(di_owner), digits.test.x[:10], digits.test.y[:10])
    assert distances.shape == (10, 30) and failed < 0.5
    assert (np.diff(distances.reshape(10, 3, 10), axis=2) >= 0).all()  # sorted per norm
    scheme = DatasetInferenceScheme(secret)
    assert scheme.verify(white(di_owner), significance=0.01).decision == "stolen"
    assert scheme.verify(white(di_independent), significance=0.01).decision == "not stolen"
    blind = scheme.verify(labels_oracle(di_owner))
    assert blind.decision == "cannot verify" and "weights" in blind.reason
    with pytest.raises(ModelheistError, match="weights"):
        DatasetInferenceSecret.prepare(
            labels_oracle(di_owner),
            (digits.train.x[:200], digits.train.y[:200]),
            (digits.test.x, digits.test.y),
            revealed=100,
            embedding=embedding,
            regressor_samples=100,
        )
