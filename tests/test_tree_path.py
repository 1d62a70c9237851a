"""Tramèr '16 §4.2 path-finding: exact extraction of decision trees from leaf identities."""

import httpx
import numpy as np
import pytest

from modelheist.api import LocalOracle, PredictionService
from modelheist.api.http_client import HttpOracle
from modelheist.api.http_server import create_app, serve_in_thread
from modelheist.api.ledger import Ledger
from modelheist.attacks import AttackerKnowledge, TreePathFinding
from modelheist.defenses import parse_output
from modelheist.errors import IncompatibleOutputError, InvalidQueryError, ModelheistError
from modelheist.experiments.extraction import Evaluation
from modelheist.models import train_model


@pytest.fixture(scope="module")
def cancer_tree(breast_cancer):
    return train_model(breast_cancer, "tree")


def extract(victim, data, incomplete, output="labels"):
    service = PredictionService(
        victim, parse_output(output), leaves=True, incomplete_queries=incomplete
    )
    oracle = LocalOracle.for_new_client(service, None)
    result = TreePathFinding().run(oracle, AttackerKnowledge(data.pool.x, 100_000, seed=0))
    _, fidelity_test, fidelity_uniform = Evaluation.of(victim, data.test).score(result.surrogate)
    return result, fidelity_test, fidelity_uniform


def test_incomplete_queries_stop_at_the_first_missing_feature(cancer_tree, breast_cancer):
    x = breast_cancer.test.x[:5].astype(np.float32).copy()
    assert (cancer_tree.apply(x) == cancer_tree.apply(x.copy())).all()
    x[:, cancer_tree.feature[0]] = np.nan  # the root's feature missing: every query stops there
    assert (cancer_tree.apply(x) == 0).all()
    np.testing.assert_allclose(
        cancer_tree.predict_proba(x)[0], cancer_tree.value[0] / cancer_tree.value[0].sum()
    )


@pytest.mark.parametrize("incomplete", [False, True], ids=["complete", "incomplete"])
def test_exact_extraction(cancer_tree, breast_cancer, incomplete):
    result, ft, fu = extract(cancer_tree, breast_cancer, incomplete)
    assert ft == fu == 1.0, (ft, fu)
    assert result.details["leaves"] >= int((cancer_tree.children_left < 0).sum())
    assert result.queries_used == result.details["queries"]


def test_incomplete_queries_need_fewer_queries(cancer_tree, breast_cancer):
    complete, *_ = extract(cancer_tree, breast_cancer, False)
    incomplete, *_ = extract(cancer_tree, breast_cancer, True)
    assert incomplete.queries_used < complete.queries_used  # 750 vs 1341 measured


def test_discrete_features_and_probabilities(digits):
    tree = train_model(digits, "tree")
    result, ft, fu = extract(tree, digits, True, output="probs")  # 17 intensity levels per pixel
    assert ft == fu == 1.0
    x = digits.test.x[:50]
    np.testing.assert_allclose(result.surrogate.predict_proba(x), tree.predict_proba(x), atol=1e-12)


def test_needs_leaf_identities_before_any_query(cancer_tree, breast_cancer):
    oracle = LocalOracle.for_new_client(
        PredictionService(cancer_tree, parse_output("labels")), None
    )
    with pytest.raises(IncompatibleOutputError, match="--leaves"):
        TreePathFinding().run(oracle, AttackerKnowledge(breast_cancer.pool.x, 100))
    oracle = LocalOracle.for_new_client(PredictionService(cancer_tree, leaves=True), None)
    with pytest.raises(IncompatibleOutputError, match="incomplete"):
        TreePathFinding(incomplete=True).run(oracle, AttackerKnowledge(breast_cancer.pool.x, 100))
    assert oracle.queries_used == 0


def test_missing_features_are_refused_unless_enabled(cancer_tree, breast_cancer, digits_cnn):
    x = breast_cancer.test.x[:1].copy()
    x[0, 3] = np.nan
    plain = PredictionService(cancer_tree, leaves=True)
    plain.register_client("c")
    with pytest.raises(InvalidQueryError, match="NaN"):
        plain.query("c", x)
    with pytest.raises(ModelheistError, match="decision tree"):
        PredictionService(digits_cnn, leaves=True)


def test_path_finding_over_http_with_null_for_missing(cancer_tree, breast_cancer, tmp_path):
    ledger = Ledger.open(tmp_path)
    key = ledger.add_client("eve")
    service = PredictionService(
        cancer_tree, parse_output("labels"), ledger=ledger, leaves=True, incomplete_queries=True
    )
    with serve_in_thread(create_app(service)) as url:
        (model,) = httpx.get(f"{url}/v1/models").json()["models"]
        assert model["leaves"] and model["incomplete_queries"]
        row = [None] * 30
        answer = httpx.post(
            f"{url}/v1/models/{service.name}/predict",
            json={"inputs": [row]},
            headers={"Authorization": f"Bearer {key}"},
        ).json()
        assert answer["predictions"][0]["leaf"] == 0  # everything missing: the root
        for encoding in ("json", "npy"):
            oracle = HttpOracle(url, key, encoding=encoding)
            result = TreePathFinding().run(oracle, AttackerKnowledge(breast_cancer.pool.x, 100_000))
            _, ft, fu = Evaluation.of(cancer_tree, breast_cancer.test).score(result.surrogate)
            assert ft == fu == 1.0 and result.details["incomplete_queries"]


@pytest.mark.parametrize("incomplete", [False, True], ids=["complete", "incomplete"])
def test_nominal_one_hot_features(incomplete):
    """Auto MPG's nominal origin enters the tree one-hot, as scikit-learn trees take it."""
    from modelheist.data import load_dataset

    data = load_dataset("auto-mpg", seed=1)  # a split whose tree tests origin twice
    tree = train_model(data, "tree")
    assert {6, 7, 8} & set(tree.feature[tree.children_left >= 0].tolist())  # splits on origin
    result, ft, fu = extract(tree, data, incomplete, output="probs")
    assert ft == fu == 1.0, (ft, fu)
