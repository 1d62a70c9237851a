import numpy as np
import pytest

from modelheist.api import LocalOracle, PredictionService
from modelheist.attacks import AttackerKnowledge, KnockoffNets
from modelheist.errors import BudgetExceededError, ModelheistError
from modelheist.experiments.extraction import Evaluation, measure_extraction
from modelheist.oracle import BudgetedOracle

SMALL = {"epochs": 20, "min_steps": 300, "rounds": 0}


@pytest.fixture(scope="module")
def digits_evaluation(digits_cnn, digits):
    return Evaluation.of(digits_cnn, digits.test)


def extract(victim, pool, evaluation, attack, budget, output="probs"):
    return measure_extraction(victim, attack, pool, evaluation, budget, output, "digits")


def test_knockoff_on_digits_reaches_a_fidelity_floor(digits_cnn, digits, digits_evaluation):
    _, m = extract(digits_cnn, digits.pool.x, digits_evaluation, KnockoffNets(**SMALL), 500)
    assert m.queries_used == 500
    assert m.fidelity_test >= 0.9, m  # 0.978 measured here
    assert 0.0 <= m.fidelity_uniform <= 1.0


def test_knockoff_learns_from_labels_only(digits_cnn, digits, digits_evaluation):
    attack = KnockoffNets(**SMALL)
    _, m = extract(digits_cnn, digits.pool.x, digits_evaluation, attack, 500, "labels")
    assert m.fidelity_test >= 0.9, m  # 0.975 measured here


def test_self_training_uses_the_unqueried_remainder(digits_cnn, digits, digits_evaluation):
    attack = KnockoffNets(epochs=10, min_steps=150, rounds=1, student_epochs=5)
    result, m = extract(digits_cnn, digits.pool.x, digits_evaluation, attack, 200)
    assert result.details["unlabeled_used"] == len(digits.pool) - 200
    assert m.queries_used == 200 and m.fidelity_test >= 0.88, m  # 0.958 measured here


def test_never_spends_more_than_the_budget(digits_cnn, digits):
    service = PredictionService(digits_cnn)
    oracle = LocalOracle.for_new_client(service, budget=None)
    result = KnockoffNets(epochs=1, min_steps=5, rounds=0, query_batch=7).run(
        oracle, AttackerKnowledge(digits.pool.x, budget=50)
    )
    assert result.queries_used == 50 == service.client("attacker").queries_used
    assert len(np.unique(result.queried)) == 50


def test_oracle_budget_below_the_attack_budget(digits_cnn, digits):
    service = PredictionService(digits_cnn)
    oracle = LocalOracle.for_new_client(service, budget=30)
    result = KnockoffNets(epochs=1, min_steps=5, rounds=0).run(
        oracle, AttackerKnowledge(digits.pool.x, budget=100)
    )
    assert result.queries_used == 30


def test_budgeted_oracle_refuses_to_overspend(digits_cnn, digits):
    service = PredictionService(digits_cnn)
    inner = LocalOracle.for_new_client(service, budget=None)
    oracle = BudgetedOracle(inner, limit=10)
    oracle.query(digits.pool.x[:8])
    with pytest.raises(BudgetExceededError):
        oracle.query(digits.pool.x[:3])
    assert service.client("attacker").queries_used == 8


def test_same_seed_same_surrogate(digits_cnn, digits):
    def run(seed):
        service = PredictionService(digits_cnn)
        oracle = LocalOracle.for_new_client(service, budget=100)
        attack = KnockoffNets(epochs=2, min_steps=10, rounds=0)
        return attack.run(oracle, AttackerKnowledge(digits.pool.x, budget=100, seed=seed))

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a.queried, b.queried)
    x = digits.test.x
    np.testing.assert_array_equal(a.surrogate.predict_proba(x), b.surrogate.predict_proba(x))
    assert not np.array_equal(a.queried, c.queried)


def test_bad_parameters_and_shapes(digits_cnn, digits):
    with pytest.raises(ModelheistError, match="random, adaptive"):
        KnockoffNets(strategy="greedy")
    with pytest.raises(ModelheistError, match="reward"):
        KnockoffNets(strategy="adaptive", rewards=("cert", "fun"))
    with pytest.raises(ModelheistError, match="finite step"):
        KnockoffNets(strategy="adaptive", bandit_step=float("inf"))
    with pytest.raises(ModelheistError, match="one per transfer-set"):
        AttackerKnowledge(digits.pool.x, budget=5, transfer_labels=np.zeros(3, np.int64))
    with pytest.raises(ModelheistError, match="at least 1"):
        AttackerKnowledge(digits.pool.x, budget=0)
    service = PredictionService(digits_cnn)
    oracle = LocalOracle.for_new_client(service, budget=10)
    with pytest.raises(ModelheistError, match="transfer-set inputs have shape"):
        KnockoffNets().run(
            oracle, AttackerKnowledge(np.zeros((5, 1, 28, 28), np.float32), budget=5)
        )
    assert oracle.queries_used == 0


def test_ensemble_surrogate_saves_and_loads(tmp_path, digits_cnn, digits):
    from modelheist.models import load_model, save_model

    service = PredictionService(digits_cnn)
    oracle = LocalOracle.for_new_client(service, budget=100)
    attack = KnockoffNets(epochs=2, min_steps=10, members=2)
    result = attack.run(oracle, AttackerKnowledge(digits.pool.x, budget=100))
    assert result.queries_used == 100 and result.surrogate.card.members == 2
    probs = result.surrogate.predict_proba(digits.test.x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    back = load_model(save_model(result.surrogate, tmp_path / "ensemble"))
    np.testing.assert_allclose(back.predict_proba(digits.test.x), probs, atol=1e-6)
    with pytest.raises(ModelheistError, match="members"):
        KnockoffNets(members=0)


def test_fidelity_metrics_against_itself_and_a_constant(digits_cnn, digits):
    from modelheist.metrics import fidelity, uniform_fidelity
    from modelheist.models import LinearModel, ModelCard

    assert fidelity(digits_cnn, digits_cnn, digits.test.x) == 1.0
    assert uniform_fidelity(digits_cnn, digits_cnn, n=200) == 1.0
    card = ModelCard("logreg", "digits", list(digits.classes), [1, 8, 8])
    constant = LinearModel(np.zeros((10, 64)), np.eye(10)[3], card)  # always class 3
    expected = (digits_cnn.predict_proba(digits.test.x).argmax(1) == 3).mean()
    assert fidelity(constant, digits_cnn, digits.test.x) == pytest.approx(expected)
