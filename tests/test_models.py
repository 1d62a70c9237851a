import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from modelheist.errors import ModelheistError, ModelLoadError
from modelheist.models import TrainConfig, load_model, save_model, train_model
from modelheist.models.store import CARD, WEIGHTS
from modelheist.models.victims import train_victim


@pytest.mark.parametrize("arch", ["mlp", "logreg", "tree"])
def test_save_load_round_trip_tabular(tmp_path, breast_cancer, arch):
    model = train_model(breast_cancer, arch, TrainConfig(epochs=3, seed=1))
    save_model(model, tmp_path / arch)
    back = load_model(tmp_path / arch)
    x = breast_cancer.test.x
    np.testing.assert_allclose(back.predict_proba(x), model.predict_proba(x), atol=1e-7)
    assert back.card == model.card
    assert model.card.metrics["test_accuracy"] > 0.85


def test_save_load_round_trip_cnn(tmp_path, digits, digits_cnn):
    save_model(digits_cnn, tmp_path / "cnn")
    back = load_model(tmp_path / "cnn")
    np.testing.assert_allclose(
        back.predict_proba(digits.test.x), digits_cnn.predict_proba(digits.test.x), atol=1e-6
    )
    card = json.loads((tmp_path / "cnn" / CARD).read_text())
    assert card["input_shape"] == [1, 8, 8] and card["normalisation"]["mean"]
    assert card["training"]["split"] == {
        "seed": 0,
        "pool_fraction": 0.5,
        "validation_fraction": 0.1,
    }


def test_digits_cnn_is_a_reasonable_victim(digits_cnn):
    assert digits_cnn.card.metrics["test_accuracy"] > 0.93


def test_classical_models_predict_exactly_as_scikit_learn(breast_cancer):
    x, y = breast_cancer.train.x, breast_cancer.train.y
    tree = train_model(breast_cancer, "tree", TrainConfig(seed=3))
    reference = DecisionTreeClassifier(random_state=3).fit(x, y)
    np.testing.assert_allclose(
        tree.predict_proba(breast_cancer.test.x), reference.predict_proba(breast_cancer.test.x)
    )
    np.testing.assert_array_equal(
        tree.apply(breast_cancer.test.x), reference.apply(breast_cancer.test.x)
    )
    logreg = train_model(breast_cancer, "logreg")
    mean, std = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64)
    ref = LogisticRegression(max_iter=2000, random_state=0).fit((x - mean) / std, y)
    np.testing.assert_allclose(
        logreg.predict_proba(breast_cancer.test.x),
        ref.predict_proba((breast_cancer.test.x - mean) / std),
        atol=1e-8,
    )


def test_training_is_deterministic_and_follows_the_seed(digits):
    a = train_model(digits, "mlp", TrainConfig(epochs=2, seed=5))
    b = train_model(digits, "mlp", TrainConfig(epochs=2, seed=5))
    np.testing.assert_array_equal(a.predict_proba(digits.test.x), b.predict_proba(digits.test.x))
    other = train_victim(digits, "mlp", 2, seed=6)  # the same data: only the seed differs
    assert not np.array_equal(a.predict_proba(digits.test.x), other.predict_proba(digits.test.x))


def test_unknown_architecture(digits):
    with pytest.raises(ModelheistError, match="unknown architecture 'resnet'"):
        train_model(digits, "resnet")


def test_refuses_to_overwrite(tmp_path, breast_cancer):
    model = train_model(breast_cancer, "logreg")
    save_model(model, tmp_path / "m")
    with pytest.raises(ModelheistError, match="already exists"):
        save_model(model, tmp_path / "m")


@pytest.fixture
def saved_mlp(tmp_path, breast_cancer):
    return save_model(train_model(breast_cancer, "mlp", TrainConfig(epochs=1)), tmp_path / "mlp")


def test_corrupt_weights_give_a_clear_error(saved_mlp):
    (saved_mlp / WEIGHTS).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
        load_model(saved_mlp)


def test_truncated_weights(saved_mlp):
    data = (saved_mlp / WEIGHTS).read_bytes()
    (saved_mlp / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_model(saved_mlp)


def test_weights_of_another_architecture(saved_mlp, tmp_path, breast_cancer):
    other = save_model(train_model(breast_cancer, "logreg"), tmp_path / "lr")
    (saved_mlp / WEIGHTS).write_bytes((other / WEIGHTS).read_bytes())
    with pytest.raises(ModelLoadError, match="does not match its card"):
        load_model(saved_mlp)


def test_foreign_or_missing_card(saved_mlp, tmp_path):
    (saved_mlp / CARD).write_text('{"format": "something-else"}')
    with pytest.raises(ModelLoadError, match="not a modelheist-model"):
        load_model(saved_mlp)
    (saved_mlp / CARD).write_text("{broken json")
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(saved_mlp)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a modelheist model folder"):
        load_model(tmp_path / "empty")
