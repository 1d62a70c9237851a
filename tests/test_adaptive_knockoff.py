"""Adaptive Knockoff Nets (Orekondy et al. '19 §4.1.2): the bandit, its rewards, the attack."""

import numpy as np
import pytest

from modelheist.api import LocalOracle, PredictionService
from modelheist.attacks import AttackerKnowledge, KnockoffNets
from modelheist.attacks.bandit import GradientBandit, KnockoffRewards, RunningStandardiser
from modelheist.errors import ModelheistError
from modelheist.experiments.extraction import Evaluation, measure_extraction

FAST = {"epochs": 10, "min_steps": 150, "rounds": 0}


def test_gradient_bandit_prefers_the_rewarding_arm():
    rng = np.random.default_rng(0)
    bandit = GradientBandit(3, step=0.2)
    np.testing.assert_allclose(bandit.policy(), 1 / 3)
    for _ in range(300):
        arm = bandit.draw(rng)
        bandit.update(arm, 1.0 if arm == 2 else rng.normal(0, 0.1))
    assert bandit.policy()[2] > 0.9
    assert abs(bandit.preferences.sum()) < 1e-9  # the update moves preferences, not their sum


def test_gradient_bandit_update_by_hand():
    """Sutton & Barto §2.8 with r_bar_1 = r_1: the first reward moves nothing."""
    bandit = GradientBandit(3, step=0.5)
    bandit.update(0, 2.0)
    np.testing.assert_array_equal(bandit.preferences, 0.0)
    bandit.update(1, 5.0)  # advantage 5 - 2 = 3, pi = 1/3 each
    np.testing.assert_allclose(bandit.preferences, [-0.5, 1.0, -0.5])
    assert bandit.baseline == pytest.approx(3.5)
    bandit.retire(2)
    bandit.update(2, 100.0)  # drawn before it ran out: only the baseline moves
    np.testing.assert_allclose(bandit.preferences, [-0.5, 1.0, -0.5])
    assert bandit.baseline == pytest.approx(107 / 3)


def test_gradient_bandit_retires_arms_and_refuses_bad_rewards():
    bandit = GradientBandit(2)
    bandit.retire(0)
    assert bandit.policy().tolist() == [0.0, 1.0]
    assert bandit.draw(np.random.default_rng(0)) == 1
    with pytest.raises(ModelheistError, match="finite"):
        bandit.update(1, float("nan"))
    bandit.retire(1)
    with pytest.raises(ModelheistError, match="exhausted"):
        bandit.policy()


def test_standardised_rewards_stay_finite_when_rewards_coincide():
    """ART's reward="all" divides by a zero running variance here (its issue #1746)."""
    standardise = RunningStandardiser(["cert", "div", "loss"])
    for _ in range(5):
        z = standardise(np.array([1.0, 0.0, 2.3]))
        assert np.isfinite(z).all() and (z == 0).all()
    z = standardise(np.array([0.0, 1.0, 1e30]))
    assert np.isfinite(z).all() and np.abs(z).max() <= standardise.clip


def test_certainty_diversity_and_loss_rewards():
    rewards = KnockoffRewards(["cert", "div", "loss"], num_classes=3, window=2)
    log_uniform = np.log(np.full(3, 1 / 3))
    first = rewards.raw(np.array([0.7, 0.2, 0.1]), log_uniform)
    np.testing.assert_allclose(first, [0.5, 1.0, np.log(3)])  # no history: all mass is new
    second = rewards.raw(np.array([0.7, 0.2, 0.1]), log_uniform)
    assert second[1] == pytest.approx(0.0)  # the same answer adds nothing
    third = rewards.raw(np.array([0.0, 0.0, 1.0]), np.log(np.array([0.1, 0.1, 0.8])))
    np.testing.assert_allclose(third, [1.0, 0.9, -np.log(0.8)])
    assert np.isfinite(rewards(np.array([1.0, 0.0, 0.0]), np.array([-np.inf, 0.0, 0.0])))


@pytest.fixture(scope="module")
def half_noise(digits):
    """The digits pool plus as many uniform-noise images: half of it is out-of-distribution."""
    rng = np.random.default_rng(0)
    x = digits.pool.x
    noise = rng.random(x.shape, dtype=np.float32) * float(x.max())
    labels = np.concatenate([digits.pool.y, np.full(len(x), 10)])
    return np.concatenate([x, noise]), labels


@pytest.mark.parametrize("arms", ["labels", "kmeans"])
def test_adaptive_queries_favour_in_distribution_data(digits_cnn, digits, half_noise, arms):
    pool, labels = half_noise
    evaluation = Evaluation.of(digits_cnn, digits.test)
    attack = KnockoffNets(strategy="adaptive", clusters=11, **FAST)
    result, m = measure_extraction(
        digits_cnn, attack, pool, evaluation, 300, "probs", "digits+noise",
        transfer_labels=labels if arms == "labels" else None,
    )  # fmt: skip
    in_share = (result.queried < len(digits.pool.x)).mean()
    assert m.queries_used == 300 == len(np.unique(result.queried))
    assert in_share >= 0.6, in_share  # random sampling gets 0.5; 0.77 / 0.7 measured here
    assert sum(result.details["queries_per_arm"]) == 300
    assert m.fidelity_test >= 0.85, m  # 0.94 / 0.95 measured here


def test_adaptive_is_seeded_and_honours_budgets(digits_cnn, digits, half_noise):
    pool, labels = half_noise

    def run(seed, output="probs"):
        from modelheist.defenses import parse_output

        service = PredictionService(digits_cnn, parse_output(output))
        oracle = LocalOracle.for_new_client(service, budget=70)
        attack = KnockoffNets(strategy="adaptive", epochs=1, min_steps=5, round_size=16)
        knowledge = AttackerKnowledge(pool, budget=100, seed=seed, transfer_labels=labels)
        return attack.run(oracle, knowledge), service

    (a, service), (b, _), (c, _) = run(1), run(1), run(2)
    assert a.queries_used == 70 == service.client("attacker").queries_used
    np.testing.assert_array_equal(a.queried, b.queried)
    x = digits.test.x[:50]
    np.testing.assert_array_equal(a.surrogate.predict_proba(x), b.surrogate.predict_proba(x))
    assert not np.array_equal(a.queried, c.queried)
    for output in ("labels", "top-k:2"):  # certainty is constant on labels; still finite
        result, _ = run(0, output)
        assert result.queries_used == 70


def test_adaptive_draws_every_input_of_a_small_pool_once(digits_cnn, digits):
    pool = digits.pool.x[:40]
    oracle = LocalOracle.for_new_client(PredictionService(digits_cnn), budget=None)
    attack = KnockoffNets(strategy="adaptive", epochs=1, min_steps=5, clusters=4)
    result = attack.run(oracle, AttackerKnowledge(pool, budget=100))
    assert result.queries_used == 40 and sorted(result.queried.tolist()) == list(range(40))


def test_more_clusters_than_distinct_inputs(digits_cnn, digits):
    """Duplicated inputs leave k-means clusters empty; their arms are never drawn."""
    pool = np.repeat(digits.pool.x[:6], 5, axis=0)  # 30 inputs, 6 distinct
    oracle = LocalOracle.for_new_client(PredictionService(digits_cnn), budget=None)
    attack = KnockoffNets(strategy="adaptive", epochs=1, min_steps=5, clusters=12, round_size=4)
    result = attack.run(oracle, AttackerKnowledge(pool, budget=30))
    assert result.queries_used == 30 and sorted(result.queried.tolist()) == list(range(30))


def test_transfer_labels_absent_from_the_pool_are_no_arms(digits_cnn, digits):
    pool = digits.pool.x[:20]
    labels = np.array([0] * 10 + [7] * 10)  # labels 1..6 name no input
    oracle = LocalOracle.for_new_client(PredictionService(digits_cnn), budget=None)
    attack = KnockoffNets(strategy="adaptive", epochs=1, min_steps=5, round_size=3)
    result = attack.run(oracle, AttackerKnowledge(pool, budget=20, transfer_labels=labels))
    assert result.details["queries_per_arm"] == [10, 10]
