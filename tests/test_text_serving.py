"""Text models behind the same API: strings in, one query per string, bad text refused with a
4xx and nothing counted (a real uvicorn server on loopback, VADER as the served model)."""

import httpx
import numpy as np
import orjson
import pytest

from modelheist.api import npy
from modelheist.api.http_client import HttpOracle
from modelheist.api.http_server import create_app, serve_in_thread
from modelheist.api.ledger import Ledger
from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.defenses import parse_defense
from modelheist.errors import InvalidQueryError, ModelheistError
from modelheist.oracle import BudgetedOracle

pytest.importorskip("vaderSentiment", reason="the text extra is not installed")

SENTENCES = ["What a lovely, wonderful day!", "The table is brown.", "I hate this awful mess."]


@pytest.fixture(scope="module")
def vader():
    from modelheist.models.vader import vader_model

    return vader_model()


@pytest.fixture(scope="module")
def served_text(vader, tmp_path_factory):
    ledger = Ledger.open(tmp_path_factory.mktemp("state"))
    keys = {"bob": ledger.add_client("bob"), "eve": ledger.add_client("eve", budget=4)}
    service = PredictionService(vader, max_batch=8, ledger=ledger, name="vader")
    with serve_in_thread(create_app(service)) as url:
        yield url, service, ledger, keys


def _post(url, key, body, content_type="application/json"):
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {key}"}
    return httpx.post(f"{url}/v1/models/vader/predict", content=body, headers=headers, timeout=30)


def test_strings_in_one_query_each(served_text, vader):
    url, _, ledger, keys = served_text
    before = ledger.client("bob").queries_used
    response = _post(url, keys["bob"], orjson.dumps({"inputs": SENTENCES}))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == [2, 1, 0]
    np.testing.assert_allclose(
        [p["probabilities"] for p in predictions], vader.predict_proba(SENTENCES), atol=1e-6
    )
    assert ledger.client("bob").queries_used == before + 3
    schema = httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/models/{name}/predict"]
    content = schema["post"]["requestBody"]["content"]
    assert list(content) == ["application/json"]  # no .npy for text
    items = content["application/json"]["schema"]["properties"]["inputs"]["items"]
    assert items == {"type": "string", "minLength": 1, "maxLength": 1000}


BAD_TEXT = [
    ({"inputs": [1, 2]}, "list of strings"),
    ({"inputs": "one string, not a list"}, "list of strings"),
    ({"inputs": [["nested"]]}, "list of strings"),
    ({"inputs": []}, "empty batch"),
    ({"inputs": ["fine", "   "]}, "input 1 is empty or blank"),
    ({"inputs": ["x" * 1001]}, "the limit is 1000"),
    ({"inputs": ["a"] * 9}, "exceeds the limit of 8"),
]


@pytest.mark.parametrize(("body", "message"), BAD_TEXT)
def test_bad_text_is_refused_and_not_counted(served_text, body, message):
    url, _, ledger, keys = served_text
    before = ledger.client("bob").queries_used
    response = _post(url, keys["bob"], orjson.dumps(body))
    assert response.status_code == 422 and message in response.json()["error"]["message"]
    assert ledger.client("bob").queries_used == before


def test_invalid_encodings_are_refused(served_text):
    url, _, ledger, keys = served_text
    before = ledger.client("bob").queries_used
    lone_surrogate = b'{"inputs": ["ok", "\\ud800"]}'
    not_utf8 = b'{"inputs": ["\xff\xfe"]}'
    nul = b'{"inputs": ["a\\u0000b"]}'
    as_npy = npy.encode(np.zeros((2, 3), np.float32))
    for body, content_type, message in (
        (lone_surrogate, "application/json", "the body is not valid JSON"),
        (not_utf8, "application/json", "the body is not valid JSON"),
        (nul, "application/json", "input 0 holds a NUL character"),
        (as_npy, npy.MEDIA_TYPE, "a text model takes a list of strings"),
    ):
        response = _post(url, keys["bob"], body, content_type)
        assert 400 <= response.status_code < 500, (body[:20], response.text)
        assert message in response.json()["error"]["message"], (body[:20], response.text)
    assert ledger.client("bob").queries_used == before


def test_the_service_refuses_text_that_is_not_unicode(served_text):
    _, service, ledger, _ = served_text
    oracle = LocalOracle.for_new_client(service, budget=None, client_id="carol")
    with pytest.raises(InvalidQueryError, match="input 1 is not valid Unicode text"):
        oracle.query(["ok", "\ud800"])  # a lone surrogate: JSON over HTTP cannot carry it
    assert ledger.client("carol").queries_used == 0


def test_oracles_send_text_and_log_it(served_text, vader, tmp_path):
    url, service, _, keys = served_text
    over_http = HttpOracle(url, keys["bob"])
    assert over_http.input_shape == ()
    budgeted = BudgetedOracle(over_http, 10)
    answer = budgeted.query(np.array(SENTENCES, dtype=object))
    np.testing.assert_array_equal(answer.labels, [2, 1, 0])
    saved = np.load(budgeted.log.save(tmp_path / "log.npz"), allow_pickle=False)
    assert saved["inputs"].tolist() == SENTENCES and saved["labels"].tolist() == [2, 1, 0]
    local = LocalOracle.for_new_client(service, budget=None, client_id="local")
    np.testing.assert_array_equal(local.query(SENTENCES).labels, answer.labels)
    with pytest.raises(InvalidQueryError, match="input 0 is empty"):
        local.query([""])


def test_budget_counts_strings(served_text):
    url, _, ledger, keys = served_text
    assert _post(url, keys["eve"], orjson.dumps({"inputs": SENTENCES})).status_code == 200
    refused = _post(url, keys["eve"], orjson.dumps({"inputs": SENTENCES}))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exhausted"
    assert ledger.client("eve").queries_used == 3


@pytest.mark.parametrize(
    "spec",
    ["prada", "dawn", "history", "round:1", "top-k:1", "labels", "reverse-sigmoid", "noise",
     "ood-msp:threshold=0.5", "pow:benign_mean=1.0,benign_std=0.5"],
)  # fmt: skip
def test_every_stage_serves_text_or_refuses_at_start_up(vader, spec):
    stage = parse_defense(spec)
    if stage.capabilities.numeric_inputs:
        with pytest.raises(ModelheistError, match=f"{stage.name} read inputs as numbers"):
            PredictionService(vader, [stage])
        return
    service = PredictionService(vader, [stage])
    oracle = LocalOracle(service, service.add_client("c", None))
    answer = oracle.query(SENTENCES * 4)  # answered, whatever the stage did to the answers
    assert len(answer.labels) == 12 and oracle.queries_used == 12


def test_an_image_model_refuses_strings(digits_cnn):
    service = PredictionService(digits_cnn)
    with pytest.raises(InvalidQueryError, match="numbers"):
        service.validate(["a sentence"])


def test_train_saves_vader_for_the_text_set(tmp_path, cli_in_process):
    from modelheist.data.registry import dataset_available
    from modelheist.models.store import load_model

    if not dataset_available("fortunes"):
        pytest.skip("Debian's fortunes are not installed")
    proc = cli_in_process(*f"train --dataset fortunes --arch vader --out {tmp_path}/v".split())
    assert proc.returncode == 0, proc.stderr
    assert "VADER (not trained" in proc.stdout
    model = load_model(tmp_path / "v")
    assert model.card.dataset == "fortunes" and model.card.input_shape == []
    assert model.predict_proba(SENTENCES).argmax(axis=1).tolist() == [2, 1, 0]


def test_serve_quantizes_minilm_models_only(tmp_path, vader, cli_in_process):
    from modelheist.api.http_server import prepare_server
    from modelheist.models.store import save_model

    with pytest.raises(ModelheistError, match="--quantize takes int8, got 'int4'"):
        prepare_server(tmp_path / "absent", tmp_path / "state", quantize="int4", port=0)
    save_model(vader, tmp_path / "vader")
    with pytest.raises(ModelheistError, match="--quantize applies to minilm text models, not to"):
        prepare_server(tmp_path / "vader", tmp_path / "state", quantize="int8", port=0)
    assert not (tmp_path / "state").exists()  # a refused start changes nothing
    proc = cli_in_process(
        "serve", tmp_path / "vader", "--quantize", "int4", "--port", "0", "--state", tmp_path / "s"
    )
    assert proc.returncode == 2 and "--quantize takes int8, got 'int4'" in proc.stderr
