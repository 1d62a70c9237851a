"""Schemathesis against the live server's /openapi.json: no input a client can send causes a 5xx,
and every answer matches the published schema (status codes, content type, body)."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth

from modelheist.api.http_server import create_app, serve_in_thread
from modelheist.api.ledger import Ledger
from modelheist.api.service import PredictionService
from modelheist.defenses import parse_defense

EXAMPLES_PER_OPERATION = 60  # over 4 variants and 6 operations: a few hundred cases
MODEL = "digits"


@pytest.fixture(scope="module")
def live(digits_cnn, tmp_path_factory):
    ledger = Ledger.open(tmp_path_factory.mktemp("fuzz-state"))
    key = ledger.add_client("fuzzer", admin=True)
    stages = [parse_defense("noise:sigma=0.01")]
    service = PredictionService(digits_cnn, stages, max_batch=16, ledger=ledger, name=MODEL)
    with serve_in_thread(create_app(service, max_body_bytes=100_000)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json"), key


def test_schema_lists_every_operation(live):
    schema, _ = live
    operations = {op.ok().label for op in schema.get_all_operations()}
    assert operations == {
        "GET /healthz",
        "GET /v1/models",
        "GET /v1/account",
        "POST /v1/models/{name}/predict",
        "GET /metrics",
        "GET /v1/admin/clients",
    }


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize("authorised", [True, False], ids=["valid-key", "generated-auth"])
def test_no_5xx_and_answers_match_the_schema(live, mode, authorised):
    schema, key = live
    fixed = {}
    if authorised:  # reach the validation behind authentication and routing
        fixed = {"headers": {"Authorization": f"Bearer {key}"}, "path_parameters": {"name": MODEL}}
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and not operation.body and not operation.path_parameters:
            continue  # nothing to negate

        @given(
            case=operation.as_strategy(
                mode,
                **{
                    k: v
                    for k, v in fixed.items()
                    if k != "path_parameters" or operation.path_parameters
                },
            )
        )
        @settings(
            max_examples=EXAMPLES_PER_OPERATION // 4,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case):
            # with the key fixed, schemathesis cannot make the auth invalid: its ignored-auth
            # check would read the generated X-Proof-Of-Work header as a changed credential
            response = case.call_and_validate(excluded_checks=[ignored_auth] if authorised else [])
            assert response.status_code < 500, (case.method, case.path, response.text)

        check()
