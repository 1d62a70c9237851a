"""Perturbation defenses: reverse sigmoid (Lee et al. '19) and Gaussian noise."""

import numpy as np
import pytest
from scipy.special import expit, logit

from modelheist.api import PredictionService
from modelheist.defenses import (
    GaussianNoise,
    ReverseSigmoid,
    StageContext,
    StageState,
    parse_defense,
)
from modelheist.errors import ModelheistError
from modelheist.oracle import Answer


def _answer(p):
    p = np.asarray(p, np.float64)
    return Answer(p.argmax(1), p)


def apply(stage, x, answer, context=None):
    """A stateless stage applied as the service would (a fresh context, no state)."""
    return stage.apply(context or StageContext("c", 0.0), x, answer, StageState.read_only())


def test_reverse_sigmoid_follows_lee_et_al_equations_3_and_4():
    p = np.array([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05]])
    context = StageContext("c", 0.0)
    out = apply(ReverseSigmoid(beta=0.7, gamma=0.4), None, _answer(p), context)
    r = 0.7 * (expit(0.4 * logit(p)) - 0.5)
    expected = (p - r) / (p - r).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.probabilities, expected, rtol=1e-12)
    assert context.notes == ["reverse-sigmoid"]
    # the perturbation is large: the vector is deceptive, not a rounding of the truth
    assert np.abs(out.probabilities - p).max() > 0.05


def test_reverse_sigmoid_keeps_the_models_label_even_where_the_vector_flips():
    p = np.array([[0.4, 0.35, 0.25]])
    out = apply(ReverseSigmoid(beta=3.0, gamma=0.9), None, _answer(p))
    assert out.labels.tolist() == [0]


def test_noise_is_a_function_of_seed_and_input(digits_cnn, digits):
    x = digits.test.x[:32]
    p = digits_cnn.predict_proba(x).astype(np.float64)
    stage = GaussianNoise(sigma=0.05, seed=1)
    first = apply(stage, x, _answer(p)).probabilities
    np.testing.assert_array_equal(first, apply(stage, x, _answer(p)).probabilities)
    # row i's noise does not depend on the rest of the batch
    np.testing.assert_array_equal(first[5:6], apply(stage, x[5:6], _answer(p[5:6])).probabilities)
    other = apply(GaussianNoise(sigma=0.05, seed=2), x, _answer(p)).probabilities
    assert not np.array_equal(first, other)
    np.testing.assert_allclose(first.sum(axis=1), 1.0)
    assert (first >= 0).all()


def test_noise_draws_are_standard_normal(digits):
    z = GaussianNoise(sigma=0.1, seed=0).noise(np.random.default_rng(0).random((4000, 8)), 10)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02


def test_perturbation_specs_and_bad_arguments():
    assert parse_defense("reverse-sigmoid:beta=0.7,gamma=0.4").spec() == (
        "reverse-sigmoid:beta=0.7,gamma=0.4"
    )
    assert isinstance(parse_defense("noise:sigma=0.05"), GaussianNoise)
    with pytest.raises(ModelheistError, match="positive"):
        parse_defense("noise:sigma=-1")
    for spec in ("noise:sigma=inf", "reverse-sigmoid:beta=inf", "reverse-sigmoid:gamma=nan"):
        with pytest.raises(ModelheistError, match="finite"):
            parse_defense(spec)
    with pytest.raises(ModelheistError, match="bad arguments"):
        parse_defense("reverse-sigmoid:beta=high")
    with pytest.raises(ModelheistError, match="unknown argument"):
        parse_defense("noise:mu=1")


def test_full_stack_in_process(digits_cnn, digits):
    stages = [
        parse_defense(s) for s in ("reverse-sigmoid", "noise:sigma=0.02", "round:3", "top-k:3")
    ]
    service = PredictionService(digits_cnn, stages)
    service.register_client("c")
    answer = service.query("c", digits.test.x[:10])
    assert answer.kind == "top_k" and answer.top_k.shape == (10, 3)
    np.testing.assert_array_equal(
        answer.labels, digits_cnn.predict_proba(digits.test.x[:10]).argmax(1)
    )
    flags = service.ledger.audit("c")[0].flags  # what the stages noted stays in the audit log
    assert {"reverse-sigmoid", "noise:0.02", "rounded:3"} <= set(flags)


def test_a_noise_key_file_replaces_the_seed(tmp_path, digits_cnn, digits):
    from modelheist.defenses.secrets import create_secret_file

    key = create_secret_file(tmp_path / "noise.key")
    assert key.stat().st_mode & 0o777 == 0o600
    stage = parse_defense(f"noise:sigma=0.05,key_file={key}")
    assert stage.spec() == f"noise:sigma=0.05,key_file={key}"  # the path, never the key
    assert key.read_text().strip() not in stage.spec() + repr(stage)
    x = digits.test.x[:8]
    p = digits_cnn.predict_proba(x).astype(np.float64)
    stage.open()
    keyed = apply(stage, x, _answer(p)).probabilities
    seeded = apply(GaussianNoise(sigma=0.05, seed=0), x, _answer(p)).probabilities
    assert not np.array_equal(keyed, seeded)
    other = create_secret_file(tmp_path / "other.key")
    again = parse_defense(f"noise:sigma=0.05,key_file={other}")
    assert not np.array_equal(keyed, apply(again, x, _answer(p)).probabilities)
    with pytest.raises(ModelheistError, match="already exists"):
        create_secret_file(key)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("noise:sigma=0.05,key=0123456789abcdef0123", "never given inline"),
        ("noise:sigma=0.05,secret=hunter2", "never given inline"),
        ("noise:sigma=0.05,key_file=/no/such/file", "does not exist"),
    ],
)
def test_secrets_are_files_never_inline(spec, needle):
    with pytest.raises(ModelheistError, match=needle):
        parse_defense(spec)


def test_a_short_key_file_is_refused(tmp_path):
    (tmp_path / "short.key").write_text("abc\n")
    with pytest.raises(ModelheistError, match="under 16 bytes"):
        parse_defense(f"noise:key_file={tmp_path / 'short.key'}")
