"""The ``OwnershipScheme`` seam: ``verify(suspect) -> Evidence`` (docs/architecture.md, "The
ownership seam").

A scheme holds the owner's secret material (a watermark's trigger set, a fingerprint) and
decides, from a suspect model's answers alone, whether the suspect derives from the owner's
model. The suspect is any :class:`~modelheist.oracle.Oracle`: a model folder served in-process
or a URL with a key. As for attacks (Foolbox 3's pattern), the base class owns what every
scheme shares, as the final template method :meth:`OwnershipScheme.verify`: the check that the
suspect's answers are usable, a hard query budget, turning a test into a decision at a stated
significance, and turning anything that prevents a decision into a "cannot verify" verdict with
its reason, never into "stolen". Each scheme implements :meth:`OwnershipScheme._test`.

Decisions: ``stolen`` when the test rejects the hypothesis that the suspect is independent of
the owner's model at the significance level (p-value <= significance); ``not stolen`` when it
does not (the evidence does not show a derived model; it does not prove independence);
``cannot verify`` when no test could be run to the end.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, final

from rich.progress import Progress

from modelheist.errors import ModelheistError
from modelheist.oracle import BudgetedOracle, Oracle, OutputKind
from modelheist.oracle.inputs import takes_text

Decision = Literal["stolen", "not stolen", "cannot verify"]


ModelKind = Literal["image", "tabular", "text", "translation"]


def kind_of(input_shape: Sequence[int], answers_images: bool) -> ModelKind:
    """What a model is, from the shape of its inputs and whether it answers images: an
    image-to-image model, a text classifier (it takes strings), or an image or tabular
    classifier."""
    if answers_images:
        return "translation"
    shape = tuple(input_shape)
    if takes_text(shape):
        return "text"
    return "image" if len(shape) == 3 else "tabular"


def model_kind(suspect: Oracle) -> ModelKind:
    """What ``suspect`` is, from what its API declares (:func:`kind_of`)."""
    return kind_of(suspect.input_shape, suspect.output_shape is not None)


def not_applicable(
    scheme: str, applies_to: frozenset[ModelKind], kind: ModelKind, what: str
) -> str:
    """Why ``scheme``, which marks ``applies_to`` models, says nothing of ``what``, a ``kind``
    model."""
    kinds = " and ".join(sorted(applies_to))
    return f"{scheme} applies to {kinds} classifiers; {what} is " + (
        "an image-to-image model (classifier marks do not carry over to image translation: "
        "Szyller et al., 2021)"
        if kind == "translation"
        else f"a {kind} model"
    )


class CannotVerify(ModelheistError):
    """A scheme cannot reach a decision on this suspect (the reason is the message)."""


def check_suspect_fits(
    suspect: Oracle, input_shape: tuple[int, ...], num_classes: int, what: str
) -> None:
    """Raise :class:`CannotVerify` unless ``suspect`` takes inputs of ``input_shape`` and
    answers ``num_classes`` classes, as ``what`` (a watermark's inputs) needs."""
    if tuple(suspect.input_shape) != tuple(input_shape):
        raise CannotVerify(
            f"the suspect takes inputs of shape {tuple(suspect.input_shape)}, {what} "
            f"{tuple(input_shape)}"
        )
    if suspect.num_classes != num_classes:
        raise CannotVerify(f"the suspect has {suspect.num_classes} classes, {what} {num_classes}")


@dataclass(frozen=True)
class Finding:
    """What a scheme's statistical test found: the statistic (named), its p-value under the
    hypothesis that the suspect is independent, scheme-specific details (JSON), and the
    smallest p-value the test could have given (if that exceeds the significance, the test
    could never decide, and the verdict is "cannot verify")."""

    statistic_name: str
    statistic: float
    p_value: float
    details: dict[str, Any] = field(default_factory=dict)
    smallest_p_value: float = 0.0


@dataclass(frozen=True)
class Evidence:
    """A verification's outcome, as a judge would read it."""

    scheme: str
    decision: Decision
    significance: float
    queries: int  # spent on the suspect, as its oracle counted them
    statistic_name: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    reason: str = ""  # why it cannot verify
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "decision": self.decision,
            "significance": self.significance,
            "queries": self.queries,
            "statistic_name": self.statistic_name,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "reason": self.reason,
            "details": self.details,
        }


class OwnershipScheme(ABC):
    """Base class of ownership verification schemes."""

    #: Registry name (``modelheist verify NAME``).
    name: ClassVar[str]
    #: Output granularities the scheme can decide from.
    supported_outputs: ClassVar[frozenset[OutputKind]] = frozenset(
        {"probabilities", "top_k", "labels"}
    )
    #: The kinds of model the scheme marks (:func:`model_kind`); any other suspect gets
    #: "cannot verify" before a query, saying so. No scheme marks image-to-image models:
    #: Szyller et al. ("Good Artists Copy", 2021) found that the classifiers' watermarks do not
    #: carry over to image translation.
    applies_to: ClassVar[frozenset[ModelKind]] = frozenset({"image", "tabular"})

    @classmethod
    def check_applies_to(cls, kind: ModelKind) -> None:
        """Refuse, before any work, to prepare the owner's evidence for a model the scheme does
        not mark (``kind``: :func:`kind_of` the owner's model)."""
        if kind not in cls.applies_to:
            raise ModelheistError(not_applicable(cls.name, cls.applies_to, kind, "this model"))

    @final
    def verify(
        self,
        suspect: Oracle,
        significance: float = 0.01,
        budget: int | None = None,
        progress: Progress | None = None,
    ) -> Evidence:
        """Decide whether ``suspect`` derives from the owner's model, spending at most
        ``budget`` queries (None: what the scheme needs and the suspect's API allows)."""
        if not 0.0 < significance < 1.0:
            raise ModelheistError(f"the significance must lie in (0, 1), got {significance}")
        if budget is not None and budget < 1:
            raise ModelheistError(f"a verification budget must be at least 1, got {budget}")
        try:
            kind = suspect.output_kind
        except ModelheistError as exc:  # an unreachable API, a wrong key
            return self._cannot(significance, 0, f"the suspect cannot be queried: {exc}")
        suspect_kind = model_kind(suspect)
        if suspect_kind not in self.applies_to:
            reason = not_applicable(self.name, self.applies_to, suspect_kind, "the suspect")
            return self._cannot(significance, 0, reason)
        if kind not in self.supported_outputs:
            return self._cannot(
                significance,
                0,
                f"{self.name} needs {' or '.join(sorted(self.supported_outputs))} answers; "
                f"the suspect returns {kind}",
            )
        limited = BudgetedOracle(
            suspect, budget if budget is not None else 2**62, keep_log=False
        )  # counted, not kept: a boundary walk asks hundreds of thousands of inputs
        try:
            result = self._test(limited, progress)
        except CannotVerify as exc:
            return self._cannot(significance, limited.spent, str(exc))
        except ModelheistError as exc:  # a budget ran out, the key or the server went away
            return self._cannot(
                significance, limited.spent, f"the queries the test needs were not answered: {exc}"
            )
        if not math.isfinite(result.p_value) or not 0.0 <= result.p_value <= 1.0:
            return self._cannot(significance, limited.spent, "the test gave no valid p-value")
        if result.smallest_p_value > significance:
            return self._cannot(
                significance,
                limited.spent,
                f"this test cannot reach significance {significance:g} (its smallest p-value "
                f"is {result.smallest_p_value:.3g}); use more evidence",
            )
        return Evidence(
            scheme=self.name,
            decision="stolen" if result.p_value <= significance else "not stolen",
            significance=significance,
            queries=limited.spent,
            statistic_name=result.statistic_name,
            statistic=result.statistic,
            p_value=result.p_value,
            details=result.details,
        )

    def _cannot(self, significance: float, queries: int, reason: str) -> Evidence:
        return Evidence(self.name, "cannot verify", significance, queries, reason=reason)

    @abstractmethod
    def _test(self, suspect: Oracle, progress: Progress | None) -> Finding:
        """Query ``suspect`` and test independence; raise :class:`CannotVerify` when this
        suspect cannot be tested (with the reason)."""
