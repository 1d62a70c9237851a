"""An attack the API stops answering keeps what it bought: its query log and a partial surrogate.

The library case uses a real PredictionService whose client budget a second process with the
same key spends mid-attack; the CLI case kills a real `modelheist serve` under an attack.
"""

import json
import signal
import subprocess
import time

import httpx
import numpy as np
import pytest
from test_serve_cli import CLI, add_key, serving

from modelheist.api import LocalOracle, PredictionService
from modelheist.attacks import AttackerKnowledge, KnockoffNets
from modelheist.attacks.interruption import AttackInterrupted
from modelheist.errors import BudgetExceededError
from modelheist.models import load_model, save_model


class SharedKeyOracle(LocalOracle):
    """The attacker's client, whose key another of its processes also uses: after this oracle's
    first answer the other process spends what is left of the budget."""

    spend_from: np.ndarray

    def _query_batch(self, x):
        answer = super()._query_batch(x)
        left = self.remaining
        if left:
            LocalOracle(self.service, self.api_key).query(self.spend_from[:left])
        return answer


def test_exhausted_budget_keeps_the_answers_and_a_partial_surrogate(tmp_path, digits_cnn, digits):
    service = PredictionService(digits_cnn)
    oracle = SharedKeyOracle(service, service.add_client("attacker", 300))
    oracle.spend_from = digits.test.x
    attack = KnockoffNets(epochs=2, min_steps=20, query_batch=64)
    with pytest.raises(AttackInterrupted) as caught:
        attack.run(oracle, AttackerKnowledge(digits.pool.x, budget=300))
    stop = caught.value
    assert isinstance(stop.reason, BudgetExceededError)
    assert len(stop.log) == 64 and "stopped after 64 answered queries" in str(stop)
    x, answer = stop.log.joined()
    np.testing.assert_array_equal(answer.labels, digits_cnn.predict_proba(x).argmax(1))
    partial = stop.partial_surrogate()
    assert partial is not None and partial.card.training["partial"]
    assert partial.predict_proba(digits.test.x[:5]).shape == (5, 10)
    saved = np.load(stop.log.save(tmp_path / "log.npz"), allow_pickle=False)
    assert set(saved.files) == {"inputs", "labels", "probabilities"}
    np.testing.assert_array_equal(saved["inputs"], x)


def test_a_refusal_before_any_answer_is_a_plain_error(digits_cnn, digits):
    service = PredictionService(digits_cnn)
    oracle = LocalOracle.for_new_client(service, 5)
    LocalOracle(service, oracle.api_key).query(digits.test.x[:5])  # the key's other user spends it
    with pytest.raises(BudgetExceededError) as caught:
        KnockoffNets().run(oracle, AttackerKnowledge(digits.pool.x, budget=10))
    assert not isinstance(caught.value, AttackInterrupted)


def test_a_tabular_attack_cut_short_gets_a_network_that_fits(breast_cancer):
    from modelheist.attacks import AdaptiveRetraining
    from modelheist.defenses import parse_output
    from modelheist.models import train_model

    service = PredictionService(train_model(breast_cancer, "logreg"), parse_output("labels"))
    oracle = SharedKeyOracle(service, service.add_client("attacker", 200))
    oracle.spend_from = np.concatenate([breast_cancer.test.x] * 2)
    with pytest.raises(AttackInterrupted) as caught:  # the knowledge's default "cnn" cannot fit
        AdaptiveRetraining().run(oracle, AttackerKnowledge(breast_cancer.pool.x, budget=200))
    stop = caught.value
    assert len(stop.log) == 31 and stop.log.joined()[1].kind == "labels"  # d + 1 answers
    partial = stop.partial_surrogate()
    assert partial is not None and partial.card.architecture == "mlp"
    assert partial.predict_proba(breast_cancer.test.x[:4]).shape == (4, 2)


def test_killed_server_mid_attack_saves_partial_results(tmp_path, digits_cnn):
    model_dir = save_model(digits_cnn, tmp_path / "victim")
    state = tmp_path / "state"
    key = add_key(state, "eve", "--budget", 5000)
    out = tmp_path / "stolen"
    with serving(model_dir, state) as (server, url):
        attack = subprocess.Popen(
            [*CLI, "attack", "knockoff", "--strategy", "adaptive", "--transfer-set", "mnist5k",
             "--budget", "4000", "--epochs", "1", "--target", url, "--api-key", key,
             "--out", str(out), "--json", str(tmp_path / "a.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 240
        headers = {"Authorization": f"Bearer {key}"}
        while httpx.get(f"{url}/v1/account", headers=headers).json()["queries_used"] < 100:
            assert attack.poll() is None and time.monotonic() < deadline, attack.communicate()
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait()
        _, stderr = attack.communicate(timeout=300)
    assert attack.returncode == 3, stderr
    lines = [line for line in stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and "cannot reach" in lines[0] and str(out) in stderr, stderr
    figures = json.loads((tmp_path / "a.json").read_text())
    assert 100 <= figures["queries_used"] < 4000 and "cannot reach" in figures["interrupted"]
    log = np.load(out / "query_log.npz", allow_pickle=False)
    assert len(log["inputs"]) == len(log["labels"]) == figures["queries_used"]
    partial = load_model(out)
    np.testing.assert_array_equal(  # the answers in the log are the victim's
        log["labels"], digits_cnn.predict_proba(log["inputs"]).argmax(1)
    )
    assert partial.predict_proba(log["inputs"][:3]).shape == (3, 10)
