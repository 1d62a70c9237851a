"""JBDA (Papernot et al. '17) and T-RND (PRADA, Juuti et al. '19): seeds plus synthetic queries."""

import numpy as np
import pytest

from modelheist.api import LocalOracle, PredictionService
from modelheist.attacks import (
    AttackerKnowledge,
    JacobianAugmentation,
    NonTargetedIfgsm,
    TargetedRandom,
)
from modelheist.defenses import parse_output
from modelheist.errors import BudgetExceededError, ModelheistError
from modelheist.experiments.extraction import Evaluation

FAST = {
    "epochs": 4,
    "final_epochs": 15,
    "min_steps": 150,
    "learning_rates": (2e-3, 8e-3),
    "folds": 2,
    "members": 1,
}


@pytest.mark.parametrize("attack_class", [JacobianAugmentation, TargetedRandom, NonTargetedIfgsm])
def test_duplication_rounds_spend_the_budget_and_learn(attack_class, digits_cnn, digits):
    service = PredictionService(digits_cnn, parse_output("labels"))
    oracle = LocalOracle.for_new_client(service, None)
    result = attack_class(**FAST).run(oracle, AttackerKnowledge(digits.pool.x, 400, "cnn", seed=0))
    assert result.queries_used == 400 == service.client("attacker").queries_used
    assert result.details["seeds"] == 100 and result.details["rounds"] == 2
    assert set(result.details["cv_agreement"]) == {"0.002", "0.008"}
    _, fidelity_test, _ = Evaluation.of(digits_cnn, digits.test).score(result.surrogate)
    assert fidelity_test >= 0.8, fidelity_test  # 0.9+ measured


def test_t_rnd_moves_inputs_towards_random_other_classes(digits_cnn, digits):
    attack = TargetedRandom(epsilon=0.3, steps=5)
    x = digits.test.x[:64].astype(np.float32)
    labels = digits_cnn.predict_proba(x).argmax(1)
    crafted = attack._craft(digits_cnn, x, labels, 0, np.random.default_rng(0))
    assert np.abs(crafted - x).max() <= 0.3 + 1e-6
    moved = (
        digits_cnn.predict_proba(np.clip(crafted, 0, 1).astype(np.float32)).argmax(1) != labels
    ).mean()
    assert moved >= 0.5, moved  # a targeted step flips the white-box model's label


def test_n_ifgsm_moves_inputs_up_the_loss_of_their_label(digits_cnn, digits):
    import torch
    import torch.nn.functional as F

    x = digits.test.x[:64].astype(np.float32)
    labels = digits_cnn.predict_proba(x).argmax(1)
    crafted = NonTargetedIfgsm(epsilon=0.2, steps=3)._craft(digits_cnn, x, labels, 0, None)
    assert np.abs(crafted - x).max() <= 0.2 + 1e-6

    def loss(inputs):
        with torch.no_grad():
            logits = digits_cnn.module(torch.from_numpy(inputs.astype(np.float32)))
        return F.cross_entropy(logits, torch.from_numpy(labels), reduction="none").numpy()

    assert (loss(crafted) > loss(x)).mean() >= 0.9  # away from the API's label, not towards one
    one_step = NonTargetedIfgsm(epsilon=0.2, steps=1)._craft(digits_cnn, x, labels, 0, None)
    np.testing.assert_allclose(np.abs(one_step - x)[one_step != x], 0.2, atol=1e-6)  # N FGSM


def test_jbda_steps_follow_the_jacobian_sign(digits_cnn, digits):
    x = digits.test.x[:8].astype(np.float32)
    labels = digits_cnn.predict_proba(x).argmax(1)
    up = JacobianAugmentation(step=0.05)._craft(digits_cnn, x, labels, 0, np.random.default_rng(0))
    down = JacobianAugmentation(step=0.05, tau=1)._craft(
        digits_cnn, x, labels, 1, np.random.default_rng(0)
    )
    np.testing.assert_allclose(np.abs(up - x)[up != x], 0.05, atol=1e-6)
    np.testing.assert_allclose(up - x, -(down - x), atol=1e-6)  # the periodic sign flip
    from_labels = JacobianAugmentation(step=0.05, label_step=0.2)._craft(
        digits_cnn, x, labels, 0, np.random.default_rng(0), labels_only=True
    )
    np.testing.assert_allclose(from_labels - x, 4 * (up - x), atol=1e-6)  # label_step's size


def test_bad_settings_and_budgets(digits_cnn, digits):
    with pytest.raises(ModelheistError, match="epsilon"):
        TargetedRandom(epsilon=0)
    with pytest.raises(ModelheistError, match="step"):
        JacobianAugmentation(step=-1)
    with pytest.raises(ModelheistError, match="label_step"):
        JacobianAugmentation(label_step=0)
    oracle = LocalOracle.for_new_client(PredictionService(digits_cnn), None)
    with pytest.raises(BudgetExceededError, match="seeds"):
        JacobianAugmentation().run(oracle, AttackerKnowledge(digits.pool.x, 50, "cnn"))
    assert oracle.queries_used == 0


def test_final_surrogate_can_be_an_ensemble(digits_cnn, digits):
    oracle = LocalOracle.for_new_client(PredictionService(digits_cnn), None)
    attack = JacobianAugmentation(**{**FAST, "learning_rates": (2e-3,), "members": 2})
    result = attack.run(oracle, AttackerKnowledge(digits.pool.x, 200, "cnn", seed=0))
    assert (
        result.surrogate.card.members == 2
        and result.surrogate.card.classes == digits_cnn.card.classes
    )
    assert result.details["cv_agreement"] == {}  # one learning rate: nothing to search


def test_augmentation_is_a_parameter_of_every_training():
    for augment in (True, False):
        attack = TargetedRandom(augment=augment)
        assert attack._config(1000, 10, 1e-3, 0, exact=True).augment is augment


@pytest.mark.parametrize(
    "output, labels_only", [("labels", True), ("probs", False), ("top-k:2", False)]
)
def test_jbda_takes_its_label_step_only_from_label_answers(output, labels_only, digits_cnn, digits):
    seen: list[bool] = []

    class Recording(JacobianAugmentation):
        def _craft(self, surrogate, x, labels, round_, rng, labels_only=False):
            seen.append(labels_only)
            return super()._craft(surrogate, x, labels, round_, rng, labels_only)

    oracle = LocalOracle.for_new_client(PredictionService(digits_cnn, parse_output(output)), None)
    fast = {**FAST, "learning_rates": (2e-3,), "final_epochs": 1, "min_steps": 10}
    Recording(**fast).run(oracle, AttackerKnowledge(digits.pool.x, 200, "cnn", seed=0))
    assert seen == [labels_only]  # one round, crafted with the step of the answers' kind
