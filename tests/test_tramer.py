"""Tramèr et al. '16 extraction: equation solving (LR, MLP) and the labels-only attacks."""

import numpy as np
import pytest

from modelheist.api import LocalOracle, PredictionService
from modelheist.api.http_client import HttpOracle
from modelheist.api.http_server import create_app, serve_in_thread
from modelheist.api.ledger import Ledger
from modelheist.attacks import (
    AdaptiveRetraining,
    AttackerKnowledge,
    LogisticEquationSolving,
    LowdMeek,
    MlpEquationSolving,
)
from modelheist.data import load_dataset
from modelheist.defenses import parse_output
from modelheist.errors import BudgetExceededError, IncompatibleOutputError, ModelheistError
from modelheist.experiments.extraction import Evaluation
from modelheist.models import TrainConfig, train_model


@pytest.fixture(scope="module")
def wine():
    return load_dataset("wine", seed=0)


@pytest.fixture(scope="module")
def cancer_lr(breast_cancer):
    return train_model(breast_cancer, "logreg")


@pytest.fixture(scope="module")
def wine_lr(wine):
    return train_model(wine, "logreg")


def attack_victim(attack, victim, data, budget, output="probs", oracle=None):
    oracle = oracle or LocalOracle.for_new_client(
        PredictionService(victim, parse_output(output)), None
    )
    result = attack.run(oracle, AttackerKnowledge(data.pool.x, budget, seed=0))
    evaluation = Evaluation.of(victim, data.test)
    _, fidelity_test, fidelity_uniform = evaluation.score(result.surrogate)
    inputs = np.concatenate([data.test.x, evaluation.uniform_inputs])
    gap = np.abs(victim.predict_proba(inputs) - result.surrogate.predict_proba(inputs)).max()
    return result, fidelity_test, fidelity_uniform, gap


@pytest.mark.parametrize("name", ["binary", "softmax"])
def test_equation_solving_is_exact_with_d_plus_1_queries(
    name, breast_cancer, wine, cancer_lr, wine_lr
):
    data, victim = (breast_cancer, cancer_lr) if name == "binary" else (wine, wine_lr)
    d = int(np.prod(data.input_shape))
    result, ft, fu, gap = attack_victim(LogisticEquationSolving(), victim, data, budget=10 * d)
    assert result.queries_used == d + 1
    assert ft == fu == 1.0 and gap <= 1e-6, (ft, fu, gap)  # 1e-13 measured
    assert result.details["method"] == "exact"


def test_rounded_answers_fall_back_to_retraining(wine, wine_lr):
    result, ft, fu, _ = attack_victim(LogisticEquationSolving(), wine_lr, wine, 280, "round:2")
    assert result.details["rounded_to"] == 2 and result.queries_used == 280
    assert ft >= 0.97 and fu >= 0.97, (ft, fu)  # 1.0 / 0.998 measured


def test_equation_solving_refuses_labels_and_small_budgets(breast_cancer, cancer_lr):
    service = PredictionService(cancer_lr, parse_output("labels"))
    oracle = LocalOracle.for_new_client(service, None)
    with pytest.raises(IncompatibleOutputError, match="cannot learn from labels"):
        LogisticEquationSolving().run(oracle, AttackerKnowledge(breast_cancer.pool.x, 100))
    oracle = LocalOracle.for_new_client(PredictionService(cancer_lr), None)
    with pytest.raises(BudgetExceededError, match="d \\+ 1 = 31"):
        LogisticEquationSolving().run(oracle, AttackerKnowledge(breast_cancer.pool.x, 30))
    assert oracle.queries_used == 0


def test_equation_solving_over_http_is_just_as_exact(breast_cancer, cancer_lr, tmp_path):
    ledger = Ledger.open(tmp_path)
    key = ledger.add_client("eve", budget=31)
    with serve_in_thread(create_app(PredictionService(cancer_lr, ledger=ledger))) as url:
        remote, ft, fu, gap = attack_victim(
            LogisticEquationSolving(),
            cancer_lr,
            breast_cancer,
            31,
            oracle=HttpOracle(url, key, encoding="json"),
        )
    local, *_ = attack_victim(LogisticEquationSolving(), cancer_lr, breast_cancer, 31)
    np.testing.assert_array_equal(remote.surrogate.coef, local.surrogate.coef)
    assert ft == fu == 1.0 and gap <= 1e-6 and ledger.client("eve").queries_used == 31


def test_mlp_from_as_many_queries_as_unknowns(wine):
    victim = train_model(wine, "mlp1", TrainConfig(epochs=60, seed=0))
    attack = MlpEquationSolving(alpha=1.0, restarts=2)
    result, ft, fu, _ = attack_victim(attack, victim, wine, budget=10_000)
    assert result.queries_used == attack.unknowns(13, 3) == 343
    assert ft >= 0.97 and fu >= 0.98, (ft, fu)  # 1.0 / 0.9998 measured


def test_lowd_meek_recovers_the_boundary_from_labels(breast_cancer, cancer_lr):
    result, ft, fu, _ = attack_victim(LowdMeek(), cancer_lr, breast_cancer, 2000, "labels")
    assert result.queries_used < 1000 and ft >= 0.98 and fu >= 0.99, (result.queries_used, ft, fu)


def test_adaptive_retraining_within_ten_d_plus_1_queries(breast_cancer, cancer_lr):
    result, ft, fu, _ = attack_victim(AdaptiveRetraining(), cancer_lr, breast_cancer, 310, "labels")
    assert result.queries_used == 310 and ft >= 0.97 and fu >= 0.95, (ft, fu)  # 1.000 / 0.975


def test_labels_only_attacks_need_a_binary_api(wine, wine_lr):
    oracle = LocalOracle.for_new_client(PredictionService(wine_lr, parse_output("labels")), None)
    with pytest.raises(ModelheistError, match="binary"):
        LowdMeek().run(oracle, AttackerKnowledge(wine.pool.x, 100))


def test_rounding_is_recognised_from_the_values_alone():
    from modelheist.attacks.base import exact_probabilities
    from modelheist.oracle import Answer

    p = np.array([[0.123456789, 0.876543211]])
    assert exact_probabilities(Answer(np.array([1]), p))
    assert not exact_probabilities(Answer(np.array([1]), np.round(p, 3)))
    assert not exact_probabilities(Answer(np.array([1])))


def test_lowd_meek_refuses_a_budget_it_cannot_finish_with(breast_cancer, cancer_lr):
    oracle = LocalOracle.for_new_client(PredictionService(cancer_lr, parse_output("labels")), None)
    with pytest.raises(BudgetExceededError, match="at least"):
        LowdMeek().run(oracle, AttackerKnowledge(breast_cancer.pool.x, 100))
    assert oracle.queries_used == 0
    with pytest.raises(ModelheistError, match="step"):
        LogisticEquationSolving(step=2.0)
