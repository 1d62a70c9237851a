"""Adaptive misinformation (Kariyappa & Qureshi CVPR '20): the misinformation model is trained
to be wrong, confident queries are answered truthfully, unsure ones and flagged clients get
the misinformation, in the same answer format."""

import numpy as np
import pytest
import torch

from modelheist.api.service import PredictionService
from modelheist.defenses import parse_defense
from modelheist.defenses.misinformation import AdaptiveMisinformation, misinformation_weight
from modelheist.defenses.misinformation_training import misinformation_loss
from modelheist.errors import ModelheistError
from modelheist.models import load_model


def test_the_loss_is_minus_log_of_one_minus_the_true_class_probability():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 2])
    p = torch.softmax(logits, dim=1)
    expected = -torch.log(1 - p[torch.arange(2), labels]).mean()
    assert misinformation_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_misinformation_model_is_wrong(misinformation_model, digits):
    model = load_model(misinformation_model)
    predicted = model.predict_proba(digits.test.x).argmax(axis=1)
    assert (predicted == digits.test.y).mean() < 0.05  # chance would be 0.1


def test_the_weight_switches_at_tau():
    alpha = misinformation_weight(np.array([0.5, 0.89, 0.91, 0.999]), tau=0.9, nu=1000.0)
    assert alpha[0] > 0.999 and alpha[1] > 0.99 and alpha[2] < 0.01 and alpha[3] < 1e-30


def test_confident_queries_keep_their_answers_unsure_ones_do_not(
    digits_cnn, digits, misinformation_model
):
    stage = AdaptiveMisinformation(misinformation_model, tau=0.9, nu=1000.0)
    service = PredictionService(digits_cnn, [stage])
    service.register_client("c")
    natural = digits.test.x
    truthful = digits_cnn.predict_proba(natural)
    answer = service.query("c", natural)
    confident = truthful.max(axis=1) > 0.95
    assert confident.mean() > 0.5
    np.testing.assert_array_equal(answer.labels[confident], truthful.argmax(1)[confident])
    noise = np.random.default_rng(0).random((200, *digits.input_shape), dtype=np.float32)
    unsure = digits_cnn.predict_proba(noise).max(axis=1) < 0.85
    misled = service.query("c", noise)
    assert unsure.sum() > 20
    agree = misled.labels[unsure] == digits_cnn.predict_proba(noise[unsure]).argmax(1)
    assert agree.mean() < 0.2
    np.testing.assert_allclose(misled.probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_a_flagged_client_is_misinformed_on_every_query(digits_cnn, digits, misinformation_model):
    from test_service import CountingDetector

    stages = [CountingDetector(1), AdaptiveMisinformation(misinformation_model)]
    service = PredictionService(digits_cnn, stages)
    service.register_client("c")
    service.query("c", digits.test.x[:5])  # raises the detector's alarm
    answer = service.query("c", digits.test.x[5:105])
    truthful = digits_cnn.predict_proba(digits.test.x[5:105]).argmax(1)
    assert (answer.labels == truthful).mean() < 0.1


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("misinform:model=x,tau=0", "tau must lie in"), ("misinform:model=x,nu=-1", "nu must be")],
)
def test_bad_settings_are_one_line(spec, needle):
    with pytest.raises(ModelheistError, match=needle):
        parse_defense(spec)
