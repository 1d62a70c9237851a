import numpy as np
import pytest

from modelheist.api import Answer, LocalOracle, PredictionService
from modelheist.defenses import Defense, LabelsOnly, Rounding, TopK, parse_defense, parse_output
from modelheist.errors import BudgetExceededError, InvalidQueryError, ModelheistError


@pytest.fixture
def service(digits_cnn):
    return PredictionService(digits_cnn, max_batch=64)


def test_full_probabilities(service, digits):
    service.register_client("c")
    answer = service.query("c", digits.test.x[:5])
    assert answer.kind == "probabilities"
    np.testing.assert_allclose(answer.probabilities.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(answer.labels, answer.probabilities.argmax(axis=1))


def test_top_k(digits_cnn, digits):
    service = PredictionService(digits_cnn, [TopK(3)])
    service.register_client("c")
    full = digits_cnn.predict_proba(digits.test.x[:8])
    answer = service.query("c", digits.test.x[:8])
    assert service.output_kind == "top_k" and answer.probabilities is None
    assert answer.top_k.shape == (8, 3)
    np.testing.assert_array_equal(answer.top_k[:, 0], full.argmax(axis=1))
    assert (np.diff(answer.top_k_probabilities, axis=1) <= 0).all()
    np.testing.assert_allclose(
        np.sort(full, axis=1)[:, ::-1][:, :3], answer.top_k_probabilities, rtol=1e-5
    )


def test_labels_only(digits_cnn, digits):
    service = PredictionService(digits_cnn, [LabelsOnly()])
    service.register_client("c")
    answer = service.query("c", digits.test.x[:8])
    assert answer.kind == "labels" and answer.probabilities is None and answer.top_k is None
    np.testing.assert_array_equal(
        answer.labels, digits_cnn.predict_proba(digits.test.x[:8]).argmax(1)
    )


def test_rounding(digits_cnn, digits):
    service = PredictionService(digits_cnn, [Rounding(2)])
    service.register_client("c")
    answer = service.query("c", digits.test.x[:16])
    np.testing.assert_allclose(
        answer.probabilities * 100, np.round(answer.probabilities * 100), atol=1e-9
    )
    assert "rounded:2" in answer.flags
    soft = answer.soft_targets(10)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)


def test_rounding_after_labels_is_a_configuration_error(digits_cnn):
    with pytest.raises(ModelheistError, match="put it before"):
        PredictionService(digits_cnn, [LabelsOnly(), Rounding(2)])


def test_a_refusing_stage_answers_and_counts_nothing(digits_cnn, digits):
    class Refuse(Rounding):
        def apply(self, inputs, answer, state):
            state["seen"] = state.get("seen", 0) + len(inputs)
            raise ModelheistError("refused by policy")

    service = PredictionService(digits_cnn, [Refuse(2)])
    service.register_client("c")
    with pytest.raises(ModelheistError, match="refused by policy"):
        service.query("c", digits.test.x[:2])
    assert service.client("c").queries_used == 0 and service.ledger.audit("c") == []


def test_budget_is_a_hard_limit(service, digits):
    service.register_client("c", budget=10)
    service.query("c", digits.test.x[:6])
    with pytest.raises(BudgetExceededError, match="4 of 10 remaining"):
        service.query("c", digits.test.x[:5])
    assert service.client("c").queries_used == 6  # the refused batch was not counted
    service.query("c", digits.test.x[:4])
    with pytest.raises(BudgetExceededError):
        service.query("c", digits.test.x[:1])
    assert service.client("c").remaining == 0


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (np.zeros((2, 1, 8, 7)), "shape"),
        (np.zeros((2, 64)), "shape"),
        (np.zeros((0, 1, 8, 8)), "empty batch"),
        (np.zeros((65, 1, 8, 8)), "exceeds the limit"),
        (np.full((1, 1, 8, 8), np.nan), "NaN"),
        (np.full((1, 1, 8, 8), np.inf), "NaN or infinite"),
        (np.array([["a"] * 8] * 8)[None, None], "numbers"),
        ([[1, 2], [3]], "numeric array"),
    ],
)
def test_bad_queries_are_refused_and_not_counted(service, inputs, message):
    service.register_client("c", budget=100)
    with pytest.raises(InvalidQueryError, match=message):
        service.query("c", inputs)
    assert service.client("c").queries_used == 0


def test_unknown_client_and_bad_budget(service, digits):
    with pytest.raises(ModelheistError, match="unknown client"):
        service.query("ghost", digits.test.x[:1])
    with pytest.raises(ModelheistError, match="at least 1"):
        service.register_client("c", budget=0)


def test_oracle_splits_large_queries_and_tracks_budget(service, digits):
    oracle = LocalOracle.for_new_client(service, budget=200)
    answer = oracle.query(digits.test.x[:150])  # service max_batch is 64
    assert len(answer) == 150 and oracle.queries_used == 150 and oracle.remaining == 50
    assert oracle.input_shape == (1, 8, 8) and oracle.num_classes == 10


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("probs", "probabilities"),
        ("labels", "labels"),
        ("top-k:2", "top_k"),
        ("round:3", "probabilities"),
    ],
)
def test_parse_output(digits_cnn, spec, kind):
    assert PredictionService(digits_cnn, parse_output(spec)).output_kind == kind


@pytest.mark.parametrize(
    "spec",
    ["softmax", "top-k:0", "round:x", "top-k:j=2", "round:2,3", "labels:1", "round:decimals=-1"],
)
def test_bad_output_specs(spec):
    with pytest.raises(ModelheistError):
        parse_output(spec)


def test_keyword_spec_arguments():
    assert parse_defense("top-k:k=4").spec() == "top-k:4"


def test_soft_targets_of_each_kind():
    labels = np.array([2, 0])
    one_hot = Answer(labels).soft_targets(3)
    np.testing.assert_array_equal(one_hot, [[0, 0, 1], [1, 0, 0]])
    topk = Answer(labels, top_k=np.array([[2], [0]]), top_k_probabilities=np.array([[0.8], [0.5]]))
    np.testing.assert_allclose(topk.soft_targets(3), [[0.1, 0.1, 0.8], [0.5, 0.25, 0.25]])


class CountingDetector(Defense):
    """Flags a client once it has sent more than ``limit`` queries (a stateful stage)."""

    name = "counting"

    def __init__(self, limit: int):
        self.limit = limit

    def initial_state(self):
        return {"seen": 0}

    def apply(self, inputs, answer, state):
        state["seen"] += len(inputs)
        return answer.with_flag("alarm:counting") if state["seen"] > self.limit else answer

    def spec(self):
        return f"counting:{self.limit}"


def test_micro_batched_pipeline_equals_one_request_at_a_time(digits_cnn, digits):
    stages = [CountingDetector(5), parse_defense("noise:sigma=0.05"), Rounding(3), TopK(2)]
    together, alone = PredictionService(digits_cnn, stages), PredictionService(digits_cnn, stages)
    for service in (together, alone):
        service.register_client("a")
        service.register_client("b")
    batches = [("a", digits.test.x[:4]), ("b", digits.test.x[4:6]), ("a", digits.test.x[6:9])]
    joint = [r.answer for r in together.answer_many(batches)]
    single = [alone.query(client, x) for client, x in batches]
    for got, expected in zip(joint, single, strict=True):
        np.testing.assert_array_equal(got.top_k, expected.top_k)
        np.testing.assert_array_equal(got.top_k_probabilities, expected.top_k_probabilities)
        assert got.flags == expected.flags
    assert "alarm:counting" in joint[2].flags and "alarm:counting" not in joint[1].flags
    assert together.client("a").alarms == ["alarm:counting"] and together.client("b").alarms == []


def test_a_stage_can_raise_an_alarm_and_keep_per_client_state(digits_cnn, digits):
    service = PredictionService(digits_cnn, [CountingDetector(5), LabelsOnly()])
    service.register_client("a")
    service.register_client("b")
    assert service.query("a", digits.test.x[:4]).flags == ()
    assert "alarm:counting" in service.query("a", digits.test.x[:4]).flags
    assert service.query("b", digits.test.x[:4]).flags == ()  # state is per client
    assert service.client("a").alarms == ["alarm:counting"] and service.client("b").alarms == []
    assert service.client("a").defense_state == [{"seen": 8}, {}]


def test_inputs_outside_the_declared_range_are_refused(digits_cnn, digits):
    service = PredictionService(digits_cnn)
    service.register_client("c")
    assert service.input_range == (0.0, 1.0)
    with pytest.raises(InvalidQueryError, match=r"must lie in \[0, 1\]"):
        service.query("c", digits.test.x[:2] * 2)
    assert service.client("c").queries_used == 0


class NaNOnBright:
    """A victim whose output is not finite for bright inputs (as an overflowing network's)."""

    def __init__(self, model):
        self.model, self.card = model, model.card

    def predict_proba(self, x):
        p = self.model.predict_proba(x).astype(np.float64)
        p[x.reshape(len(x), -1).mean(axis=1) > 0.9] = np.nan
        return p


def test_micro_batch_isolates_a_request_whose_output_is_not_finite(digits_cnn, digits):
    service = PredictionService(NaNOnBright(digits_cnn))
    service.register_client("a")
    service.register_client("b")
    good, bright = digits.test.x[:3], np.ones((2, 1, 8, 8), np.float32)
    results = service.answer_many([("a", good), ("b", bright), ("a", good[:1])])
    assert isinstance(results[1], InvalidQueryError) and "not finite" in str(results[1])
    assert results[0].queries_used == 3 and results[2].queries_used == 4
    assert service.client("b").queries_used == 0 and service.ledger.audit("b") == []
    assert len(service.ledger.audit("a")) == 4


def test_budget_released_by_a_refused_request_serves_the_next_one(digits_cnn, digits):
    service = PredictionService(NaNOnBright(digits_cnn))
    service.register_client("a", budget=10)
    bright = np.ones((8, 1, 8, 8), np.float32)
    results = service.answer_many([("a", bright), ("a", digits.test.x[:5])])
    assert isinstance(results[0], InvalidQueryError)  # refused: its 8 reserved queries return
    assert results[1].queries_used == 5 and results[1].queries_remaining == 5
