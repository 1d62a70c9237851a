"""`modelheist detect-eval`: benign, attack and recorded streams through detectors, with the
first alarm of each, as JSON, Markdown and a plot; bad input is one line."""

import json

import numpy as np
import pytest
from test_cli import assert_one_line_error, run

from modelheist.defenses.ood import calibrate_threshold
from modelheist.models import save_model
from modelheist.oracle import Answer
from modelheist.oracle.budgeted import QueryLog


@pytest.fixture(scope="module")
def saved_cnn(digits_cnn, tmp_path_factory):
    return save_model(digits_cnn, tmp_path_factory.mktemp("victims") / "cnn")


def test_streams_through_detectors(saved_cnn, digits_cnn, digits, tmp_path):
    log = QueryLog()
    noise = np.random.default_rng(3).random((60, *digits.input_shape), dtype=np.float32)
    p = digits_cnn.predict_proba(noise)
    log.record(noise, Answer(p.argmax(1), p))
    log.save(tmp_path / "query_log.npz")
    threshold = calibrate_threshold(digits_cnn.predict_proba(digits.validation.x).max(1), 0.05)
    proc = run(
        "detect-eval",
        "--victim", str(saved_cnn),
        "--detector", f"ood-msp:threshold={threshold},window=20,share=0.5",
        "--stream", "evaluation-shuffled",
        "--stream", "uniform",
        "--query-log", str(tmp_path / "query_log.npz"),
        "--budget", "80",
        "--batch", "4",
        "--json", str(tmp_path / "out.json"),
        "--markdown", str(tmp_path / "out.md"),
        "--plot", str(tmp_path / "out.png"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    document = json.loads((tmp_path / "out.json").read_text())
    rows = {row["stream"]: row for row in document["streams"]}
    assert rows["evaluation-shuffled"]["queries"] == len(digits.test.x)
    assert rows["evaluation-shuffled"]["first_alarm"] is None
    assert rows["uniform"]["queries"] == 80 and rows["uniform"]["first_alarm"] <= 40
    logged = rows[str(tmp_path / "query_log.npz")]
    assert logged["kind"] == "query log" and logged["first_alarm"] <= 40
    assert "| uniform | attack | 80 |" in (tmp_path / "out.md").read_text()
    assert (tmp_path / "out.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--detector", "prada:delta=2"], "delta must lie in"),
        (["--detector", "prada", "--stream", "nonsense"], "unknown stream"),
        (["--detector", "prada", "--query-log", "/nowhere.npz"], "not a query log"),
    ],
)
def test_bad_input_is_one_line(saved_cnn, extra, needle):
    assert_one_line_error(run("detect-eval", "--victim", str(saved_cnn), *extra), needle)


def test_a_pickled_query_log_is_refused(saved_cnn, tmp_path):
    np.savez(tmp_path / "log.npz", inputs=np.array([{"a": 1}], dtype=object))
    proc = run(
        "detect-eval", "--victim", str(saved_cnn), "--detector", "prada",
        "--query-log", str(tmp_path / "log.npz"),
    )  # fmt: skip
    assert_one_line_error(proc, "not a query log")
