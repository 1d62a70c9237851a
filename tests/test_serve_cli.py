"""`modelheist serve`, `keys`, `query` and `attack --target` as a user runs them: real processes.

Includes the crash test: a `kill -9` of the server under load loses no record of an answered
query, and the server restarts on the same state.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager

import httpx
import numpy as np
import pytest

from modelheist.api.ledger import Ledger
from modelheist.api.service import input_digests
from modelheist.models import save_model

CLI = [sys.executable, "-m", "modelheist.cli"]


def run(*args, **kwargs):
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs
    )


def assert_one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


@contextmanager
def serving(model_dir, state, *options):
    """`modelheist serve` on an ephemeral port; yields (process, base URL)."""
    proc = subprocess.Popen(
        [*CLI, "serve", str(model_dir), "--port", "0", "--state", str(state), *map(str, options)],
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stderr.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    assert match, line + proc.stderr.read()
    url = match.group(0)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        proc.stderr.close()


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory, digits_cnn):
    return save_model(digits_cnn, tmp_path_factory.mktemp("models") / "digits-cnn")


def add_key(state, name, *options):
    proc = run("keys", "add", name, "--state", state, *options)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_keys_commands(tmp_path, cli_in_process):
    key = add_key(tmp_path, "alice", "--budget", 100, "--rate", "5/s")
    assert key.startswith("mh-") and len(key) > 40
    assert key not in (tmp_path / "modelheist.sqlite").read_bytes().decode("latin-1")  # only a hash
    listing = cli_in_process("keys", "list", "--state", tmp_path)
    assert listing.returncode == 0 and "alice" in listing.stdout and "100" in listing.stdout
    assert_one_line_error(
        cli_in_process("keys", "add", "alice", "--state", tmp_path), "already exists"
    )
    assert_one_line_error(
        cli_in_process("keys", "add", "bob", "--state", tmp_path, "--rate", "fast"), "--rate"
    )
    assert_one_line_error(
        cli_in_process("keys", "add", "bob", "--state", tmp_path, "--budget", 0), "budget"
    )
    assert cli_in_process("keys", "revoke", "alice", "--state", tmp_path).returncode == 0
    assert_one_line_error(
        cli_in_process("keys", "revoke", "ghost", "--state", tmp_path), "unknown client"
    )
    assert cli_in_process("keys", "reset", "alice", "--state", tmp_path).returncode == 0
    assert_one_line_error(
        cli_in_process("keys", "reset", "ghost", "--state", tmp_path), "unknown client"
    )
    assert_one_line_error(
        cli_in_process("keys", "list", "--state", tmp_path / "none"), "no state folder"
    )


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--defense", "blur:3"], "unknown output/defense spec"),
        (["--defense", "labels", "--output", "round:2"], "needs full probabilities"),
        (["--name", "bad name!"], "--name"),
        (["--port", "70000"], "--port"),
        (["--defense", "noise:sigma=0.1,key=0123456789abcdef01234567"], "never given inline"),
        (["--defense", "noise:sigma=0.1,key_file=no/such.key"], "does not exist"),
        (["--defense", "noise:sigma=0.1,seed=3"], "needs the owner's key"),
    ],
)
def test_serve_refuses_bad_options(tmp_path, cnn_dir, cli_in_process, options, needle):
    state = tmp_path / "state"
    assert_one_line_error(cli_in_process("serve", cnn_dir, "--state", state, *options), needle)
    assert not state.exists()  # a refused start touches no state folder


def test_key_files_and_a_keyed_stage(tmp_path, cnn_dir, digits):
    key = tmp_path / "keys" / "noise.key"
    made = run("keys", "secret", key)
    assert made.returncode == 0 and key.read_text().strip() not in made.stdout + made.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    assert_one_line_error(run("keys", "secret", key), "already exists")
    state = tmp_path / "state"
    eve = add_key(state, "eve")
    with serving(cnn_dir, state, "--defense", f"noise:sigma=0.05,key_file={key}") as (proc, url):
        response = httpx.post(
            f"{url}/v1/models/digits-cnn/predict",
            json={"inputs": digits.test.x[:2].tolist()},
            headers={"Authorization": f"Bearer {eve}"},
        )
        assert response.status_code == 200
    database = (state / "modelheist.sqlite").read_bytes()
    assert key.read_text().strip().encode() not in database  # only the path is stored


def test_a_state_folder_of_a_newer_version_is_refused(tmp_path, cnn_dir):
    import sqlite3

    state = tmp_path / "state"
    add_key(state, "eve")
    raw = sqlite3.connect(state / "modelheist.sqlite")
    raw.execute("UPDATE meta SET value='99' WHERE key='schema'")
    raw.commit()
    raw.close()
    before = (state / "modelheist.sqlite").read_bytes()
    assert_one_line_error(run("serve", cnn_dir, "--state", state), "schema 99")
    assert_one_line_error(run("keys", "list", "--state", state), "nothing was changed")
    assert (state / "modelheist.sqlite").read_bytes() == before


def test_serve_on_a_taken_port_is_one_line(tmp_path, cnn_dir):
    with serving(cnn_dir, tmp_path / "a") as (_, url):
        port = url.rsplit(":", 1)[1]
        assert_one_line_error(
            run("serve", cnn_dir, "--state", tmp_path / "b", "--port", port), "cannot listen"
        )


def test_query_and_attack_through_a_served_url(
    tmp_path, cnn_dir, digits, digits_cnn, cli_in_process
):
    state = tmp_path / "state"
    key = add_key(state, "eve", "--budget", 400)
    inputs = tmp_path / "x.npy"
    np.save(inputs, digits.test.x[:4])
    with serving(cnn_dir, state, "--output", "top-k:2", "--name", "digits") as (_, url):
        proc = run(
            "query", inputs, "--target", url, "--api-key", key, "--json", tmp_path / "q.json"
        )
        assert proc.returncode == 0, proc.stderr
        answers = json.loads((tmp_path / "q.json").read_text())
        assert [a["label"] for a in answers["answers"]] == digits_cnn.predict_proba(
            digits.test.x[:4]
        ).argmax(1).tolist()
        assert (
            all(len(a["top_k"]) == 2 for a in answers["answers"]) and answers["queries_used"] == 4
        )

        proc = run(
            *["attack", "knockoff", "--transfer-set", "digits", "--budget", "200", "--epochs", "3"],
            *["--min-steps", "50"],  # the API's side is tested here, not the learning
            "--target", url, "--victim", cnn_dir, "--json", tmp_path / "a.json",
            env={**os.environ, "MODELHEIST_API_KEY": key},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        figures = json.loads((tmp_path / "a.json").read_text())
        assert figures["queries_used"] == 200 and figures["output"] == "top_k"
        assert 0.0 <= figures["fidelity_test"] <= 1.0

        rest = run(
            *["attack", "knockoff", "--transfer-set", "digits", "--budget", "500", "--epochs", "1"],
            *["--min-steps", "50"],
            "--target", url, "--api-key", key, "--json", tmp_path / "b.json",
        )  # fmt: skip
        assert rest.returncode == 0, rest.stderr  # spends what the key has left, and says so
        assert json.loads((tmp_path / "b.json").read_text())["queries_used"] == 400 - 4 - 200
        assert "allows 196 queries" in rest.stderr
        spent = cli_in_process(
            *["attack", "knockoff", "--transfer-set", "digits", "--budget", "10"],
            "--target",
            url,
            "--api-key",
            key,
        )
        assert_one_line_error(spent, "no queries left")
        assert_one_line_error(
            cli_in_process("query", inputs, "--target", url, "--api-key", "mh-wrong"),
            "unknown API key",
        )
        assert_one_line_error(
            cli_in_process(
                "query", inputs, "--target", url, "--api-key", key, "--output", "labels"
            ),
            "--output applies",
        )
    assert_one_line_error(
        cli_in_process("query", inputs, "--target", url, "--api-key", key), "cannot reach"
    )
    assert_one_line_error(cli_in_process("query", inputs), "name one model")


def test_query_an_image_folder_in_process(tmp_path, cnn_dir, digits, cli_in_process):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((digits.test.x[i, 0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    proc = cli_in_process(
        "query", folder, "--victim", cnn_dir, "--output", "labels", "--json", tmp_path / "q.json"
    )
    assert proc.returncode == 0, proc.stderr
    answers = json.loads((tmp_path / "q.json").read_text())["answers"]
    assert [a["input"] for a in answers] == ["0.png", "1.png", "2.png"]
    (folder / "broken.png").write_bytes(b"not a png")
    assert_one_line_error(cli_in_process("query", folder, "--victim", cnn_dir), "cannot read image")
    np.save(tmp_path / "bad.npy", np.zeros((2, 3)))
    assert_one_line_error(
        cli_in_process("query", tmp_path / "bad.npy", "--victim", cnn_dir), "shape"
    )
    (tmp_path / "empty.npy").write_bytes(b"")
    assert_one_line_error(
        cli_in_process("query", tmp_path / "empty.npy", "--victim", cnn_dir), "not a numeric"
    )
    np.save(tmp_path / "none.npy", np.zeros((0, 1, 8, 8), np.float32))
    assert_one_line_error(
        cli_in_process("query", tmp_path / "none.npy", "--victim", cnn_dir), "no inputs"
    )
    assert_one_line_error(
        cli_in_process("query", tmp_path / "none.npy", "--target", "http://[::1", "--api-key", "k"),
        "cannot reach",
    )


def test_kill_9_under_load_loses_no_answered_query(tmp_path, cnn_dir, digits):
    state = tmp_path / "state"
    key = add_key(state, "load")
    answered: list[tuple[str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()
    x_all = digits.test.x

    def hammer(seed):
        rng = np.random.default_rng(seed)
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
            while not stop.is_set():
                x = x_all[rng.choice(len(x_all), int(rng.integers(1, 5)))]
                try:
                    response = client.post(predict, json={"inputs": x.tolist()})
                except httpx.HTTPError:
                    return  # the server is gone
                assert response.status_code == 200, response.text
                labels = [p["label"] for p in response.json()["predictions"]]
                with lock:
                    answered.extend(zip(input_digests(x), labels, strict=True))

    history = ("--defense", "history:limit=1000000")
    with serving(cnn_dir, state, *history) as (proc, url):
        predict = f"{url}/v1/models/digits-cnn/predict"
        threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(answered) > 50, "the load did not get going"
    ledger = Ledger.open(state)
    audit = ledger.audit("load")
    used = ledger.client("load").queries_used
    (kept,) = ledger.stage_state("load", "history:limit=1000000").values()
    ledger.close()
    missing = Counter(answered) - Counter((r.input_sha256, r.label) for r in audit)
    assert not missing, f"{sum(missing.values())} answered queries have no audit record"
    assert used == len(audit) >= len(answered)  # usage and audit log committed together
    inputs = np.concatenate(
        [np.frombuffer(data, np.float32) for name, _, _, data in kept.records if name == "inputs"]
    ).reshape(-1, 1, 8, 8)
    assert input_digests(inputs) == [r.input_sha256 for r in audit]  # the stage's state too

    with serving(cnn_dir, state, *history) as (_, url):
        headers = {"Authorization": f"Bearer {key}"}
        account = httpx.get(f"{url}/v1/account", headers=headers).json()
        assert account["queries_used"] == used
        response = httpx.post(
            f"{url}/v1/models/digits-cnn/predict",
            json={"inputs": x_all[:2].tolist()},
            headers=headers,
        )
        assert response.status_code == 200 and response.json()["queries_used"] == used + 2
