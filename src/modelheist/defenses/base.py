"""The ``Defense`` seam: one stage of a prediction API's pipeline (docs/architecture.md,
"The Defense seam").

A stage sees a :class:`StageContext` (the client, the time, the client's current alarms), the
batch of inputs, the answer so far and the client's :class:`~modelheist.defenses.state.StageState`
for this stage; it returns the answer it lets through. It may change the answer (granularity,
rounding, perturbation, a watermark's wrong labels), observe and raise an alarm
(:meth:`StageContext.alarm`: a detector), note what it did for the audit log
(:meth:`StageContext.note`), or refuse the request by raising
:class:`~modelheist.errors.QueryRefusedError`. What it may do is declared in its
:class:`Capabilities`, which the service relies on (a row-wise stage runs once over several
clients' rows; a stateless one gets no state) and the conformance test checks.

Hyper-parameters go to the constructor, which does no work; secrets are files named in the spec
(:class:`~modelheist.defenses.secrets.SecretFile`), read by :meth:`Defense.open` when the
service starts; data goes to :meth:`Defense.apply`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError
from modelheist.oracle.answer import Answer, OutputKind

#: Longest alarm reason kept, in characters (alarms are bounded in number and in size).
MAX_REASON = 300


@dataclass(frozen=True)
class Alarm:
    """A stage's structured alarm about one client: which stage, when, why, and the statistic
    that crossed its threshold (e.g. PRADA's Shapiro-Wilk W), if any."""

    stage: str
    time: float
    reason: str
    statistic: float | None = None
    action: str = "flag"  # what the stage's alarm policy did: flag, or block the client

    def to_json(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "time": self.time,
            "reason": self.reason,
            "statistic": self.statistic,
            "action": self.action,
        }


@dataclass
class StageContext:
    """What a stage knows of a request besides its inputs, and where it reports.

    ``client_id`` is None when a row-wise stage runs once over several clients' rows (row-wise
    stages must not depend on the client). ``alarms`` are the client's current alarms, oldest
    first. :meth:`note` adds a flag to the audit records of the request; :meth:`alarm` raises an
    alarm about the client. Both are kept only if the request is answered.
    """

    client_id: str | None
    time: float
    alarms: tuple[Alarm, ...] = ()
    stage: str = ""
    policy: str = "flag"
    notes: list[str] = field(default_factory=list)
    raised: list[Alarm] = field(default_factory=list)

    def note(self, flag: str) -> None:
        """Record ``flag`` (e.g. ``"rounded:2"``) in the audit log of the answered inputs."""
        self.notes.append(str(flag))

    def alarm(self, reason: str, statistic: float | None = None) -> Alarm:
        """Raise an alarm about this client (kept, bounded, in the ledger and /v1/admin). A
        statistic is stored as a float (None if it is not finite)."""
        if statistic is not None:
            statistic = float(statistic)
            if not math.isfinite(statistic):
                statistic = None
        raised = Alarm(self.stage, self.time, str(reason)[:MAX_REASON], statistic, self.policy)
        self.raised.append(raised)
        return raised


@dataclass(frozen=True)
class Capabilities:
    """What a stage may do; the service relies on it and the conformance test checks it.

    * ``stateful`` — it keeps per-client state (else it gets a read-only empty one);
    * ``rowwise`` — it treats each input alone and keeps no state, so the service may run it
      once over the rows of several clients' batches;
    * ``changes_labels`` — it may return labels other than the model's (a watermark);
    * ``needs_probabilities`` — it reads full probability vectors, so must precede top-k and
      labels-only stages;
    * ``output_kind`` — the granularity it leaves behind (None: as it came);
    * ``raises_alarms`` / ``refuses`` — it may raise alarms / refuse a request;
    * ``notes`` — the prefixes of the audit flags it may note (``"rounded"`` for
      ``"rounded:2"``);
    * ``numeric_inputs`` — it reads the inputs as numbers (distances, detectors, stored
      arrays), so it cannot serve a text model.
    """

    stateful: bool = False
    rowwise: bool = False
    changes_labels: bool = False
    needs_probabilities: bool = False
    output_kind: OutputKind | None = None
    raises_alarms: bool = False
    refuses: bool = False
    notes: tuple[str, ...] = ()
    numeric_inputs: bool = False

    def __post_init__(self) -> None:
        if self.rowwise and (self.stateful or self.raises_alarms or self.refuses):
            raise ValueError("a row-wise stage keeps no state, raises no alarm, refuses nothing")


class Defense(ABC):
    """A stage of the pipeline of a :class:`~modelheist.api.service.PredictionService`."""

    #: Registry name used in specs such as ``round:2``.
    name: ClassVar[str]
    #: What the stage may do (see :class:`Capabilities`).
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: What the service does when this stage raises an alarm: ``flag`` (record it) or
    #: ``block`` (refuse the client's requests until an administrator clears it). Detectors
    #: take it as a ``policy`` argument (:func:`check_policy`).
    policy: str = "flag"

    def open(self) -> None:
        """Read what the stage needs from disk (its secret files, a detector's model) before
        the service answers; raises a one-line ``ModelheistError`` if it cannot. Called once
        by the service at start-up; the default has nothing to read."""
        return None

    def check_model(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Refuse, in one line, a model this stage cannot serve (e.g. a detector trained for
        other inputs). Called by the service at start-up, after :meth:`open`."""
        return None

    def check_serving(self) -> None:
        """Refuse, in one line, a setting fit for an experiment but not for a served model
        (e.g. a public seed standing in for a secret key). Called by ``modelheist serve``."""
        return None

    def initial_values(self) -> dict[str, object]:
        """The small, JSON part of a new client's state (stateful stages)."""
        return {}

    @abstractmethod
    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        """Return the answer this stage lets through for ``inputs``; may update ``state``."""

    def state_key(self) -> str:
        """What a client's saved state for this stage belongs to: the spec, less what does
        not change the state (an alarm policy), so that changing those keeps the history."""
        return self.spec().replace(f",policy={self.policy}", "")

    @abstractmethod
    def spec(self) -> str:
        """The spec string that :func:`~modelheist.defenses.registry.parse_defense` reads back
        (secrets appear as the path of their file, never their content)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"


#: The alarm policies a detector may take.
ALARM_POLICIES = ("flag", "block")


def check_policy(stage: str, policy: str) -> str:
    """``policy`` if it is one of :data:`ALARM_POLICIES`, else a one-line error."""
    if policy not in ALARM_POLICIES:
        raise ModelheistError(
            f"{stage}: policy must be one of {', '.join(ALARM_POLICIES)}, got {policy!r}"
        )
    return policy


def check_pipeline(stages: Sequence[Defense]) -> None:
    """Refuse a pipeline in which a stage needs probabilities that an earlier stage removed."""
    kind: OutputKind = "probabilities"
    for stage in stages:
        if stage.capabilities.needs_probabilities and kind != "probabilities":
            raise ModelheistError(
                f"stage {stage.spec()!r} needs full probabilities but follows a stage that "
                f"returns {kind}; put it before the top-k/labels stage"
            )
        kind = stage.capabilities.output_kind or kind


def require_probabilities(stage: Defense, answer: Answer) -> np.ndarray:
    """The answer's probability vectors, or a clear error for a misordered pipeline."""
    if answer.probabilities is None:
        raise ModelheistError(
            f"stage {stage.spec()!r} needs full probabilities; place it before top-k/labels stages"
        )
    return answer.probabilities
