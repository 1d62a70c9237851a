"""DAWN (Szyller et al. ACM MM '21): the API watermarks a keyed fraction of each client's queries
with wrong labels, keeps each client's set, and a surrogate trained on those answers is found
stolen while an independent model is not."""

import json

import numpy as np
import pytest
from scipy import stats

from modelheist.api import LocalOracle, PredictionService
from modelheist.api.ledger import Ledger
from modelheist.api.watermark_sets import dawn_watermark_sets
from modelheist.defenses import parse_defense
from modelheist.defenses.dawn import Dawn, selected, watermark_digests
from modelheist.errors import ModelheistError
from modelheist.models import TrainConfig, save_model
from modelheist.models.architectures import build_network, normalisation_stats
from modelheist.models.classifier import ModelCard, TorchClassifier
from modelheist.models.training import train_network
from modelheist.ownership import DawnScheme


def answers(service, client, x, batch=64):
    out = [service.query(client, x[i : i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate([a.labels for a in out]), np.concatenate([a.probabilities for a in out])


def test_a_keyed_fraction_gets_wrong_labels_and_the_same_answer_again(digits_cnn, digits):
    x = np.concatenate([digits.pool.x, digits.test.x])
    service = PredictionService(digits_cnn, [Dawn(rate=0.2, seed=7)])
    service.register_client("c")
    labels, probabilities = answers(service, "c", x)
    own = digits_cnn.predict_proba(x)
    changed = labels != own.argmax(1)
    low, high = stats.binom.ppf([1e-6, 1 - 1e-6], len(x), 0.2)
    assert low <= changed.sum() <= high  # about rate x queries, and never the model's label
    assert (probabilities.argmax(1) == labels).all()
    np.testing.assert_allclose(np.sort(probabilities, 1), np.sort(own, 1), rtol=1e-6)  # permuted
    again, _ = answers(service, "c", x[::-1], batch=17)  # asked again, in other requests
    np.testing.assert_array_equal(again[::-1], labels)
    state = service.client("c").stages[0]
    assert state.values["watermarked"] == 2 * changed.sum() and state.values["classes"] == 10
    np.testing.assert_array_equal(state.array("labels")[: changed.sum()], labels[changed])
    other = PredictionService(digits_cnn, [Dawn(rate=0.2, seed=8)])  # another key
    other.register_client("c")
    assert (answers(other, "c", x)[0] != own.argmax(1)).tolist() != changed.tolist()


def test_the_whole_canonical_input_decides(digits):
    key = b"k" * 32
    x = digits.test.x[:1].copy()
    base = watermark_digests(key, x)
    y = x.copy()
    y.reshape(-1)[-1] += 1e-3  # the last value only
    assert (watermark_digests(key, y) != base).any()
    z = x.copy()
    z[z == 0] = -0.0
    np.testing.assert_array_equal(watermark_digests(key, z), base)  # -0.0 is 0.0
    assert (watermark_digests(key, x.reshape(1, 1, 64, 1)) != base).any()  # the shape counts


def test_the_echo_gives_near_duplicates_of_a_watermark_its_wrong_label(digits_cnn, digits):
    """With a radius, an attacker's small steps around a watermarked input (JBDA's, T-RND's),
    and steps from those steps, get its wrong label too, distinct natural inputs do not, and
    the set keeps only the hash-selected inputs; without one, the steps are answered on their
    own."""
    x = digits.test.x
    stage = Dawn(rate=0.05, seed=3, radius=0.3)

    def hashed(v):  # the inputs the key itself selects
        return selected(watermark_digests(stage.key(), v), 0.05)

    rng = np.random.default_rng(0)
    marked = x[hashed(x)]
    steps = np.clip(marked + rng.choice([-0.25, 0.25], marked.shape), 0, 1).astype(np.float32)
    keep = ~hashed(steps)  # steps the key leaves alone: only the echo can change them
    marked, steps = marked[keep], steps[keep]
    assert len(marked) >= 5
    far = np.clip(marked + rng.choice([-0.5, 0.5], marked.shape), 0, 1).astype(np.float32)
    nearby = {  # steps inside the radius, steps beyond it, distinct natural inputs
        "steps": steps,
        "far": far[~hashed(far)],
        "unmarked": x[~hashed(x)][:100],
    }
    own = {name: digits_cnn.predict_proba(v).argmax(1) for name, v in nearby.items()}
    service = PredictionService(digits_cnn, [stage])
    service.register_client("c")
    wrong, _ = answers(service, "c", marked)
    assert (wrong != digits_cnn.predict_proba(marked).argmax(1)).all()
    echoed, probabilities = answers(service, "c", nearby["steps"])
    agrees = echoed == wrong
    assert (agrees | (own["steps"] == wrong)).all()  # each step carries its watermark's label
    assert (probabilities.argmax(1) == echoed).all()
    step_probabilities = digits_cnn.predict_proba(nearby["steps"])
    np.testing.assert_allclose(np.sort(probabilities, 1), np.sort(step_probabilities, 1), rtol=1e-6)
    state = service.client("c").stages[0]
    assert state.values["echoed"] == int((own["steps"] != wrong).sum())
    assert state.rows("labels") == len(marked)  # echoes are not watermarks
    assert state.rows("echo_labels") == len(marked)
    # a step from a step (beyond the radius of the watermark) inherits the label too, from an
    # earlier request's echo or, inside one request, from a step asked with it
    further = np.clip(2 * steps - marked, 0, 1).astype(np.float32)
    beyond = (np.abs(further - marked).max((1, 2, 3)) > 0.3) & ~hashed(further)
    beyond &= digits_cnn.predict_proba(further).argmax(1) != wrong
    assert beyond.sum() >= 3  # the label reaches them only through a step
    np.testing.assert_array_equal(answers(service, "c", further)[0][beyond], wrong[beyond])
    one_request = PredictionService(digits_cnn, [Dawn(rate=0.05, seed=3, radius=0.3)])
    one_request.register_client("c")
    answers(one_request, "c", marked)
    both = one_request.query("c", np.concatenate([further, steps])).labels[: len(further)]
    np.testing.assert_array_equal(both[beyond], wrong[beyond])
    for name in ("far", "unmarked"):  # beyond the radius: the model's own answers
        np.testing.assert_array_equal(answers(service, "c", nearby[name])[0], own[name])
    plain = PredictionService(digits_cnn, [Dawn(rate=0.05, seed=3)])
    plain.register_client("c")
    answers(plain, "c", marked)
    np.testing.assert_array_equal(answers(plain, "c", steps)[0], own["steps"])
    assert parse_defense(stage.spec()).radius == 0.3
    assert parse_defense("dawn:seed=1").spec() == "dawn:rate=0.005,seed=1"


def test_bad_settings_are_one_line(tmp_path):
    for spec, needle in [
        ("dawn:rate=0", "rate must lie"),
        ("dawn:rate=1.5", "rate must lie"),
        ("dawn:radius=-1", "radius must be"),
        ("dawn:radius=inf", "radius must be"),
        ("dawn:radius=nan", "radius must be"),
    ]:
        with pytest.raises(ModelheistError, match=needle):
            parse_defense(spec)
    with pytest.raises(ModelheistError, match="does not exist"):
        parse_defense(f"dawn:key_file={tmp_path}/none.key")
    with pytest.raises(ModelheistError, match="needs the owner's key"):
        parse_defense("dawn:seed=3").check_serving()
    from modelheist.defenses.base import check_pipeline

    with pytest.raises(ModelheistError, match="before the top-k"):
        check_pipeline([parse_defense("labels"), parse_defense("dawn:seed=1")])


@pytest.fixture(scope="module")
def served_and_stolen(digits_cnn, digits, tmp_path_factory):
    """A digits CNN served with DAWN at rate 0.1 to a thief (the attacker's pool, probabilities)
    and an honest client (a few test images); the thief's surrogate, trained on its answers."""
    state = tmp_path_factory.mktemp("dawn-state")
    ledger = Ledger.open(state)
    service = PredictionService(digits_cnn, [Dawn(rate=0.1, seed=11)], ledger=ledger)
    service.register_client("thief")
    service.register_client("honest")
    x = digits.pool.x
    labels, _ = answers(service, "thief", x)
    answers(service, "thief", x[:200])  # asked again: the same watermarks, counted once
    answers(service, "honest", digits.test.x[:30])
    ledger.close()
    mean, std = normalisation_stats(x)
    net = build_network("cnn", list(x.shape[1:]), 10, mean, std, 5)
    train_network(net, x, np.eye(10)[labels], TrainConfig(epochs=100, seed=5))  # fits them all
    card = ModelCard(
        architecture="cnn",
        dataset="surrogate",
        classes=[str(i) for i in range(10)],
        input_shape=list(x.shape[1:]),
        normalisation={"mean": mean, "std": std},
    )
    return state, TorchClassifier(net, card)


def test_a_surrogate_of_the_answers_is_stolen_an_independent_model_is_not(
    served_and_stolen, marked_cnn, digits
):
    state, surrogate = served_and_stolen
    sets = {kept.client: kept for kept in dawn_watermark_sets(state)}
    thief = sets["thief"]
    stage = Dawn(rate=0.1, seed=11)
    expected = selected(watermark_digests(stage.key(), digits.pool.x), 0.1).sum()
    assert len(thief) == expected > 50  # the 200 asked twice are in the set once
    scheme = DawnScheme(thief.inputs, thief.labels, thief.num_classes, "thief")

    def verdict(model):
        return scheme.verify(
            LocalOracle.for_new_client(PredictionService(model, []), None), 2.0**-64
        )

    stolen = verdict(surrogate)
    assert stolen.decision == "stolen" and stolen.p_value < 2.0**-64
    assert stolen.queries == len(thief) and stolen.details["chance_bound"] == pytest.approx(1 / 9)
    independent = verdict(marked_cnn)  # trained on the same data, never on the API's answers
    assert independent.decision == "not stolen" and independent.statistic < 0.2
    json.dumps(stolen.to_json())


def test_verify_dawn_from_the_command_line(served_and_stolen, tmp_path, cli_in_process, digits):
    state, surrogate = served_and_stolen
    folder = save_model(surrogate, tmp_path / "surrogate")
    proc = cli_in_process(
        "verify", "dawn", "--state", state, "--suspect", folder, "--json", tmp_path / "v.json"
    )
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["decision"] == "stolen" and verdict["matching_sets"] == ["thief"]
    assert verdict["per_client_significance"] == pytest.approx(0.01 / len(verdict["clients"]))
    assert "stolen: derived from the API's answers (watermark sets matched: thief)" in proc.stdout
    # a suspect for other inputs cannot be tested: a verdict of "cannot verify", exit 2
    from modelheist.data import load_dataset
    from modelheist.models import train_model

    other = save_model(
        train_model(load_dataset("breast-cancer", seed=0), "logreg"), tmp_path / "other"
    )
    proc = cli_in_process(
        "verify", "dawn", "--state", state, "--client", "thief", "--suspect", other
    )
    assert proc.returncode == 2 and "cannot verify" in proc.stdout and "shape" in proc.stdout
    for args, needle in [
        (["--state", tmp_path / "none", "--suspect", folder], "no modelheist state"),
        (["--state", state, "--client", "ghost", "--suspect", folder], "unknown client"),
        (["--state", state], "name one suspect"),
        (["--state", state, "--suspect", folder, "--significance", "1.5"], "must lie in (0, 1)"),
    ]:
        proc = cli_in_process("verify", "dawn", *args)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


def test_tarone_screens_out_sets_that_can_never_decide():
    from modelheist.ownership.dawn import tarone_screen

    assert tarone_screen([1e-30, 1e-30, 0.5, 0.2], 0.01) == (2, [True, True, False, False])
    assert tarone_screen([1e-30], 0.01) == (1, [True])
    m, testable = tarone_screen([0.5, 0.2], 0.01)  # none can decide: none is tested
    assert not any(testable)


def test_verify_sets_adjusts_for_the_sets_it_tests(served_and_stolen, marked_cnn):
    from modelheist.ownership.dawn import verify_sets

    state, surrogate = served_and_stolen
    sets = dawn_watermark_sets(state)
    schemes = [DawnScheme(s.inputs, s.labels, s.num_classes, s.client) for s in sets]

    def oracle(model):
        return LocalOracle.for_new_client(PredictionService(model, []), None)

    stolen = verify_sets(schemes, oracle(surrogate), 0.01)
    assert stolen.decision == "stolen" and stolen.matching == ["thief"]
    from modelheist.ownership.dawn import tarone_screen

    m, testable = tarone_screen([scheme.smallest_p_value for scheme in schemes], 0.01)
    assert stolen.tests == m and stolen.per_set_significance == pytest.approx(0.01 / m)
    assert sorted(stolen.clients) == sorted(
        s.client for s, t in zip(schemes, testable, strict=True) if t
    )
    smallest = min(e.p_value for e in stolen.clients.values())
    assert stolen.p_value == pytest.approx(min(1.0, stolen.tests * smallest))
    tested = sum(len(s) for s in sets if s.client in stolen.clients)
    assert stolen.p_value <= 0.01 and stolen.queries == tested
    independent = verify_sets(schemes, oracle(marked_cnn), 0.01)
    assert independent.decision == "not stolen" and independent.p_value > 0.01
    json.dumps(independent.to_json())
    with pytest.raises(ModelheistError, match="no DAWN watermark set"):
        verify_sets([], oracle(surrogate), 0.01)
