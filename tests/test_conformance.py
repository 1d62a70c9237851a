"""Every registered defense and attack obeys its seam's contract (as Amulet's conformance test)."""

import json

import numpy as np
import pytest

from modelheist.api import Answer, LocalOracle, PredictionService
from modelheist.attacks import ATTACKS, AttackerKnowledge, ExtractionAttack
from modelheist.defenses import DEFENSES, parse_defense, parse_output
from modelheist.errors import IncompatibleOutputError

EXAMPLE_SPECS = {
    "round": "round:2",
    "top-k": "top-k:3",
    "labels": "labels",
    "reverse-sigmoid": "reverse-sigmoid:beta=0.7,gamma=0.4",
    "noise": "noise:sigma=0.05,seed=3",
}
FAST_ATTACK_PARAMS = {
    "knockoff": {"epochs": 2, "min_steps": 20, "rounds": 0},
    "knockoff-adaptive": {"strategy": "adaptive", "epochs": 2, "min_steps": 20, "clusters": 5},
    "tramer-lr": {},
    "tramer-mlp": {"restarts": 1, "iterations": 50},
    "lowd-meek": {"steps": 8},
    "retrain": {"rounds": 2},
    "tree-path": {},
    "jbda": {"seeds_per_class": 2, "epochs": 1, "final_epochs": 1, "min_steps": 5, "folds": 2},
    "t-rnd": {"seeds_per_class": 2, "epochs": 1, "final_epochs": 1, "min_steps": 5, "folds": 2},
    "n-ifgsm": {"seeds_per_class": 2, "epochs": 1, "final_epochs": 1, "min_steps": 5, "folds": 2},
}
#: The victim each attack is built for: "cnn" (digits CNN), "binary" (a breast-cancer logistic
#: regression) or "tree" (a breast-cancer tree served with leaf identities), the output it is
#: given and its budget.
ATTACK_SETTINGS = {
    "knockoff": ("cnn", "probs", 60),
    "knockoff-adaptive": ("cnn", "top-k:3", 60),
    "tramer-lr": ("binary", "probs", 40),
    "tramer-mlp": ("binary", "probs", 80),
    "lowd-meek": ("binary", "labels", 1000),
    "retrain": ("binary", "labels", 100),
    "tree-path": ("tree", "labels", 3000),
    "jbda": ("cnn", "labels", 60),
    "t-rnd": ("cnn", "probs", 60),
    "n-ifgsm": ("cnn", "labels", 60),
}


#: Each case's registered attack: the attack of that name, or a strategy of one.
VARIANTS = {**{name: name for name in ATTACKS}, "knockoff-adaptive": "knockoff"}


def test_every_attack_has_settings():
    assert set(VARIANTS) == set(FAST_ATTACK_PARAMS) == set(ATTACK_SETTINGS)


@pytest.fixture(scope="module")
def binary_lr(breast_cancer):
    from modelheist.models import train_model

    return train_model(breast_cancer, "logreg")


@pytest.fixture(scope="module")
def tree(breast_cancer):
    from modelheist.models import train_model

    return train_model(breast_cancer, "tree")


def test_every_defense_has_an_example():
    assert set(DEFENSES) == set(EXAMPLE_SPECS)


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_defense_contract(name, digits_cnn, digits):
    stage = parse_defense(EXAMPLE_SPECS[name])
    assert parse_defense(stage.spec()).spec() == stage.spec()  # spec round trip
    x = digits.test.x[:7]
    probs = digits_cnn.predict_proba(x).astype(np.float64)
    state = stage.initial_state()
    answer = stage.apply(x, Answer(probs.argmax(1), probs), state)
    assert isinstance(answer, Answer) and len(answer) == 7
    np.testing.assert_array_equal(answer.labels, probs.argmax(1))  # every stage keeps the label
    if stage.output_kind is not None:
        assert answer.kind == stage.output_kind
    if answer.probabilities is not None:
        assert (answer.probabilities >= 0).all()
        np.testing.assert_allclose(answer.probabilities.sum(axis=1), 1.0, atol=0.03)  # rounding
    json.dumps(state)  # per-client state is serialisable
    if stage.rowwise:  # the service may apply it to several clients' rows at once
        assert stage.initial_state() == {}
        parts = [
            stage.apply(x[s], Answer(probs[s].argmax(1), probs[s]), {})
            for s in (slice(0, 3), slice(3, 7))
        ]
        for field in ("labels", "probabilities", "top_k", "top_k_probabilities"):
            if getattr(answer, field) is not None:
                np.testing.assert_array_equal(
                    np.concatenate([getattr(p, field) for p in parts]), getattr(answer, field)
                )
    again = stage.apply(x, Answer(probs.argmax(1), probs), stage.initial_state())
    for field in ("probabilities", "top_k", "top_k_probabilities"):  # same input, same answer
        np.testing.assert_array_equal(getattr(answer, field), getattr(again, field))


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_attack_contract(case, digits_cnn, digits, binary_lr, tree, breast_cancer):
    name = VARIANTS[case]
    kind, output, budget = ATTACK_SETTINGS[case]
    victim, data = {
        "cnn": (digits_cnn, digits),
        "binary": (binary_lr, breast_cancer),
        "tree": (tree, breast_cancer),
    }[kind]
    attack = ATTACKS[name](**FAST_ATTACK_PARAMS[case])
    service = PredictionService(victim, parse_output(output), leaves=kind == "tree")
    oracle = LocalOracle.for_new_client(service, budget=budget * 2)
    result = attack.run(oracle, AttackerKnowledge(data.pool.x, budget=budget, seed=1))
    assert 0 < result.queries_used <= budget
    assert service.client("attacker").queries_used == result.queries_used
    x = data.test.x[:3]
    assert result.surrogate.predict_proba(x).shape == (3, victim.card.num_classes)
    assert result.surrogate.card.classes == victim.card.classes
    assert result.attack == name and isinstance(result.params, dict)
    json.dumps(result.details)  # details are JSON (the CLI writes them)
    with pytest.raises(TypeError):  # hyper-parameters are named and typed, no **kwargs bag
        ATTACKS[name](no_such_parameter=1)


def test_incompatible_output_is_refused_before_any_query(digits_cnn, digits):
    class ProbabilitiesOnly(ExtractionAttack):
        name = "probabilities-only"
        supported_outputs = frozenset({"probabilities"})

        def _extract(self, oracle, knowledge, progress):  # pragma: no cover - never reached
            raise AssertionError("must not run")

    service = PredictionService(digits_cnn, [parse_defense("labels")])
    oracle = LocalOracle.for_new_client(service, budget=10)
    with pytest.raises(IncompatibleOutputError, match="cannot learn from labels"):
        ProbabilitiesOnly().run(oracle, AttackerKnowledge(digits.pool.x, budget=10))
    assert oracle.queries_used == 0
