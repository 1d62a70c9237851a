"""The ``ExtractionAttack`` seam: ``run(oracle, knowledge) -> ExtractionResult``.

Following Foolbox 3's pattern, hyper-parameters go to the constructor and data to the call; the
base class owns what every attack shares, as the final template method :meth:`run`: checking
that the oracle's output granularity is usable *before* any query is spent, enforcing the
budget as a hard limit (:class:`~modelheist.oracle.BudgetedOracle`), seeding, and packaging the result with its
metadata. Each attack implements :meth:`ExtractionAttack._extract`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, ClassVar, Literal, final

import numpy as np
from rich.progress import Progress

from modelheist.attacks.interruption import AttackInterrupted
from modelheist.errors import BudgetExceededError, IncompatibleOutputError, ModelheistError
from modelheist.models.classifier import Classifier
from modelheist.oracle import Answer, BudgetedOracle, Oracle, OutputKind
from modelheist.oracle.answer import concatenate
from modelheist.oracle.budgeted import QueryLog


@dataclass(frozen=True)
class AttackerKnowledge:
    """What the adversary has besides query access (docs/architecture.md, "The ExtractionAttack seam").

    ``transfer_set`` holds natural inputs the attacker may query, already in the victim's input
    shape; ``surrogate_architecture`` names the network the attacker trains; ``budget`` is the
    hard limit on queries. ``transfer_labels`` optionally gives the transfer set's own
    annotation (e.g. ImageNet's classes for an ImageNet transfer set, not the victim's task),
    one integer per input, which adaptive Knockoff Nets uses as its bandit's arms.
    """

    transfer_set: np.ndarray
    budget: int
    surrogate_architecture: str = "cnn"
    seed: int = 0
    transfer_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ModelheistError(f"the query budget must be at least 1, got {self.budget}")
        labels = self.transfer_labels
        if labels is not None and (
            labels.shape != (len(self.transfer_set),) or labels.dtype.kind not in "iu"
        ):
            raise ModelheistError(
                f"transfer labels must be {len(self.transfer_set)} integers, one per transfer-set "
                f"input; got an array of shape {labels.shape} and dtype {labels.dtype}"
            )


@dataclass
class ExtractionResult:
    """A surrogate and how it was obtained."""

    surrogate: Classifier
    queries_used: int
    attack: str
    params: dict[str, Any]
    seed: int
    seconds: float
    queried: np.ndarray = field(repr=False)  # indices into the transfer set, in query order
    details: dict[str, Any] = field(default_factory=dict)
    log: QueryLog | None = field(default=None, repr=False)  # every input sent and its answer


class ExtractionAttack(ABC):
    """Base class of model-extraction attacks."""

    #: Registry name (``modelheist attack NAME``).
    name: ClassVar[str]
    #: Its name in tables and reports.
    title: ClassVar[str] = ""
    #: Output granularities the attack can learn from.
    supported_outputs: ClassVar[frozenset[OutputKind]] = frozenset(
        {"probabilities", "top_k", "labels"}
    )
    #: One line of help per hyper-parameter (the CLI's options are made from them).
    param_help: ClassVar[dict[str, str]] = {}
    #: CLI flag names where the default ``--name`` / ``--name/--no-name`` does not read well.
    flag_names: ClassVar[dict[str, str]] = {}
    #: How a local victim is served to this attack unless the user says otherwise: the output
    #: granularity, and service options (tree path-finding needs leaf identities, as BigML gave).
    local_output: ClassVar[str] = "probs"
    local_service: ClassVar[dict[str, bool]] = {}
    #: Help for the attack's use of the transfer set's own labels (None: it uses none).
    transfer_labels_help: ClassVar[str | None] = None
    #: The models the attack extracts: classifiers of arrays (images, tables), text
    #: classifiers (strings in), or image-to-image models (images out).
    extracts: ClassVar[Literal["arrays", "text", "translation"]] = "arrays"

    def transfer_source(self) -> str | None:
        """The dataset this configuration names as the source of its queries, where its own
        options name one (Thieves' ``natural:DATASET``); None: the caller's choice."""
        return None

    def needs_transfer_set(self) -> bool:
        """Whether this configuration queries with the attacker's data (RANDOM word queries
        need none)."""
        return True

    def display_name(self) -> str:
        """The attack's name in tables (with its variant, where it has one)."""
        return self.title or self.name

    def check_transfer_labels(self) -> None:
        """Refuse transfer labels this configuration of the attack would not use."""
        if self.transfer_labels_help is None:
            raise ModelheistError(f"{self.name} does not use transfer labels")

    @final
    def run(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Progress | None = None
    ) -> ExtractionResult:
        """Extract a surrogate from ``oracle`` within ``knowledge.budget`` queries.

        Raises :class:`AttackInterrupted`, carrying the query log, when the oracle stops
        answering (budget, connection, key) or the user interrupts after some answers were
        bought; its ``partial_surrogate()`` trains a network on them.
        """
        if oracle.output_kind not in self.supported_outputs:
            raise IncompatibleOutputError(
                f"{self.name} cannot learn from {oracle.output_kind} answers; it needs one of: "
                f"{', '.join(sorted(self.supported_outputs))}"
            )
        if knowledge.transfer_labels is not None:
            self.check_transfer_labels()
        if oracle.remaining is not None and oracle.remaining < 1:
            raise BudgetExceededError("the oracle has no queries left")
        budgeted = BudgetedOracle(oracle, knowledge.budget)
        start = time.perf_counter()
        try:
            surrogate, queried, details = self._extract(budgeted, knowledge, progress)
        except (ModelheistError, KeyboardInterrupt) as exc:
            if not len(budgeted.log):
                raise
            reason = (
                ModelheistError("interrupted by the user")
                if isinstance(exc, KeyboardInterrupt)
                else exc  # the API's refusal, or the attack's own error after it bought answers
            )
            raise AttackInterrupted(
                self.name,
                reason,
                budgeted.log,
                list(oracle.classes),
                knowledge.surrogate_architecture,
                knowledge.seed,
                self.params(),
            ) from exc
        return ExtractionResult(
            surrogate=surrogate,
            queries_used=budgeted.spent,
            attack=self.name,
            params=self.params(),
            seed=knowledge.seed,
            seconds=time.perf_counter() - start,
            queried=queried,
            details=details,
            log=budgeted.log,
        )

    def params(self) -> dict[str, Any]:
        """The attack's hyper-parameters, for result metadata."""
        return asdict(self) if is_dataclass(self) else dict(vars(self))

    @abstractmethod
    def _extract(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Progress | None
    ) -> tuple[Classifier, np.ndarray, dict[str, Any]]:
        """Return (surrogate, indices of the transfer set queried, attack-specific details)."""


def rounding_decimals(p: np.ndarray, most: int = 8) -> int | None:
    """The number of decimals probabilities are rounded to, or None if they look exact."""
    for decimals in range(most + 1):
        scaled = np.asarray(p, np.float64) * 10.0**decimals
        if np.all(np.abs(scaled - np.round(scaled)) < 1e-6):
            return decimals
    return None


def exact_probabilities(answer: Answer) -> bool:
    """Whether the answers are unrounded probability vectors, judged from the values alone (an
    HTTP API does not say that it rounds)."""
    return answer.probabilities is not None and rounding_decimals(answer.probabilities) is None


def natural_inputs(knowledge: AttackerKnowledge, oracle: Oracle, attack: str) -> np.ndarray:
    """The attacker's transfer set, checked against the API's input shape."""
    pool = knowledge.transfer_set
    if tuple(pool.shape[1:]) != tuple(oracle.input_shape):
        raise ModelheistError(
            f"{attack}: transfer-set inputs have shape {tuple(pool.shape[1:])}, the API expects "
            f"{tuple(oracle.input_shape)}"
        )
    return pool


#: Inputs per request of :func:`ask_in_batches`.
QUERY_BATCH = 256


def ask_in_batches(oracle: Oracle, x: np.ndarray, progress: Progress | None) -> Answer:
    """The answers to ``x``, asked in batches of :data:`QUERY_BATCH` (a progress bar where one
    is shown), so that an interruption keeps every batch answered before it."""
    task = progress.add_task("query the API", total=len(x)) if progress is not None else None
    answers = []
    for start in range(0, len(x), QUERY_BATCH):
        answers.append(oracle.query(x[start : start + QUERY_BATCH]))
        if task is not None:
            progress.advance(task, len(answers[-1]))  # type: ignore[union-attr]
    if task is not None:
        progress.remove_task(task)  # type: ignore[union-attr]
    return concatenate(answers)
