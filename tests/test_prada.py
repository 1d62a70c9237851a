"""PRADA (Juuti et al. EuroS&P '19): the growing-set rules of the authors' reference, the
Shapiro-Wilk alarm, per-client state that survives a restart, and one-line configuration errors."""

import numpy as np
import pytest
from scipy import stats

from modelheist.api.service import PredictionService
from modelheist.defenses import parse_defense
from modelheist.defenses.prada import Prada
from modelheist.errors import ModelheistError


def reference_prada(xs, labels, delta, test_every=10):
    """The reference's rules, re-stated as plainly as possible (a Python loop over every
    member): (first alarm query or None, thresholds, W at each test)."""
    growing, joined, thresholds, distances = {}, {}, {}, {}
    first, tests, alarmed = None, [], False
    for i, (x, c) in enumerate(
        zip(xs.reshape(len(xs), -1).astype(np.float64), labels, strict=True)
    ):
        if c not in growing:
            growing[c], joined[c], thresholds[c] = [x], [0.0], 0.0
        else:
            d = min(float(np.sqrt(((m - x) ** 2).sum())) for m in growing[c])
            distances.setdefault(c, []).append(d)
            if d > thresholds[c]:
                growing[c].append(x)
                joined[c].append(d)
                thresholds[c] = max(thresholds[c], np.mean(joined[c]) - np.std(joined[c]))
        if i % test_every == 0:
            pooled = np.array([d for ds in distances.values() if len(ds) >= 10 for d in ds])
            if len(pooled):
                pooled = pooled[np.abs(pooled - pooled.mean()) < 3 * pooled.std()]
            if len(pooled) > 100:
                w = stats.shapiro(pooled).statistic
                tests.append(w)
                now = w < delta
                if now and not alarmed and first is None:
                    first = i + 1
                alarmed = now
    return first, thresholds, tests


def synthetic_stream(digits, n_seeds=20, rounds=4, step=0.1, seed=0):
    """JBDA-like queries: natural seeds, then each earlier query nudged by a small signed step
    (what PRADA is built to notice)."""
    rng = np.random.default_rng(seed)
    x = digits.pool.x[:n_seeds].astype(np.float32)
    for _ in range(rounds):
        x = np.concatenate([x, np.clip(x + step * rng.choice([-1, 1], size=x.shape), 0, 1)])
    return x.astype(np.float32)


def run_stage(stage, model, xs, batch=7):
    service = PredictionService(model, [stage])
    service.register_client("c")
    for start in range(0, len(xs), batch):
        service.query("c", xs[start : start + batch])
    client = service.client("c")
    return client.stages[0], client.alarms


@pytest.mark.parametrize("stream", ["natural", "synthetic"])
def test_matches_the_reference_rules(stream, digits_cnn, digits):
    xs = digits.test.x[:300] if stream == "natural" else synthetic_stream(digits)[:300]
    labels = digits_cnn.predict_proba(xs).argmax(1)
    first, thresholds, tests = reference_prada(xs, labels, delta=0.95)
    state, alarms = run_stage(Prada(delta=0.95), digits_cnn, xs)
    assert state.values["processed"] == len(xs)
    ours = {int(c): t for c, t in state.values["thresholds"].items()}
    assert ours.keys() == thresholds.keys()
    for c, t in thresholds.items():
        assert ours[c] == pytest.approx(t, rel=1e-4, abs=1e-5)
    assert state.values.get("first_alarm_query") == first
    assert len(tests) > 0  # the streams are long enough to be tested
    if state.values["statistic"] is not None:
        assert state.values["statistic"] == pytest.approx(tests[-1], abs=1e-4)


def test_synthetic_queries_raise_an_alarm_natural_ones_do_not(digits_cnn, digits):
    rng = np.random.default_rng(1)
    natural = digits.test.x[rng.permutation(len(digits.test.x))[:320]]
    state, alarms = run_stage(Prada(delta=0.9), digits_cnn, natural)
    assert alarms == [] and state.values["statistic"] > 0.9
    state, alarms = run_stage(Prada(delta=0.9), digits_cnn, synthetic_stream(digits))
    assert len(alarms) >= 1 and alarms[0].stage == "prada"
    assert alarms[0].statistic < 0.9 and "Shapiro-Wilk" in alarms[0].reason
    assert state.values["first_alarm_query"] <= 320


def test_state_survives_a_restart(tmp_path, digits_cnn, digits):
    from modelheist.api.ledger import Ledger

    xs = synthetic_stream(digits)
    whole, _ = run_stage(Prada(delta=0.9), digits_cnn, xs)
    ledger = Ledger.open(tmp_path)
    service = PredictionService(digits_cnn, [Prada(delta=0.9)], ledger=ledger)
    service.register_client("c")
    half = len(xs) // 2
    for start in range(0, half, 7):
        service.query("c", xs[start : min(start + 7, half)])
    ledger.close()
    again = PredictionService(digits_cnn, [Prada(delta=0.9)], ledger=Ledger.open(tmp_path))
    for start in range(half, len(xs), 7):
        again.query("c", xs[start : start + 7])
    resumed = again.client("c").stages[0]
    assert resumed.values == whole.values
    np.testing.assert_array_equal(resumed.array("distances"), whole.array("distances"))


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("prada:delta=1.5", "delta must lie in"),
        ("prada:delta=0", "delta must lie in"),
        ("prada:test_every=0", "test_every"),
        ("prada:colour=3", "unknown argument"),
    ],
)
def test_bad_settings_are_one_line(spec, needle):
    with pytest.raises(ModelheistError, match=needle):
        parse_defense(spec)


def test_evasive_streams(digits_cnn, digits):
    from modelheist.experiments.detection import interleaved, replay, replay_accounts

    attack = synthetic_stream(digits)
    mixed = interleaved(attack[:50], digits.test.x[:30])
    assert len(mixed) == 80
    np.testing.assert_array_equal(mixed[0], attack[0])
    np.testing.assert_array_equal(mixed[1], digits.test.x[0])
    np.testing.assert_array_equal(mixed[-1], attack[49])  # the natural images ran out
    alone = replay(digits_cnn, [Prada(delta=0.9)], attack).first_alarm
    first, per_account = replay_accounts(digits_cnn, lambda: [Prada(delta=0.9)], attack, 1)
    assert first == alone and per_account == [alone]
    first, per_account = replay_accounts(digits_cnn, lambda: [Prada(delta=0.9)], attack, 3)
    assert len(per_account) == 3
    flagged = [(q - 1) * 3 + i + 1 for i, q in enumerate(per_account) if q is not None]
    assert first == (min(flagged) if flagged else None)


def test_one_replay_answers_for_every_delta(digits_cnn, digits):
    """Under the flag policy delta only decides alarms: the first alarm and the alarm count a
    replay at each delta gets are those read from one replay's trace (benchmarks/prada.py)."""
    from modelheist.experiments.detection import alarms_below, replay

    stream = np.concatenate([digits.test.x[:150], synthetic_stream(digits)[:250]])
    traced = replay(digits_cnn, [Prada(delta=0.99)], stream)
    seen = set()
    for delta in (0.8, 0.9, 0.95, 0.99):
        direct = replay(digits_cnn, [Prada(delta=delta)], stream)
        first, alarms = alarms_below(traced.trace, delta)
        assert (first, alarms) == (direct.first_alarm, len(direct.alarms))
        seen.add(first)
    assert len(seen) > 1  # the deltas do not all agree: the check can tell them apart


def test_a_requests_batching_does_not_change_anything(digits_cnn, digits):
    """One query per request or 64 (every class founded inside the first request): the same
    distances, thresholds and alarms, exactly."""
    xs = np.concatenate([synthetic_stream(digits)[:200], digits.test.x[:100]])
    one, alarms_one = run_stage(Prada(delta=0.95), digits_cnn, xs, batch=1)
    many, alarms_many = run_stage(Prada(delta=0.95), digits_cnn, xs, batch=64)
    assert one.values == many.values and one.values["processed"] == len(xs)
    np.testing.assert_array_equal(one.array("distances"), many.array("distances"))
    assert len(one.array("distances")) == len(xs) - len(one.values["thresholds"])  # founders
    assert [a.statistic for a in alarms_one] == [a.statistic for a in alarms_many]
