"""``check_defense``: does a stage do what its :class:`~modelheist.defenses.base.Capabilities`
declare? (scikit-learn's ``check_estimator``, for the Defense seam.)

The service relies on the declarations: it runs a row-wise stage once over several clients'
rows, gives a stateless stage no state, and places a stage that needs probabilities before
those that remove them. A stage author runs :func:`check_defense` on an example batch; the
project's conformance test runs it on every registered stage. A failed check raises
``AssertionError`` saying which declaration the stage broke.
"""

from __future__ import annotations

import numpy as np

from modelheist.defenses.base import Defense, StageContext
from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError
from modelheist.oracle.answer import Answer

_ANSWER_FIELDS = ("labels", "probabilities", "top_k", "top_k_probabilities")


def check_defense(stage: Defense, inputs: np.ndarray, probabilities: np.ndarray) -> None:
    """Apply ``stage`` to ``inputs`` whose model probabilities are ``probabilities`` (at least
    two rows, an example the stage answers) and check each declared capability; raises
    AssertionError on the first broken one."""
    from modelheist.defenses.registry import parse_defense

    caps = stage.capabilities
    assert len(inputs) == len(probabilities) >= 2, "give at least two example inputs"
    assert parse_defense(stage.spec()).spec() == stage.spec(), "spec() does not read back"
    stage.open()
    probabilities = np.asarray(probabilities, np.float64)
    fresh = Answer(probabilities.argmax(axis=1), probabilities)
    state = _initial_state(stage)
    context = _context()
    try:
        answer = stage.apply(context, inputs, fresh, state)
    except ModelheistError as exc:
        assert caps.refuses, f"refused the example without declaring refuses: {exc}"
        raise AssertionError(f"give an example the stage answers (it refused: {exc})") from None
    assert isinstance(answer, Answer) and len(answer) == len(inputs), "one answer per input"
    if not caps.changes_labels:
        assert np.array_equal(answer.labels, fresh.labels), "changed labels; declares it keeps them"
    assert answer.kind == (caps.output_kind or fresh.kind), f"returned {answer.kind} answers"
    if answer.probabilities is not None:
        assert (answer.probabilities >= 0).all(), "negative probabilities"
        assert np.allclose(answer.probabilities.sum(axis=1), 1.0, atol=0.03), "do not sum to 1"
    if not caps.raises_alarms:
        assert not context.raised, "raised an alarm without declaring raises_alarms"
    for note in context.notes:
        assert any(note.startswith(prefix) for prefix in caps.notes), f"undeclared note {note!r}"
    if not caps.needs_probabilities:
        _check_without_probabilities(stage, inputs, fresh)
    _check_repeatable(stage, inputs, fresh, answer, context)
    if caps.stateful:
        _check_state_round_trip(stage, inputs, fresh, state)
    if caps.rowwise:
        _check_rowwise(stage, inputs, fresh, answer, context)


def _check_without_probabilities(stage: Defense, inputs: np.ndarray, fresh: Answer) -> None:
    """A stage that does not declare needs_probabilities works after top-k and labels."""
    top = np.argsort(-fresh.probabilities, axis=1)[:, :2]  # type: ignore[arg-type]
    top_p = np.take_along_axis(fresh.probabilities, top, axis=1)  # type: ignore[arg-type]
    for reduced in (Answer(fresh.labels, None, top, top_p), Answer(fresh.labels)):
        try:
            stage.apply(_context(), inputs, reduced, _initial_state(stage))
        except Exception as exc:  # noqa: BLE001 - any failure breaks the declaration
            raise AssertionError(
                f"fails on {reduced.kind} answers without declaring needs_probabilities: {exc!r}"
            ) from None


def _check_repeatable(
    stage: Defense, inputs: np.ndarray, fresh: Answer, first: Answer, context: StageContext
) -> None:
    """A new instance from the same spec, with the same state, answers, notes and alarms the
    same, call after call: nothing about a client lives on the stage object itself."""
    from modelheist.defenses.registry import parse_defense

    twin = parse_defense(stage.spec())
    twin.open()
    twin_state, own_state = _initial_state(twin), _initial_state(stage)
    for call in range(3):
        mine, theirs = _context(), _context()
        own = stage.apply(mine, inputs, fresh, own_state)
        other = twin.apply(theirs, inputs, fresh, twin_state)
        _assert_same(own, other, f"call {call + 1} of a new instance")
        assert mine.notes == theirs.notes, f"call {call + 1}: notes differ from a new instance"
        assert [(a.reason, a.statistic) for a in mine.raised] == [
            (a.reason, a.statistic) for a in theirs.raised
        ], f"call {call + 1}: alarms differ from a new instance"
        if call == 0:
            _assert_same(first, other, "the same input, state and client")


def _initial_state(stage: Defense) -> StageState:
    if stage.capabilities.stateful:
        return StageState(stage.initial_values())
    return StageState.read_only()


def _context(client: str | None = "alice") -> StageContext:
    return StageContext(client, 1000.0, stage="checked")


def _check_state_round_trip(
    stage: Defense, inputs: np.ndarray, fresh: Answer, state: StageState
) -> None:
    """The state the stage kept commits and reloads to a state that behaves the same."""
    from modelheist.defenses.state import encode_rows

    changes = state.changes()
    records = [(new.name, *encode_rows(new.rows)) for new in changes.rows]
    reloaded = StageState.from_records(changes.values, records, "the example client")
    assert reloaded.summary() == state.summary(), "the state does not survive a commit"
    again = stage.apply(_context(), inputs, fresh, reloaded)
    state_answer = stage.apply(_context(), inputs, fresh, state)
    _assert_same(state_answer, again, "reloaded state")


def _check_rowwise(
    stage: Defense, inputs: np.ndarray, fresh: Answer, whole: Answer, context: StageContext
) -> None:
    """Row i's answer depends on row i alone and on no client; the notes on no row."""
    half = len(inputs) // 2
    parts = []
    for rows in (slice(0, half), slice(half, None)):
        part_context = _context(None)
        parts.append(
            stage.apply(part_context, inputs[rows], fresh.take(rows), StageState.read_only())
        )
        assert part_context.notes == context.notes, "row-wise notes depend on the rows"
    for name in _ANSWER_FIELDS:
        if getattr(whole, name) is not None:
            joined = np.concatenate([getattr(part, name) for part in parts])
            assert np.array_equal(joined, getattr(whole, name)), f"row-wise {name} differ"
    _assert_same(
        whole,
        stage.apply(_context("bob"), inputs, fresh, StageState.read_only()),
        "another client",
    )


def _assert_same(first: Answer, second: Answer, what: str) -> None:
    for name in _ANSWER_FIELDS:
        a, b = getattr(first, name), getattr(second, name)
        assert (a is None) == (b is None), f"{what}: {name} present in one answer only"
        assert a is None or np.array_equal(a, b), f"{what}: {name} differ"
