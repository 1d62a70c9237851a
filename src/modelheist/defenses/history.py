"""``history``: keep every input each client was answered, in the client's stage state.

The audit log keeps a digest of each answered input, not the input. An owner who wants the
inputs themselves (to study a suspicious client afterwards, to replay its queries to a detector,
to show a judge what was asked) puts this stage in the pipeline. It changes nothing in the
answers. Each client's inputs and the labels they got at this point of the pipeline are kept as
append-only arrays (:class:`~modelheist.defenses.state.StageState`), so a commit writes only
the new rows however long the history grows; past ``limit`` rows a client's further inputs are
counted, not kept.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from modelheist.defenses.base import Capabilities, Defense, StageContext
from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError
from modelheist.oracle.answer import Answer


class InputHistory(Defense):
    """Keep each client's answered inputs and labels (``history:limit=N``)."""

    name: ClassVar[str] = "history"
    capabilities: ClassVar[Capabilities] = Capabilities(stateful=True, numeric_inputs=True)

    def __init__(self, limit: int = 1_000_000):
        if limit < 1:
            raise ModelheistError(f"history: limit must be at least 1 row, got {limit}")
        self.limit = limit

    def initial_values(self) -> dict[str, object]:
        return {"not_kept": 0}

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        room = max(0, self.limit - state.rows("inputs"))
        kept = min(room, len(inputs))
        if kept:
            state.append("inputs", np.asarray(inputs[:kept], np.float32))
            state.append("labels", np.asarray(answer.labels[:kept], np.int64))
        if kept < len(inputs):
            state.values["not_kept"] = int(state.values.get("not_kept", 0)) + len(inputs) - kept
        return answer

    def spec(self) -> str:
        return f"{self.name}:limit={self.limit}"
