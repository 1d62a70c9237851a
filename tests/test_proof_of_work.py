"""Calibrated proof of work (Dziedzic et al. ICLR '22): hashcash bound to the inputs, a
difficulty that grows with what a client's answers revealed beyond a regular user's, solved
transparently by both oracles, and wrong, replayed or misdirected proofs refused (4xx) with
nothing answered or counted."""

import httpx
import numpy as np
import pytest

from modelheist.api.http_client import HttpOracle
from modelheist.api.http_server import create_app, serve_in_thread
from modelheist.api.ledger import Ledger
from modelheist.api.local import LocalOracle
from modelheist.api.service import PredictionService
from modelheist.defenses import parse_defense
from modelheist.defenses.proof_of_work import (
    PROOF_HEADER,
    ProofOfWork,
    calibrate_costs,
    inputs_digest,
    leading_zero_bits,
    proof_digest,
    solve,
    solve_challenge,
)
from modelheist.errors import InvalidProofError, ModelheistError, ProofOfWorkRequired


def test_a_solution_has_the_asked_zero_bits_and_is_bound_to_the_inputs():
    x = np.zeros((2, 3), np.float32)
    nonce = bytes(range(16))
    counter = solve(nonce, inputs_digest(x), 10)
    assert leading_zero_bits(proof_digest(nonce, inputs_digest(x), counter)) >= 10
    assert inputs_digest(x) != inputs_digest(x.reshape(3, 2))  # the shape is part of it
    assert inputs_digest(x) != inputs_digest(x + 1e-7)


def pow_stage(model, data, **options):
    mean, std = calibrate_costs(model.predict_proba(data.validation.x))
    return ProofOfWork(mean, std, **{"free_sigma": 1.0, "max_bits": 6, **options})


def test_regular_users_work_little_noise_clients_work_more(digits_cnn, digits):
    service = PredictionService(digits_cnn, [pow_stage(digits_cnn, digits)])
    regular = LocalOracle.for_new_client(service, None, "regular")
    regular.query(digits.test.x[:300])
    attacker = LocalOracle.for_new_client(service, None, "attacker")
    noise = np.random.default_rng(0).random((300, *digits.input_shape), dtype=np.float32)
    answers = [attacker.query(noise[i : i + 20]) for i in range(0, 300, 20)]
    assert sum(len(a) for a in answers) == 300 and attacker.queries_used == 300
    stage = service.defenses[0]
    assert stage.required_bits(service.client("regular").stages[0], 20) == 0
    assert stage.required_bits(service.client("attacker").stages[0], 20) == 6 + 5  # per query
    assert attacker.proof_seconds > regular.proof_seconds == 0.0


def test_wrong_replayed_and_misdirected_proofs_are_refused(digits_cnn, digits):
    service = PredictionService(digits_cnn, [pow_stage(digits_cnn, digits, free_sigma=0.0)])
    key = service.add_client("eve", None)
    noise = np.random.default_rng(1).random((40, *digits.input_shape), dtype=np.float32)
    LocalOracle(service, key).query(noise[:20])  # enough to need proofs from now on
    used = service.client("eve").queries_used
    with pytest.raises(ProofOfWorkRequired) as needed:
        service.predict(key, noise[20:30])
    proof = solve_challenge(needed.value.challenge, noise[20:30])
    with pytest.raises(InvalidProofError, match="other inputs"):
        service.predict(key, noise[30:40], proof)
    with pytest.raises(ProofOfWorkRequired) as needed:
        service.predict(key, noise[20:30])
    nonce = needed.value.challenge["nonce"]
    bits = needed.value.challenge["bits"]
    digest = inputs_digest(noise[20:30])
    wrong = next(
        c
        for c in range(10**6)
        if leading_zero_bits(proof_digest(bytes.fromhex(nonce), digest, c)) < bits
    )
    with pytest.raises(InvalidProofError, match="wrong proof"):
        service.predict(key, noise[20:30], f"{nonce}:{wrong}")
    with pytest.raises(ProofOfWorkRequired) as needed:
        service.predict(key, noise[20:30])
    proof = solve_challenge(needed.value.challenge, noise[20:30])
    assert len(service.predict(key, noise[20:30], proof).answer) == 10
    with pytest.raises(ProofOfWorkRequired, match="already used"):  # a replay: a new challenge
        service.predict(key, noise[20:30], proof)
    with pytest.raises(ProofOfWorkRequired, match="unknown"):
        service.predict(key, noise[20:30], "zz:not-a-number")
    assert service.client("eve").queries_used == used + 10  # only the proven request counted


def test_the_challenge_over_http(digits_cnn, digits, tmp_path):
    stage = pow_stage(digits_cnn, digits, free_sigma=0.0)
    ledger = Ledger.open(tmp_path)
    key = ledger.add_client("eve")
    service = PredictionService(digits_cnn, [stage], ledger=ledger, name="digits")
    noise = np.random.default_rng(2).random((60, *digits.input_shape), dtype=np.float32)
    with serve_in_thread(create_app(service)) as url:
        oracle = HttpOracle(url, key, encoding="json")
        for i in range(0, 60, 20):
            assert len(oracle.query(noise[i : i + 20])) == 20
        assert oracle.proof_seconds > 0 and oracle.queries_used == 60
        headers = {"Authorization": f"Bearer {key}"}
        body = {"inputs": noise[:5].tolist()}
        first = httpx.post(f"{url}/v1/models/digits/predict", json=body, headers=headers)
        assert first.status_code == 428
        error = first.json()["error"]
        assert error["code"] == "proof_of_work_required" and error["challenge"]["bits"] >= 1
        proof = solve_challenge(error["challenge"], noise[:5])
        answered = httpx.post(
            f"{url}/v1/models/digits/predict", json=body, headers={**headers, PROOF_HEADER: proof}
        )
        assert answered.status_code == 200 and answered.json()["queries_used"] == 65
        replayed = httpx.post(
            f"{url}/v1/models/digits/predict", json=body, headers={**headers, PROOF_HEADER: proof}
        )
        assert replayed.status_code == 428  # the used challenge is gone: a new one
        assert replayed.json()["error"]["challenge"]["nonce"] != error["challenge"]["nonce"]
        wrong = httpx.post(
            f"{url}/v1/models/digits/predict",
            json={"inputs": noise[5:10].tolist()},
            headers={
                **headers,
                PROOF_HEADER: solve_challenge(replayed.json()["error"]["challenge"], noise[:5]),
            },
        )
        assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "proof_invalid"
        schema = httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/models/{name}/predict"]
        assert "428" in schema["post"]["responses"]
        assert PROOF_HEADER in {p["name"] for p in schema["post"]["parameters"]}
    assert service.client("eve").queries_used == 65


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("pow:benign_mean=2,benign_std=0.1", "benign_mean"),
        ("pow:benign_mean=0.1,benign_std=0", "benign_std"),
        ("pow:benign_mean=0.1,benign_std=0.1,max_bits=99", "max_bits"),
    ],
)
def test_bad_settings_are_one_line(spec, needle):
    with pytest.raises(ModelheistError, match=needle):
        parse_defense(spec)
