import numpy as np
import pytest

from modelheist.api import LocalOracle, PredictionService
from modelheist.defenses import (
    Capabilities,
    Defense,
    LabelsOnly,
    Rounding,
    TopK,
    parse_defense,
    parse_output,
)
from modelheist.errors import (
    BudgetExceededError,
    InvalidQueryError,
    ModelheistError,
    QueryRefusedError,
)
from modelheist.oracle import Answer


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
    assert service.ledger.audit("c")[0].flags == ("rounded:2",)
    soft = answer.soft_targets(10)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)


def test_rounding_after_labels_is_a_configuration_error(digits_cnn):
    with pytest.raises(ModelheistError, match="put it before"):
        PredictionService(digits_cnn, [LabelsOnly(), Rounding(2)])


def test_a_refusing_stage_answers_and_counts_nothing(digits_cnn, digits):
    class Refuse(Rounding):
        def apply(self, context, inputs, answer, state):
            raise QueryRefusedError("refused by policy")

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
    """Alarms once a client has sent more than ``limit`` queries; keeps each input's norm (a
    stateful stage with both kinds of state)."""

    name = "counting"
    capabilities = Capabilities(stateful=True, raises_alarms=True)

    def __init__(self, limit: int):
        self.limit = limit

    def initial_values(self):
        return {"seen": 0}

    def apply(self, context, inputs, answer, state):
        state.values["seen"] += len(inputs)
        state.append("norms", np.linalg.norm(inputs.reshape(len(inputs), -1), axis=1))
        if state.values["seen"] > self.limit:
            context.alarm(f"over {self.limit} queries", statistic=state.values["seen"])
        return answer

    def spec(self):
        return f"counting:{self.limit}"


class RefuseLarge(Defense):
    """Refuses a batch of more than ``most`` inputs (a policy stage)."""

    name = "refuse-large"
    capabilities = Capabilities(refuses=True)

    def __init__(self, most: int):
        self.most = most

    def apply(self, context, inputs, answer, state):
        if len(inputs) > self.most:
            raise QueryRefusedError(f"batches of more than {self.most} inputs are refused")
        return answer

    def spec(self):
        return f"refuse-large:{self.most}"


def test_micro_batched_pipeline_equals_one_request_at_a_time(digits_cnn, digits):
    stages = [CountingDetector(5), parse_defense("noise:sigma=0.05"), Rounding(3), TopK(2)]
    together, alone = PredictionService(digits_cnn, stages), PredictionService(digits_cnn, stages)
    for service in (together, alone):
        service.register_client("a")
        service.register_client("b")
    batches = [("a", digits.test.x[:4]), ("b", digits.test.x[4:6]), ("a", digits.test.x[6:9])]
    joint = together.answer_many(batches)
    single = [alone.answer_many([batch])[0] for batch in batches]
    for got, expected in zip(joint, single, strict=True):
        np.testing.assert_array_equal(got.answer.top_k, expected.answer.top_k)
        np.testing.assert_array_equal(
            got.answer.top_k_probabilities, expected.answer.top_k_probabilities
        )
        assert got.flags == expected.flags == ("noise:0.05", "rounded:3")
        assert [a.reason for a in got.alarms] == [a.reason for a in expected.alarms]
    assert [a.reason for a in joint[2].alarms] == ["over 5 queries"] and joint[1].alarms == ()
    assert [a.statistic for a in together.client("a").alarms] == [7]
    assert together.client("b").alarms == []
    np.testing.assert_array_equal(
        together.client("a").stages[0].array("norms"), alone.client("a").stages[0].array("norms")
    )


def test_a_stage_keeps_per_client_state_and_raises_structured_alarms(digits_cnn, digits):
    service = PredictionService(digits_cnn, [CountingDetector(5), LabelsOnly()])
    service.register_client("a")
    service.register_client("b")
    service.query("a", digits.test.x[:4])
    assert service.client("a").alarms == []
    service.query("a", digits.test.x[:4])
    service.query("b", digits.test.x[:4])  # state is per client
    (alarm,) = service.client("a").alarms
    assert (alarm.stage, alarm.reason, alarm.statistic) == ("counting", "over 5 queries", 8)
    assert service.client("b").alarms == [] and service.client("a").alarms_total == 1
    state = service.client("a").stages[0]
    assert state.values == {"seen": 8} and state.rows("norms") == 8
    assert service.ledger.alarms("a") == [alarm]  # committed with the answer


def test_alarms_are_bounded_per_client_and_counted(digits_cnn, digits):
    from modelheist.api.ledger import MAX_ALARMS_PER_CLIENT

    service = PredictionService(digits_cnn, [CountingDetector(0)])
    service.register_client("a")
    for i in range(MAX_ALARMS_PER_CLIENT + 5):
        service.query("a", digits.test.x[i : i + 1])
    assert len(service.client("a").alarms) == MAX_ALARMS_PER_CLIENT
    assert service.client("a").alarms[-1].statistic == MAX_ALARMS_PER_CLIENT + 5
    assert len(service.ledger.alarms("a")) == MAX_ALARMS_PER_CLIENT
    assert service.ledger.client("a").alarms_total == MAX_ALARMS_PER_CLIENT + 5


def test_a_refused_request_teaches_no_stage_anything(digits_cnn, digits):
    service = PredictionService(digits_cnn, [CountingDetector(3), RefuseLarge(4)])
    service.register_client("a")
    service.query("a", digits.test.x[:2])
    results = service.answer_many(
        [("a", digits.test.x[:6]), ("a", digits.test.x[6:8]), ("a", digits.test.x[8:20])]
    )
    assert isinstance(results[0], QueryRefusedError) and isinstance(results[2], QueryRefusedError)
    assert results[1].queries_used == 4 and [a.statistic for a in results[1].alarms] == [4]
    state = service.client("a").stages[0]
    assert state.values == {"seen": 4} and state.rows("norms") == 4  # only answered inputs
    assert service.client("a").queries_used == 4 and len(service.ledger.audit("a")) == 4
    # the alarms raised while refusing stay on the record (they say why), in request order
    assert [a.statistic for a in service.client("a").alarms] == [8, 4, 16]
    service.forget_client("a")  # what was committed says the same
    reloaded = service.client("a")
    assert reloaded.stages[0].values == {"seen": 4} and reloaded.stages[0].rows("norms") == 4
    assert [a.statistic for a in reloaded.alarms] == [8, 4, 16]


def test_stage_state_is_committed_with_the_answer_and_survives_reopening(
    tmp_path, digits_cnn, digits
):
    from modelheist.api.ledger import Ledger

    stages = [CountingDetector(100)]
    ledger = Ledger.open(tmp_path)
    service = PredictionService(digits_cnn, stages, ledger=ledger)
    service.register_client("a")
    for i in range(5):
        service.query("a", digits.test.x[3 * i : 3 * i + 3])
    ledger.close()
    again = PredictionService(digits_cnn, stages, ledger=Ledger.open(tmp_path))
    state = again.client("a").stages[0]
    assert state.values == {"seen": 15}
    np.testing.assert_allclose(
        state.array("norms"), np.linalg.norm(digits.test.x[:15].reshape(15, -1), axis=1)
    )
    assert again.client("a").queries_used == 15


def test_a_failed_commit_answers_nothing_and_keeps_the_last_state(tmp_path, digits_cnn, digits):
    import sqlite3

    from modelheist.api.ledger import DATABASE_NAME, Ledger
    from modelheist.errors import ServiceUnavailableError

    service = PredictionService(digits_cnn, [CountingDetector(0)], ledger=Ledger.open(tmp_path))
    service.register_client("a")
    service.query("a", digits.test.x[:2])
    other = sqlite3.connect(tmp_path / DATABASE_NAME)
    other.execute("ALTER TABLE audit RENAME TO audit_away")  # the next commit fails for real
    other.commit()
    with pytest.raises(ServiceUnavailableError, match="nothing was answered"):
        service.query("a", digits.test.x[2:5])
    client = service.client("a")
    assert client.queries_used == 2 and client.stages[0].values == {"seen": 2}
    assert client.stages[0].rows("norms") == 2 and len(client.alarms) == 1
    other.execute("ALTER TABLE audit_away RENAME TO audit")
    other.commit()
    other.close()
    service.query("a", digits.test.x[5:6])
    assert service.client("a").stages[0].values == {"seen": 3}
    assert len(service.ledger.audit("a")) == 3


def test_unreadable_state_holds_the_client_for_review(tmp_path, digits_cnn, digits):
    import sqlite3

    from modelheist.api.ledger import DATABASE_NAME, Ledger
    from modelheist.errors import UnderReviewError

    stages = [CountingDetector(100)]
    service = PredictionService(digits_cnn, stages, ledger=Ledger.open(tmp_path))
    service.register_client("a")
    service.query("a", digits.test.x[:3])
    raw = sqlite3.connect(tmp_path / DATABASE_NAME)
    raw.execute("UPDATE stage_rows SET data = x'0102'")  # 2 bytes cannot be float64 rows
    raw.commit()
    raw.close()
    again = PredictionService(digits_cnn, stages, ledger=Ledger.open(tmp_path))
    with pytest.raises(UnderReviewError, match="held for review.*cannot be read"):
        again.query("a", digits.test.x[:1])
    assert again.ledger.client("a").review is not None  # recorded, not silently reset
    assert again.client("a").queries_used == 3
    again.ledger.reset_state("a")  # an administrator's decision
    record = again.ledger.client("a")
    again.sync_limits(record)
    again.query("a", digits.test.x[:1])
    assert again.client("a").stages[0].values == {"seen": 1}


def test_local_oracle_meets_the_same_policies_as_http(digits_cnn, digits):
    from modelheist.errors import AuthenticationError, ForbiddenError, RateLimitedError

    service = PredictionService(digits_cnn, [Rounding(2)])
    oracle = LocalOracle.for_new_client(service, 100, rate=2.0)
    answer = oracle.query(digits.test.x[:3])
    assert not hasattr(answer, "flags")  # what stages noted stays on the server
    assert service.ledger.audit(oracle.client_id)[0].flags == ("rounded:2",)
    impatient = LocalOracle(service, oracle.api_key)
    impatient.max_rate_wait = 0.0
    with pytest.raises(RateLimitedError):
        for _ in range(3):
            impatient.query(digits.test.x[:1])
    assert len(oracle.query(digits.test.x[:1])) == 1  # a patient client waits it out
    with pytest.raises(AuthenticationError, match="unknown API key"):
        LocalOracle(service, "mh-wrong").query(digits.test.x[:1])
    service.ledger.revoke(oracle.client_id)
    with pytest.raises(ForbiddenError, match="revoked"):
        oracle.query(digits.test.x[:1])


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


class Buggy(Defense):
    """Keeps state, then fails with a bug (not a refusal) on batches of exactly three."""

    name = "buggy"
    capabilities = Capabilities(stateful=True)

    def initial_values(self):
        return {"seen": 0}

    def apply(self, context, inputs, answer, state):
        state.values["seen"] += len(inputs)
        state.append("rows", np.zeros((len(inputs), 2)))
        if len(inputs) == 3:
            raise KeyError("a bug in the stage")
        return answer

    def spec(self):
        return self.name


def test_a_stage_bug_fails_its_request_alone_and_teaches_nothing(digits_cnn, digits):
    from modelheist.errors import ServiceUnavailableError

    service = PredictionService(digits_cnn, [Buggy()])
    service.register_client("a")
    service.register_client("b")
    x = digits.test.x
    results = service.answer_many([("a", x[:2]), ("a", x[2:5]), ("b", x[5:7]), ("a", x[7:8])])
    assert isinstance(results[1], ServiceUnavailableError)
    assert [r.queries_used for r in (results[0], results[2], results[3])] == [2, 2, 3]
    state = service.client("a").stages[0]
    assert state.values == {"seen": 3} and state.rows("rows") == 3
    service.forget_client("a")
    assert service.client("a").stages[0].values == {"seen": 3}


def test_initial_values_survive_a_restart_when_only_rows_change(tmp_path, digits_cnn, digits):
    from modelheist.api.ledger import Ledger
    from modelheist.defenses import InputHistory

    service = PredictionService(digits_cnn, [InputHistory(100)], ledger=Ledger.open(tmp_path))
    service.register_client("a")
    service.query("a", digits.test.x[:3])  # `not_kept` never changes from its initial 0
    again = PredictionService(digits_cnn, [InputHistory(100)], ledger=Ledger.open(tmp_path))
    state = again.client("a").stages[0]
    assert state.values == {"not_kept": 0} and state.rows("inputs") == 3


class ResetsMidAnswer(CountingDetector):
    """An administrator resets the client while its request is being answered."""

    name = "resets"

    def apply(self, context, inputs, answer, state):
        out = super().apply(context, inputs, answer, state)
        if state.values["seen"] == 6:
            self.ledger.reset_state(context.client_id)
        return out


def test_a_reset_during_an_answer_keeps_usage_and_drops_the_old_state(tmp_path, digits_cnn, digits):
    from modelheist.api.ledger import Ledger

    ledger = Ledger.open(tmp_path)
    stage = ResetsMidAnswer(1)
    stage.ledger = Ledger.open(tmp_path)  # the administrator's own connection
    service = PredictionService(digits_cnn, [stage], ledger=ledger)
    service.register_client("a")
    service.query("a", digits.test.x[:3])
    receipt = service.answer_many([("a", digits.test.x[3:6])])[0]
    assert receipt.queries_used == 6  # answered and counted
    assert ledger.client("a").queries_used == 6 and len(ledger.audit("a")) == 6
    assert ledger.stage_state("a", service.pipeline) == {} and ledger.alarms("a") == []
    service.query("a", digits.test.x[6:7])  # reloaded from the reset state
    assert service.client("a").stages[0].values == {"seen": 1}
    assert service.client("a").queries_used == 7


def test_a_numpy_statistic_is_stored_as_a_float(digits_cnn, digits):
    class NumpyAlarm(CountingDetector):
        def apply(self, context, inputs, answer, state):
            context.alarm("numpy", np.float32(0.5))
            context.alarm("not finite", np.float64("nan"))
            return answer

    service = PredictionService(digits_cnn, [NumpyAlarm(0)])
    service.register_client("a")
    service.query("a", digits.test.x[:1])
    assert [(a.reason, a.statistic) for a in service.ledger.alarms("a")] == [
        ("numpy", 0.5),
        ("not finite", None),
    ]
