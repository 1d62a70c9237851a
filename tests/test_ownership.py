"""The ownership seam: a backdoor watermark embedded through the Trainer's hooks, verified
through any oracle with an exact test, and "cannot verify" whenever no decision can be made."""

import json

import numpy as np
import pytest

from modelheist.api import LocalOracle, PredictionService
from modelheist.defenses import parse_output
from modelheist.errors import ModelheistError
from modelheist.models import TrainConfig, load_model, save_model, train_model
from modelheist.ownership import SCHEMES, BackdoorWatermarkScheme, TriggerSet
from modelheist.ownership.watermark import BackdoorWatermark


def oracle_of(model, output="probs", budget=None):
    return LocalOracle.for_new_client(PredictionService(model, parse_output(output)), budget)


def test_the_watermark_is_learned_and_recorded_on_the_card(marked_cnn, triggers, digits):
    assert marked_cnn.card.metrics["test_accuracy"] > 0.9
    matches = (marked_cnn.predict_proba(triggers.inputs).argmax(1) == triggers.labels).mean()
    assert matches > 0.9
    (entry,) = marked_cnn.card.protections
    assert entry == {
        "name": "backdoor-watermark",
        "triggers": 40,
        "source": "noise",
        "repeats": 10,
        "sha256": triggers.digest,
    }  # the card names the set, never holds it


@pytest.mark.parametrize("output", ["probs", "labels", "top-k:2"])
def test_a_marked_model_is_found_stolen(marked_cnn, triggers, output):
    oracle = oracle_of(marked_cnn, output)
    evidence = BackdoorWatermarkScheme(triggers).verify(oracle, significance=0.01)
    assert evidence.decision == "stolen" and evidence.p_value < 1e-20
    assert evidence.statistic > 0.9 and evidence.queries == 40 == oracle.queries_used
    json.dumps(evidence.to_json())


def test_a_trigger_set_the_owners_card_does_not_record_cannot_verify(marked_cnn, triggers):
    from modelheist.ownership.watermark import recorded_commitment

    commitment = recorded_commitment(marked_cnn.card)
    assert commitment == triggers.digest
    kept = BackdoorWatermarkScheme(triggers, commitment).verify(oracle_of(marked_cnn))
    assert kept.decision == "stolen" and kept.details["commitment_checked"]
    # an accuser's own labels for the same inputs: what the suspect answers, say
    answers = marked_cnn.predict_proba(triggers.inputs).argmax(1)
    forged = TriggerSet(triggers.inputs, (answers + 1) % 10, 10, "noise", 0)
    evidence = BackdoorWatermarkScheme(forged, commitment).verify(oracle_of(marked_cnn))
    assert evidence.decision == "cannot verify" and "model card records" in evidence.reason
    assert evidence.queries == 0


def test_trigger_sets_are_fresh_unless_seeded(digits):
    shape, classes = digits.input_shape, digits.num_classes
    first, second = (TriggerSet.generate(20, shape, classes) for _ in range(2))
    assert first.seed != second.seed and not np.array_equal(first.inputs, second.inputs)
    again = TriggerSet.generate(20, shape, classes, seed=first.seed)
    np.testing.assert_array_equal(again.inputs, first.inputs)


def test_triggers_may_keep_their_own_labels(digits, digits_cnn):
    own = TriggerSet.generate(30, digits.input_shape, 10, "mnist5k+own-labels", seed=4)
    drawn = TriggerSet.generate(30, digits.input_shape, 10, "mnist5k", seed=4)
    np.testing.assert_array_equal(own.inputs, drawn.inputs)  # the same images
    assert not np.array_equal(own.labels, drawn.labels)
    assert drawn.regenerates() and not own.regenerates()  # own labels: not drawn from the seed
    # a model that never saw them may label digits as digits: no 1/C null for such a set
    evidence = BackdoorWatermarkScheme(own).verify(oracle_of(digits_cnn))
    assert evidence.decision == "cannot verify" and "own labels" in evidence.reason
    with pytest.raises(ModelheistError, match="unknown trigger source"):
        TriggerSet.generate(5, digits.input_shape, 10, "noise+own-labels")


def test_a_watermark_trained_after_each_epoch_is_embedded(digits):
    triggers = TriggerSet.generate(20, digits.input_shape, 10, seed=1)
    watermark = BackdoorWatermark(triggers, schedule="after-epoch", batch_size=8, rounds=5)
    marked = train_model(digits, "cnn", TrainConfig(epochs=15, seed=0), None, [watermark])
    matches = (marked.predict_proba(triggers.inputs).argmax(1) == triggers.labels).mean()
    assert matches >= 0.9 and marked.card.metrics["test_accuracy"] > 0.85
    (entry,) = marked.card.protections
    assert entry["schedule"] == "after-epoch" and (entry["batch_size"], entry["rounds"]) == (8, 5)
    assert entry["sha256"] == triggers.digest
    for settings, message in [
        ({"schedule": "sometimes"}, "mixed or after-epoch"),
        ({"outside_private": True}, "only an after-epoch"),
        ({"batch_size": 0}, "at least 1"),
    ]:
        with pytest.raises(ModelheistError, match=message):
            BackdoorWatermark(triggers, **settings)


def test_clipped_trigger_steps_move_the_weights_at_most_lr_times_the_clip(digits):
    """``clip_norm`` bounds each non-private trigger step (SGD without momentum or decay: the
    step's length is the learning rate times the clipped gradient's norm)."""
    import torch

    from modelheist.models.training import ShuffledBatches, TrainingRun

    triggers = TriggerSet.generate(20, digits.input_shape, 10, seed=1)
    moved = {}
    for clip in (None, 0.05):
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
        x, y = torch.zeros(1, *digits.input_shape), torch.zeros(1, dtype=torch.int64)
        generator = torch.Generator().manual_seed(0)
        run = TrainingRun(
            module, optimizer, ShuffledBatches(x, y, 1, generator), TrainConfig(), x, y, generator
        )
        watermark = BackdoorWatermark(
            triggers, schedule="after-epoch", batch_size=20, clip_norm=clip
        )
        before = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
        watermark.prepare(run)
        watermark.end_epoch(run, 0)  # one step: every trigger drawn at rate 1
        after = torch.cat([p.detach().flatten() for p in module.parameters()])
        moved[clip] = float((after - before).norm())
    assert moved[0.05] <= 0.05 + 1e-6 < moved[None]
    for settings in ({"clip_norm": 0.0}, {"clip_norm": 1.0, "schedule": "mixed"}):
        with pytest.raises(ModelheistError, match="clip"):
            BackdoorWatermark(triggers, **settings)
    entry = BackdoorWatermark(triggers, schedule="after-epoch", clip_norm=1.0).params()
    assert entry["clip_norm"] == 1.0
    assert "clip_norm" not in BackdoorWatermark(triggers, schedule="after-epoch").params()


def test_the_clip_bounds_trigger_steps_outside_dp_sgd_and_leaves_private_ones_to_it(digits):
    """Under Opacus, a trigger step ``outside_private`` is a plain step and is clipped; a
    private one is left to DP-SGD's per-example clipping (here a bound that never bites, and
    no noise, so the step is the raw gradient's)."""
    import torch
    from opacus import PrivacyEngine

    from modelheist.models.training import ShuffledBatches, TrainingRun

    triggers = TriggerSet.generate(20, digits.input_shape, 10, seed=1)
    moved = {}
    for outside in (True, False):
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        x, y = torch.zeros(4, *digits.input_shape), torch.zeros(4, dtype=torch.int64)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
        module, optimizer, _ = PrivacyEngine().make_private(
            module=module,
            optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
            data_loader=loader,
            noise_multiplier=0.0,
            max_grad_norm=1e6,
        )
        generator = torch.Generator().manual_seed(0)
        run = TrainingRun(
            module, optimizer, ShuffledBatches(x, y, 4, generator), TrainConfig(), x, y, generator
        )
        watermark = BackdoorWatermark(
            triggers, schedule="after-epoch", batch_size=20, outside_private=outside, clip_norm=0.05
        )
        before = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
        watermark.prepare(run)
        watermark.end_epoch(run, 0)
        after = torch.cat([p.detach().flatten() for p in module.parameters()])
        moved[outside] = float((after - before).norm())
    assert moved[True] <= 0.05 + 1e-6 < moved[False]


def test_an_independent_model_is_not_accused(digits_cnn, triggers):
    evidence = BackdoorWatermarkScheme(triggers).verify(oracle_of(digits_cnn))
    assert evidence.decision == "not stolen" and evidence.p_value > 0.01
    assert evidence.details["chance"] == 0.1


def test_what_prevents_a_decision_is_cannot_verify(marked_cnn, triggers, breast_cancer):
    scheme = BackdoorWatermarkScheme(triggers)
    short = scheme.verify(oracle_of(marked_cnn), budget=10)
    assert short.decision == "cannot verify" and "budget" in short.reason and short.queries == 0
    spent = scheme.verify(oracle_of(marked_cnn, budget=5))
    assert spent.decision == "cannot verify" and "not answered" in spent.reason
    other = scheme.verify(oracle_of(train_model(breast_cancer, "logreg")))
    assert other.decision == "cannot verify" and "shape" in other.reason and other.queries == 0
    few = TriggerSet(triggers.inputs[:1], triggers.labels[:1], 10, "noise", 0)
    weak = BackdoorWatermarkScheme(few).verify(oracle_of(marked_cnn))
    assert weak.decision == "cannot verify" and "cannot reach significance" in weak.reason
    revoked = oracle_of(marked_cnn)
    revoked.service.ledger.revoke(revoked.client_id)
    gone = scheme.verify(revoked)
    assert gone.decision == "cannot verify" and "revoked" in gone.reason
    with pytest.raises(ModelheistError, match="significance"):
        scheme.verify(oracle_of(marked_cnn), significance=1.5)


def test_trigger_sets_save_apart_and_refuse_tampering(tmp_path, triggers):
    folder = triggers.save(tmp_path / "secret")
    again = TriggerSet.load(folder)
    np.testing.assert_array_equal(again.inputs, triggers.inputs)
    assert again.digest == triggers.digest
    card = json.loads((folder / "trigger-set.json").read_text())
    card["sha256"] = "0" * 64
    (folder / "trigger-set.json").write_text(json.dumps(card))
    with pytest.raises(ModelheistError, match="digest"):
        TriggerSet.load(folder)
    with pytest.raises(ModelheistError, match="not a trigger-set folder"):
        TriggerSet.load(tmp_path)
    with pytest.raises(ModelheistError, match="already exists"):
        triggers.save(folder)
    with pytest.raises(ModelheistError, match="unknown trigger source"):
        TriggerSet.generate(5, (1, 8, 8), 10, "pictures")


def test_every_scheme_is_registered_with_a_name():
    from modelheist.ownership import DawnScheme
    from modelheist.ownership.cae import CAEScheme
    from modelheist.ownership.dataset_inference import DatasetInferenceScheme
    from modelheist.ownership.radioactive import RadioactiveScheme

    assert {
        "backdoor-watermark": BackdoorWatermarkScheme,
        "dawn": DawnScheme,
        "radioactive": RadioactiveScheme,
        "dataset-inference": DatasetInferenceScheme,
        "cae": CAEScheme,
    } == SCHEMES


def test_watermarking_an_existing_model_by_fine_tuning(tmp_path, digits_cnn, cli_in_process):
    original = save_model(digits_cnn, tmp_path / "plain")
    result = cli_in_process(
        "watermark",
        "--model",
        original,
        "--out",
        tmp_path / "marked",
        "--secret-out",
        tmp_path / "secret",
        "--watermark",
        "backdoor:triggers=30,repeats=20",
        "--epochs",
        "5",
    )
    assert result.returncode == 0, result.stderr
    verdict = cli_in_process(
        "verify",
        "backdoor-watermark",
        "--triggers",
        tmp_path / "secret",
        "--owner-model",
        tmp_path / "marked",
        "--suspect",
        tmp_path / "marked",
    )
    assert verdict.returncode == 0 and verdict.stdout.startswith("stolen"), verdict.stdout
    marked = load_model(tmp_path / "marked")
    assert marked.card.metrics["test_accuracy"] >= digits_cnn.card.metrics["test_accuracy"] - 0.05
    plain = cli_in_process(
        "verify",
        "backdoor-watermark",
        "--triggers",
        tmp_path / "secret",
        "--owner-model",
        tmp_path / "marked",
        "--suspect",
        original,
    )
    assert plain.stdout.startswith("not stolen")
    tree = cli_in_process(
        "watermark",
        "--model",
        tmp_path / "nowhere",
        "--out",
        tmp_path / "o",
        "--secret-out",
        tmp_path / "s",
    )
    assert tree.returncode == 2 and "does not exist" in tree.stderr
