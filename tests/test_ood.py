"""Out-of-distribution detectors: a threshold at a chosen false-positive rate, a windowed
per-client decision, Atli et al.'s binary classifier loaded from a model folder, and one-line
errors for settings out of range or a detector for other inputs."""

import numpy as np
import pytest

from modelheist.api.service import PredictionService
from modelheist.defenses import parse_defense
from modelheist.defenses.ood import MaxSoftmaxOod, OodClassifier, calibrate_threshold
from modelheist.errors import ModelheistError
from modelheist.experiments.detection import replay


def test_the_threshold_lets_through_all_but_the_chosen_share():
    scores = np.linspace(0, 1, 1001)
    threshold = calibrate_threshold(scores, 0.05)
    assert (scores < threshold).mean() == pytest.approx(0.05, abs=0.002)
    with pytest.raises(ModelheistError, match="false-positive rate"):
        calibrate_threshold(scores, 0.0)


def msp_threshold(model, data):
    return calibrate_threshold(model.predict_proba(data.validation.x).max(axis=1), 0.05)


def test_noise_clients_are_flagged_natural_ones_are_not(digits_cnn, digits):
    stage = MaxSoftmaxOod(msp_threshold(digits_cnn, digits), window=20, share=0.5)
    natural = replay(digits_cnn, [stage], digits.test.x[:200], batch=5)
    assert natural.first_alarm is None
    noise = np.random.default_rng(0).random((100, *digits.input_shape), dtype=np.float32)
    attacked = replay(digits_cnn, [stage], noise, batch=5)
    assert attacked.first_alarm is not None and attacked.first_alarm <= 25
    assert attacked.alarms[0]["stage"] == "ood-msp" and attacked.alarms[0]["statistic"] >= 0.5


def test_one_odd_query_does_not_flag_a_client(digits_cnn, digits):
    stage = MaxSoftmaxOod(msp_threshold(digits_cnn, digits), window=20, share=0.5)
    noise = np.random.default_rng(1).random((3, *digits.input_shape), dtype=np.float32)
    stream = np.concatenate([digits.test.x[:60], noise, digits.test.x[60:120]])
    assert replay(digits_cnn, [stage], stream, batch=4).first_alarm is None


def test_the_binary_classifier_flags_what_it_was_trained_to(digits_cnn, digits, ood_model):
    stage = OodClassifier(ood_model, window=10, share=0.5)
    service = PredictionService(digits_cnn, [stage])
    service.register_client("c")
    service.query("c", digits.test.x[:30])
    assert service.client("c").alarms == []
    noise = np.random.default_rng(2).random((30, *digits.input_shape), dtype=np.float32)
    service.query("c", noise)
    assert [a.stage for a in service.client("c").alarms] == ["ood-classifier"]
    assert service.ledger.audit("c")[-1].flags == ("ood:30",)


def test_a_detector_for_other_inputs_is_refused_at_start_up(ood_model, breast_cancer):
    from modelheist.models import TrainConfig, train_model

    tabular = train_model(breast_cancer, "mlp", TrainConfig(epochs=1))
    service = PredictionService(tabular, [OodClassifier(ood_model)])
    with pytest.raises(ModelheistError, match="takes inputs of shape"):
        service.open()


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("ood-msp:threshold=1.5", "threshold must lie in"),
        ("ood-msp:threshold=0.5,window=0", "window must be at least"),
        ("ood-msp:threshold=0.5,share=0", "share must lie in"),
        ("ood-classifier:model=/nowhere,threshold=2", "threshold must lie in"),
    ],
)
def test_bad_settings_are_one_line(spec, needle):
    with pytest.raises(ModelheistError, match=needle):
        parse_defense(spec)


def test_a_missing_detector_model_is_one_line_at_start_up(digits_cnn, tmp_path):
    service = PredictionService(digits_cnn, [OodClassifier(str(tmp_path / "nothing"))])
    with pytest.raises(ModelheistError):
        service.open()


def test_a_block_holds_within_one_batch_and_comes_back_after_a_clear(digits_cnn, digits):
    from modelheist.errors import BlockedError

    stage = MaxSoftmaxOod(threshold=0.999, window=4, share=0.5, policy="block")
    service = PredictionService(digits_cnn, [stage])
    service.register_client("eve")
    noise = np.random.default_rng(4).random((12, *digits.input_shape), dtype=np.float32)
    first, second = service.answer_many([("eve", noise[:4]), ("eve", noise[4:8])])
    assert len(first.answer) == 4 and isinstance(second, BlockedError)  # same batch
    assert service.client("eve").queries_used == 4
    service.ledger.clear_block("eve")
    again = service.answer_many([("eve", noise[8:12])])[0]
    assert len(again.answer) == 4  # answered: the clear holds until the next failing window
    with pytest.raises(BlockedError):  # ... which this was: blocked again
        service.query("eve", noise[:1])
