"""Out-of-distribution (OOD) detectors: flag each query that does not look like the owner's data,
and raise an alarm about a client when most of its recent queries are flagged.

Knockoff-style attackers query natural images of another distribution (Orekondy et al. '19);
Atli et al. ("Extraction of Complex DNN Models: Real Threat or Boogeyman?", AAAI-EDSMLS 2020,
§5) detect them with a binary classifier trained by the owner on its own data (in) against a
public pool of other images (out). Two kinds of per-query score, one per stage:

* ``ood-msp``: the model's maximum softmax probability (Hendrycks & Gimpel, ICLR '17), read off
  the answer itself, so it needs no OOD data; a query is flagged when it is below
  ``threshold``, set at a chosen false-positive rate on held-out in-distribution data
  (:func:`calibrate_threshold`). (The energy score needs logits, which a stage placed after the
  softmax does not see; the maximum softmax is the score that a pipeline stage can compute.)
* ``ood-classifier``: Atli et al.'s binary classifier, a saved model folder (class 1: "out"),
  loaded when the service starts; a query is flagged when its "out" probability exceeds
  ``threshold``.

The per-client decision (both stages): once a client has sent ``window`` queries, an alarm is
raised when the share of flagged queries among its last ``window`` reaches ``share``, so one
odd query does not flag a client; each crossing raises one alarm, as PRADA's does. Each answered
request notes ``ood:N`` in the audit log, N its flagged inputs. ``policy=block`` also refuses
the client from the alarm on, until an administrator clears it.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np

from modelheist.defenses.base import (
    Capabilities,
    Defense,
    StageContext,
    check_policy,
    require_probabilities,
)
from modelheist.defenses.state import StageState
from modelheist.errors import ModelheistError
from modelheist.oracle.answer import Answer


def calibrate_threshold(in_distribution_scores: np.ndarray, false_positive_rate: float) -> float:
    """The threshold under which a share ``false_positive_rate`` of held-out in-distribution
    scores falls (lower score: more out-of-distribution)."""
    if not 0.0 < false_positive_rate < 1.0:
        raise ModelheistError(
            f"the false-positive rate must lie in (0, 1), got {false_positive_rate}"
        )
    scores = np.asarray(in_distribution_scores, np.float64)
    if scores.size == 0:
        raise ModelheistError("calibration needs held-out in-distribution scores")
    return float(np.quantile(scores, false_positive_rate))


class _WindowedOod(Defense):
    """Per-query flags, and a windowed share of flagged queries per client."""

    def __init__(
        self, threshold: float, window: int = 50, share: float = 0.5, policy: str = "flag"
    ):
        if window < 1:
            raise ModelheistError(f"{self.name}: window must be at least 1 query, got {window}")
        if not 0.0 < share <= 1.0:
            raise ModelheistError(f"{self.name}: share must lie in (0, 1], got {share}")
        self.threshold = threshold
        self.window = window
        self.share = share
        self.policy = check_policy(self.name, policy)

    @abstractmethod
    def flags(self, inputs: np.ndarray, answer: Answer) -> np.ndarray:
        """Whether each input looks out of distribution."""

    def initial_values(self) -> dict[str, object]:
        return {"processed": 0, "alarmed": False, "statistic": None}

    def apply(
        self, context: StageContext, inputs: np.ndarray, answer: Answer, state: StageState
    ) -> Answer:
        flagged = np.asarray(self.flags(inputs, answer), bool)
        state.append("flags", flagged.astype(np.uint8))
        context.note(f"ood:{int(flagged.sum())}")
        history = state.array("flags")
        values = state.values
        processed = int(values.get("processed", 0))
        alarmed = bool(values.get("alarmed", False))
        share = values.get("statistic")
        for i in range(len(flagged)):
            seen = processed + i + 1
            if seen < self.window:
                continue
            share = float(history[seen - self.window : seen].mean())
            now = share >= self.share
            if now and (not alarmed or self.policy == "block"):
                context.alarm(
                    f"{self.name}: {share:.0%} of the last {self.window} queries out of "
                    f"distribution (alarm at {self.share:.0%}) after {seen} queries",
                    share,
                )
                values.setdefault("first_alarm_query", seen)
            alarmed = now
        values["processed"] = processed + len(flagged)
        values["alarmed"] = alarmed
        values["statistic"] = share
        return answer


class MaxSoftmaxOod(_WindowedOod):
    """``ood-msp:threshold=T,window=50,share=0.5``: flags a query whose maximum softmax
    probability is below T (see the module docstring)."""

    name: ClassVar[str] = "ood-msp"
    capabilities: ClassVar[Capabilities] = Capabilities(
        stateful=True, needs_probabilities=True, raises_alarms=True, notes=("ood",)
    )

    def __init__(
        self, threshold: float, window: int = 50, share: float = 0.5, policy: str = "flag"
    ):
        if not 0.0 < threshold < 1.0:
            raise ModelheistError(f"ood-msp: threshold must lie in (0, 1), got {threshold}")
        super().__init__(threshold, window, share, policy)

    def flags(self, inputs: np.ndarray, answer: Answer) -> np.ndarray:
        return require_probabilities(self, answer).max(axis=1) < self.threshold

    def spec(self) -> str:
        return (
            f"{self.name}:threshold={self.threshold!r},window={self.window},"
            f"share={self.share!r},policy={self.policy}"
        )


class OodClassifier(_WindowedOod):
    """``ood-classifier:model=DIR,threshold=0.5,window=50,share=0.5``: Atli et al.'s binary
    in/out classifier, a saved model folder whose class 1 is "out of distribution"."""

    name: ClassVar[str] = "ood-classifier"
    capabilities: ClassVar[Capabilities] = Capabilities(
        stateful=True, raises_alarms=True, notes=("ood",), numeric_inputs=True
    )

    def __init__(
        self,
        model: str,
        threshold: float = 0.5,
        window: int = 50,
        share: float = 0.5,
        policy: str = "flag",
    ):
        if not 0.0 < threshold < 1.0:
            raise ModelheistError(f"ood-classifier: threshold must lie in (0, 1), got {threshold}")
        super().__init__(threshold, window, share, policy)
        self.model = model
        self._classifier = None

    def open(self) -> None:
        from modelheist.models.store import load_model

        classifier = load_model(self.model)
        if classifier.card.num_classes != 2:
            raise ModelheistError(
                f"ood-classifier: {self.model} has {classifier.card.num_classes} classes; it "
                "must be a binary in (0) / out (1) classifier"
            )
        self._classifier = classifier

    def check_model(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        if self._classifier is None:
            self.open()
        own = tuple(self._classifier.card.input_shape)
        if own != tuple(input_shape):
            raise ModelheistError(
                f"ood-classifier: {self.model} takes inputs of shape {own}, the served model "
                f"{tuple(input_shape)}"
            )

    def flags(self, inputs: np.ndarray, answer: Answer) -> np.ndarray:
        if self._classifier is None:
            self.open()
        return self._classifier.predict_proba(inputs)[:, 1] > self.threshold

    def spec(self) -> str:
        return (
            f"{self.name}:model={self.model},threshold={self.threshold!r},"
            f"window={self.window},share={self.share!r},policy={self.policy}"
        )
