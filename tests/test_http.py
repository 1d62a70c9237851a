"""The HTTP API against a real uvicorn server on an ephemeral loopback port (no mocks)."""

import hashlib
import time

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
from modelheist.attacks import AttackerKnowledge, KnockoffNets
from modelheist.defenses import parse_defense
from modelheist.errors import AuthenticationError, BudgetExceededError, ModelheistError

MAX_BATCH = 64
MAX_BODY = 200_000


class Served:
    """A running server and the handles a test needs."""

    def __init__(self, url, service, ledger, keys):
        self.url, self.service, self.ledger, self.keys = url, service, ledger, keys

    @property
    def predict_url(self):
        return f"{self.url}/v1/models/{self.service.name}/predict"

    def post(self, key, body=None, *, json=None, content_type="application/json", url=None):
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        content = (
            orjson.dumps(json, option=orjson.OPT_SERIALIZE_NUMPY) if json is not None else body
        )
        return httpx.post(url or self.predict_url, content=content, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def served(digits_cnn, tmp_path_factory):
    ledger = Ledger.open(tmp_path_factory.mktemp("state"))
    keys = {
        "alice": ledger.add_client("alice", budget=50),
        "bob": ledger.add_client("bob"),
        "slow": ledger.add_client("slow", rate=2.0),
        "root": ledger.add_client("root", admin=True),
        "fuzz": ledger.add_client("fuzz"),
    }
    service = PredictionService(digits_cnn, max_batch=MAX_BATCH, ledger=ledger, name="digits")
    with serve_in_thread(create_app(service, max_body_bytes=MAX_BODY)) as url:
        yield Served(url, service, ledger, keys)


def usage(served, client):
    return served.ledger.client(client).queries_used, len(served.ledger.audit(client))


def test_health_models_and_openapi(served):
    assert httpx.get(f"{served.url}/healthz").json() == {"status": "ok"}
    (model,) = httpx.get(f"{served.url}/v1/models").json()["models"]
    assert model == {
        "name": "digits",
        "input_shape": [1, 8, 8],
        "input_range": [0.0, 1.0],
        "classes": [str(i) for i in range(10)],
        "output": "probabilities",
        "output_shape": None,  # a classifier (an image-to-image model gives its images' shape)
        "max_batch": MAX_BATCH,
        "leaves": False,
        "incomplete_queries": False,
    }
    paths = httpx.get(f"{served.url}/openapi.json").json()["paths"]
    assert {
        "/healthz",
        "/v1/models",
        "/v1/models/{name}/predict",
        "/metrics",
        "/v1/admin/clients",
    } <= set(paths)


def test_json_and_npy_answers_equal_the_in_process_ones(served, digits, digits_cnn):
    x = digits.test.x[:5]
    by_json = served.post(served.keys["bob"], json={"inputs": x}).json()
    by_npy = served.post(served.keys["bob"], npy.encode(x), content_type=npy.MEDIA_TYPE).json()
    expected = digits_cnn.predict_proba(x).astype(np.float64)
    for document in (by_json, by_npy):
        probs = np.array([p["probabilities"] for p in document["predictions"]])
        np.testing.assert_array_equal(probs, expected)  # bit-identical through JSON
        assert [p["label"] for p in document["predictions"]] == expected.argmax(1).tolist()
        assert document["queries_remaining"] is None
    assert by_npy["queries_used"] == by_json["queries_used"] + 5


def test_every_answered_query_is_audited(served, digits):
    before = len(served.ledger.audit("bob"))
    x = digits.test.x[10:13]
    labels = [
        p["label"]
        for p in served.post(served.keys["bob"], json={"inputs": x}).json()["predictions"]
    ]
    records = served.ledger.audit("bob")[before:]
    assert [r.label for r in records] == labels
    assert [r.input_sha256 for r in records] == [
        hashlib.sha256(row.astype(np.float32).tobytes()).hexdigest() for row in x
    ]
    assert all(r.model == "digits" and r.client == "bob" and r.time <= time.time() for r in records)


BAD_REQUESTS = {
    "wrong shape": (dict(json={"inputs": [[1.0, 2.0]]}), 422, "invalid_inputs"),
    "wrong dtype": (dict(json={"inputs": [[["a"] * 8] * 8]}), 422, "invalid_inputs"),
    "booleans": (dict(json={"inputs": [[[[True] * 8] * 8]]}), 422, "invalid_inputs"),
    "ragged": (dict(json={"inputs": [[[[1.0] * 8] * 7 + [[1.0] * 3]]]}), 422, "invalid_inputs"),
    "infinite literal": (dict(body=b'{"inputs": [1e999]}'), 400, "malformed_json"),
    "float32 overflow": (dict(json={"inputs": np.full((1, 1, 8, 8), 1e39)}), 422, "invalid_inputs"),
    "outside the input range": (
        dict(json={"inputs": np.full((1, 1, 8, 8), 2.0)}),
        422,
        "invalid_inputs",
    ),
    "NaN (npy)": (
        dict(
            body=npy.encode(np.full((1, 1, 8, 8), np.nan, np.float32)), content_type=npy.MEDIA_TYPE
        ),
        422,
        "invalid_inputs",
    ),
    "empty batch": (dict(json={"inputs": []}), 422, "invalid_inputs"),
    "over the batch limit": (
        dict(json={"inputs": np.zeros((MAX_BATCH + 1, 1, 8, 8), np.float32)}),
        422,
        "invalid_inputs",
    ),
    "over the byte limit": (
        dict(body=b" " * (MAX_BODY + 1)),
        413,
        "payload_too_large",
    ),
    "malformed JSON": (dict(body=b'{"inputs": [1, 2'), 400, "malformed_json"),
    "NaN literal": (dict(body=b'{"inputs": [NaN]}'), 400, "malformed_json"),
    "not an object": (dict(json=[1, 2, 3]), 422, "invalid_inputs"),
    "no inputs field": (dict(json={"input": [1]}), 422, "invalid_inputs"),
    "corrupt npy": (
        dict(body=b"\x93NUMPY garbage", content_type=npy.MEDIA_TYPE),
        422,
        "invalid_inputs",
    ),
    "npy header bomb": (
        dict(
            body=b"\x93NUMPY\x01\x00"
            + (
                b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"-" * 3000 + b"1,), }"
            ).ljust(3062)
            + b"\n",
            content_type=npy.MEDIA_TYPE,
        ),
        422,
        "invalid_inputs",
    ),
    "npy absurd empty shape": (
        dict(
            body=npy.encode(np.zeros((0,), np.float32)).replace(
                b"(0,)", b"(100000000000000000000000, 0)"
            ),
            content_type=npy.MEDIA_TYPE,
        ),
        422,
        "invalid_inputs",
    ),
    "object npy": (
        dict(body=npy.encode(np.array(["x"])), content_type=npy.MEDIA_TYPE),
        422,
        "invalid_inputs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_a_4xx_json_error_and_costs_nothing(served, case):
    request, status, code = BAD_REQUESTS[case]
    before = usage(served, "bob")
    response = served.post(served.keys["bob"], **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert usage(served, "bob") == before  # nothing counted, nothing logged


@pytest.mark.parametrize(
    "key, url_suffix, status, code",
    [
        (None, None, 401, "unauthorized"),
        ("mh-not-a-key", None, 401, "unauthorized"),
        ("bob", "/v1/models/ghost/predict", 404, "unknown_model"),
    ],
)
def test_auth_and_unknown_model(served, digits, key, url_suffix, status, code):
    before = usage(served, "bob")
    response = served.post(
        served.keys.get(key, key),
        json={"inputs": digits.test.x[:1]},
        url=url_suffix and served.url + url_suffix,
    )
    assert response.status_code == status and response.json()["error"]["code"] == code
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert usage(served, "bob") == before


def test_budget_is_enforced_with_what_remains(served, digits):
    key = served.keys["alice"]
    assert served.post(key, json={"inputs": digits.test.x[:40]}).json()["queries_remaining"] == 10
    refused = served.post(key, json={"inputs": digits.test.x[:20]})
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "code": "budget_exhausted",
        "message": refused.json()["error"]["message"],
        "queries_remaining": 10,
    }
    assert usage(served, "alice") == (40, 40)
    assert served.post(key, json={"inputs": digits.test.x[:10]}).json()["queries_remaining"] == 0
    assert served.post(key, json={"inputs": digits.test.x[:1]}).status_code == 429
    oracle = HttpOracle(served.url, key)
    assert (oracle.budget, oracle.queries_used, oracle.remaining) == (50, 50, 0)
    with pytest.raises(BudgetExceededError, match="budget"):
        oracle.query(digits.test.x[:1])


def test_rate_limit(served, digits):
    codes = [served.post(served.keys["slow"], json={"inputs": digits.test.x[:1]}) for _ in range(4)]
    assert [r.status_code for r in codes[:2]] == [200, 200]
    limited = codes[-1]
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert served.ledger.client("slow").queries_used == sum(r.status_code == 200 for r in codes)
    time.sleep(0.6)  # the bucket refills at 2/s: a patient oracle gets through
    assert len(HttpOracle(served.url, served.keys["slow"]).query(digits.test.x[:3])) == 3


def test_admin_endpoint_and_metrics(served, digits):
    served.post(served.keys["bob"], json={"inputs": digits.test.x[:2]})
    forbidden = httpx.get(
        f"{served.url}/v1/admin/clients", headers={"Authorization": f"Bearer {served.keys['bob']}"}
    )
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    assert httpx.get(f"{served.url}/v1/admin/clients").status_code == 401
    report = httpx.get(
        f"{served.url}/v1/admin/clients", headers={"Authorization": f"Bearer {served.keys['root']}"}
    ).json()
    bob = next(c for c in report["clients"] if c["name"] == "bob")
    assert bob["queries_used"] == served.ledger.client("bob").queries_used > 0
    text = httpx.get(f"{served.url}/metrics").text
    assert 'modelheist_http_requests_total{endpoint="predict",status="200"}' in text
    assert 'modelheist_queries_answered_total{client="bob",model="digits"}' in text
    assert 'status="422"' in text


def test_revoked_key_is_refused_by_the_running_server(served, digits):
    key = served.ledger.add_client("mallory")
    assert served.post(key, json={"inputs": digits.test.x[:1]}).status_code == 200
    other = Ledger.open(served.ledger.path.parent)  # as `modelheist keys revoke` would
    other.revoke("mallory")
    other.close()
    response = served.post(key, json={"inputs": digits.test.x[:1]})
    assert response.status_code == 403 and "revoked" in response.json()["error"]["message"]


def test_unknown_route_and_method(served):
    missing = httpx.get(f"{served.url}/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.delete(served.predict_url)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]


def test_unreachable_url_is_a_clear_error():
    with pytest.raises(ModelheistError, match="cannot reach"):
        _ = HttpOracle("http://127.0.0.1:9", "key").input_shape
    with pytest.raises(ModelheistError, match="encoding"):
        HttpOracle("http://127.0.0.1:9", "key", encoding="xml")


def test_wrong_key_through_the_oracle(served):
    with pytest.raises(AuthenticationError, match="unknown API key"):
        _ = HttpOracle(served.url, "mh-wrong").budget


def test_defense_stack_over_http(digits_cnn, digits, tmp_path):
    stages = [
        parse_defense(s) for s in ("reverse-sigmoid", "noise:sigma=0.02", "round:3", "top-k:3")
    ]
    ledger = Ledger.open(tmp_path)
    key = ledger.add_client("c")
    service = PredictionService(digits_cnn, stages, ledger=ledger)
    local = PredictionService(digits_cnn, stages)
    with serve_in_thread(create_app(service)) as url:
        oracle = HttpOracle(url, key)
        assert oracle.output_kind == "top_k"
        answer = oracle.query(digits.test.x[:6])
    in_process = LocalOracle.for_new_client(local, None, "c")
    expected = in_process.query(digits.test.x[:6])
    np.testing.assert_array_equal(answer.top_k, expected.top_k)
    np.testing.assert_array_equal(answer.top_k_probabilities, expected.top_k_probabilities)
    assert ledger.audit("c")[0].flags == local.ledger.audit("c")[0].flags  # flags stay server-side
    assert ledger.audit("c")[0].flags == ("reverse-sigmoid", "noise:0.02", "rounded:3")


@pytest.mark.parametrize("encoding", ["npy", "json"])
def test_attack_over_http_gives_the_same_surrogate(digits_cnn, digits, tmp_path, encoding):
    attack = KnockoffNets(epochs=3, min_steps=30, rounds=0)
    knowledge = AttackerKnowledge(digits.pool.x, budget=120, seed=4)
    local = attack.run(LocalOracle.for_new_client(PredictionService(digits_cnn), 200), knowledge)
    ledger = Ledger.open(tmp_path)
    key = ledger.add_client("attacker", budget=200)
    with serve_in_thread(create_app(PredictionService(digits_cnn, ledger=ledger))) as url:
        remote = attack.run(HttpOracle(url, key, encoding=encoding), knowledge)
    assert (
        remote.queries_used == local.queries_used == 120 == ledger.client("attacker").queries_used
    )
    np.testing.assert_array_equal(remote.queried, local.queried)
    x = digits.test.x
    np.testing.assert_array_equal(
        remote.surrogate.predict_proba(x), local.surrogate.predict_proba(x)
    )


def test_stage_state_alarms_and_review_over_http(digits_cnn, digits, tmp_path):
    import sqlite3

    from modelheist.api.ledger import DATABASE_NAME

    stages = [parse_defense("history:limit=10")]
    ledger = Ledger.open(tmp_path)
    keys = {name: ledger.add_client(name, admin=name == "root") for name in ("eve", "root")}
    service = PredictionService(digits_cnn, stages, ledger=ledger, name="digits")
    with serve_in_thread(create_app(service)) as url:
        eve = HttpOracle(url, keys["eve"])
        eve.query(digits.test.x[:4])
        eve.query(digits.test.x[4:12])
    ledger.close()

    ledger = Ledger.open(tmp_path)  # a restarted server on the same state folder
    service = PredictionService(digits_cnn, stages, ledger=ledger, name="digits")
    with serve_in_thread(create_app(service)) as url:
        HttpOracle(url, keys["eve"]).query(digits.test.x[12:15])
        headers = {"Authorization": f"Bearer {keys['root']}"}
        report = httpx.get(f"{url}/v1/admin/clients", headers=headers).json()
        (state,) = next(c for c in report["clients"] if c["name"] == "eve")["defense_state"]
        assert state["stage"] == "history:limit=10"
        assert state["values"] == {"not_kept": 5} and state["arrays"]["inputs"]["rows"] == 10
        kept = service.client("eve").stages[0].array("inputs")
        np.testing.assert_array_equal(kept, digits.test.x[:10])  # survived the restart
        raw = sqlite3.connect(tmp_path / DATABASE_NAME)
        raw.execute("UPDATE stage_values SET doc='{broken' WHERE client='eve'")
        raw.commit()
        raw.close()
        service.forget_client("eve")
        held = httpx.post(
            f"{url}/v1/models/digits/predict",
            json={"inputs": digits.test.x[:1].tolist()},
            headers={"Authorization": f"Bearer {keys['eve']}"},
        )
        assert held.status_code == 403 and held.json()["error"]["code"] == "under_review"
        report = httpx.get(f"{url}/v1/admin/clients", headers=headers).json()
        assert (
            "cannot be read" in next(c for c in report["clients"] if c["name"] == "eve")["review"]
        )


def test_alarms_reach_the_admin_endpoint_and_metrics(digits_cnn, digits, tmp_path):
    from test_service import CountingDetector

    ledger = Ledger.open(tmp_path)
    keys = {name: ledger.add_client(name, admin=name == "root") for name in ("eve", "root")}
    service = PredictionService(digits_cnn, [CountingDetector(3)], ledger=ledger, name="digits")
    with serve_in_thread(create_app(service)) as url:
        eve = HttpOracle(url, keys["eve"])
        for i in range(3):
            eve.query(digits.test.x[2 * i : 2 * i + 2])
        headers = {"Authorization": f"Bearer {keys['root']}"}
        report = httpx.get(f"{url}/v1/admin/clients", headers=headers).json()
        record = next(c for c in report["clients"] if c["name"] == "eve")
        assert record["alarms_total"] == 2
        assert [a["statistic"] for a in record["alarms"]] == [4, 6]
        assert {a["stage"] for a in record["alarms"]} == {"counting"}
        text = httpx.get(f"{url}/metrics").text
        assert 'modelheist_alarms_total{client="eve",model="digits",stage="counting"} 2.0' in text


def test_chunked_body_over_the_limit_is_413(served):
    def chunks():
        for _ in range(MAX_BODY // 10_000 + 2):
            yield b" " * 10_000

    response = httpx.post(
        served.predict_url,
        content=chunks(),  # no Content-Length: the server counts as it reads
        headers={"Authorization": f"Bearer {served.keys['bob']}"},
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_a_server_on_another_pipeline_says_whose_state_it_leaves_aside(
    digits_cnn, digits, tmp_path
):
    from modelheist.api.http_server import prepare_server
    from modelheist.models import save_model

    model_dir = save_model(digits_cnn, tmp_path / "model")
    first = prepare_server(model_dir, tmp_path / "state", defenses=["history"], port=0)
    assert first.notices == []
    first.service.add_client("eve")
    first.service.query("eve", digits.test.x[:2])
    first.close()
    second = prepare_server(model_dir, tmp_path / "state", defenses=["history:limit=5"], port=0)
    try:
        (notice,) = second.notices
        assert "1 client(s)" in notice and "history:limit=1000000" in notice
    finally:
        second.close()


def test_a_blocking_detector_refuses_the_client_until_an_admin_clears_it(
    digits_cnn, digits, tmp_path
):
    import subprocess
    import sys

    from modelheist.defenses.ood import MaxSoftmaxOod

    stage = MaxSoftmaxOod(threshold=0.999, window=4, share=0.5, policy="block")
    ledger = Ledger.open(tmp_path)
    keys = {name: ledger.add_client(name, admin=name == "root") for name in ("eve", "root")}
    service = PredictionService(digits_cnn, [stage], ledger=ledger, name="digits")
    noise = np.random.default_rng(0).random((8, *digits.input_shape), dtype=np.float32)
    with serve_in_thread(create_app(service)) as url:
        eve = HttpOracle(url, keys["eve"])
        eve.query(noise[:4])  # answered; its alarm blocks eve from the next request on
        refused = httpx.post(
            f"{url}/v1/models/digits/predict",
            json={"inputs": noise[4:5].tolist()},
            headers={"Authorization": f"Bearer {keys['eve']}"},
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "blocked"
        assert "keys clear" in refused.json()["error"]["message"]
        assert service.client("eve").queries_used == 4  # nothing answered, nothing counted
        headers = {"Authorization": f"Bearer {keys['root']}"}
        report = httpx.get(f"{url}/v1/admin/clients", headers=headers).json()
        record = next(c for c in report["clients"] if c["name"] == "eve")
        assert record["blocked"].startswith("ood-msp") and record["alarms"][0]["action"] == "block"
        cleared = subprocess.run(
            [sys.executable, "-m", "modelheist.cli", "keys", "clear", "eve", "--state", tmp_path],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cleared.returncode == 0, cleared.stderr
        assert len(eve.query(digits.test.x[:1])) == 1  # the running server answers again
