"""Conferrable adversarial examples (Lukas et al., ICLR '21): generation against surrogates and
references, retention, the reference-calibrated test, the file format and the commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.defenses.registry import parse_output
from modelheist.errors import ModelheistError
from modelheist.models import save_model
from modelheist.ownership.cae import (
    CAEGeneration,
    CAEScheme,
    Fingerprint,
    conferrability,
    reference_retentions,
    retention,
    select_conferrable,
)


def labels_of(model):
    return LocalOracle.for_new_client(PredictionService(model, parse_output("labels")), None)


def test_the_fingerprint_transfers_to_surrogates_and_not_to_independent_models(cae_setup):
    fingerprint, judges, surrogates, independents = cae_setup
    assert 1 <= len(fingerprint) <= 60
    kept_by = [retention(fingerprint, labels_of(m))[0] / len(fingerprint) for m in surrogates]
    kept_by_independent = [
        retention(fingerprint, labels_of(m))[0] / len(fingerprint) for m in independents
    ]
    assert min(kept_by) > max(kept_by_independent)  # held-out models: ROC AUC 1 here
    null = tuple(reference_retentions(fingerprint, [labels_of(m) for m in judges]))
    scheme = CAEScheme(fingerprint, null)
    found = scheme.verify(labels_of(surrogates[0]), 0.01)
    assert found.decision == "stolen" and found.details["references"] == len(judges)
    assert found.details["rank_p_value"] == 1 / (len(judges) + 1)  # above every reference
    assert scheme.verify(labels_of(independents[0]), 0.01).decision == "not stolen"


def test_without_reference_models_cae_cannot_verify(cae_setup):
    fingerprint, _, surrogates, _ = cae_setup
    for too_few in ((), (0.1, 0.2)):
        evidence = CAEScheme(fingerprint, too_few).verify(labels_of(surrogates[0]))
        assert evidence.decision == "cannot verify" and "at least 3" in evidence.reason
        assert evidence.queries == 0
    assert reference_retentions(fingerprint, []) == []


def test_conferrability_is_a_product_of_transfer_and_non_transfer(cae_setup, digits):
    fingerprint, judges, surrogates, _ = cae_setup
    scores = conferrability(
        [m.module for m in surrogates], [m.module for m in judges], digits.test.x[:50]
    )
    assert ((scores >= 0.0) & (scores <= 1.0)).all()
    # clean images: surrogates and references agree, so little is conferrable
    assert scores.mean() < fingerprint.conferrability.mean()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"steps": 0}, "steps"),
        ({"dropout": 1.0}, "dropout"),
        ({"threshold": 1.0}, "threshold"),
        ({"batch_size": 0}, "batch size"),
        ({"min_size": -1}, "min_size"),
    ],
)
def test_bad_generation_settings_are_one_line_errors(settings, message):
    with pytest.raises(ModelheistError, match=message):
        CAEGeneration(**settings)


def test_min_size_fills_the_fingerprint_below_the_threshold(digits, digits_cnn, cae_setup):
    """With a threshold almost nothing reaches, min_size keeps that many of the most
    conferrable adversarial examples; without it, generation finds none and says so."""
    from modelheist.ownership.cae import generate_fingerprint

    _, judges, surrogates, _ = cae_setup
    ensemble = ([surrogates[0].module], [judges[0].module])
    settings = {"epsilon": 0.2, "steps": 30, "threshold": 0.999, "size": 20, "seed": 0}
    filled = generate_fingerprint(
        digits_cnn.module, *ensemble, digits.train.x[:80], CAEGeneration(**settings, min_size=8)
    )
    assert len(filled) == 8 and filled.params["min_size"] == 8
    assert np.all(np.diff(filled.conferrability) <= 1e-12)  # the most conferrable first
    with pytest.raises(ModelheistError, match="no candidate reached"):
        generate_fingerprint(
            digits_cnn.module, *ensemble, digits.train.x[:80], CAEGeneration(**settings, min_size=0)
        )


def test_selection_keeps_the_most_conferrable_eligible_and_fills_to_min_size():
    scores = np.array([0.9, 0.2, 0.95, 0.6, 0.86, 0.7])
    eligible = np.array([True, True, True, True, False, True])
    assert select_conferrable(scores, 0.85, 10).tolist() == [2, 0, 4]
    assert select_conferrable(scores, 0.85, 10, eligible=eligible).tolist() == [2, 0]
    assert select_conferrable(scores, 0.85, 1, eligible=eligible).tolist() == [2]
    filled = select_conferrable(scores, 0.85, 10, min_size=4, eligible=eligible)
    assert filled.tolist() == [2, 0, 5, 3]  # two below the threshold, most conferrable first
    assert select_conferrable(scores, 0.85, 3, min_size=50).tolist() == [2, 0, 4]  # size caps
    assert select_conferrable(scores, 0.99, 10).tolist() == []
    skip = eligible & (np.arange(6) != 5)  # an ineligible example is never a filler
    assert select_conferrable(scores, 0.85, 10, min_size=4, eligible=skip).tolist() == [2, 0, 3, 1]


def test_a_fingerprint_round_trips_and_a_foreign_folder_is_refused(tmp_path, cae_setup):
    fingerprint = cae_setup[0]
    folder = fingerprint.save(tmp_path / "fp")
    again = Fingerprint.load(folder)
    assert np.array_equal(again.inputs, fingerprint.inputs)
    assert np.array_equal(again.labels, fingerprint.labels)
    card = json.loads((folder / "fingerprint.json").read_text())
    card["format"] = "something-else/1"
    (folder / "fingerprint.json").write_text(json.dumps(card))
    with pytest.raises(ModelheistError, match="card"):
        Fingerprint.load(folder)
    with pytest.raises(ModelheistError, match="not a fingerprint folder"):
        Fingerprint.load(tmp_path)


def test_fingerprint_then_verify_from_the_command_line(
    tmp_path, digits_cnn, cae_setup, cli_in_process
):
    model = save_model(digits_cnn, tmp_path / "model")
    secret = tmp_path / "fp"
    done = cli_in_process(
        "fingerprint", "cae", "--model", model, "--secret-out", secret, "--surrogates", "1",
        "--references", "1", "--budget", "600", "--candidates", "100", "--epsilon", "0.2",
        "--steps", "60", "--threshold", "0.3", "--size", "20",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    judges = []
    for index, judge in enumerate(cae_setup[1]):
        judges += ["--reference", save_model(judge, tmp_path / f"judge{index}")]
    verdict = tmp_path / "verdict.json"
    result = cli_in_process(
        "verify", "cae", "--fingerprint", secret, *judges, "--suspect", model, "--json", verdict,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    evidence = json.loads(verdict.read_text())
    assert evidence["scheme"] == "cae" and evidence["decision"] == "stolen"
    alone = cli_in_process("verify", "cae", "--fingerprint", secret, "--suspect", model)
    assert alone.returncode == 2 and "at least 3" in alone.stdout
