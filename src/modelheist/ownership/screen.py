"""A judge's screen against false claims: a watermark set that independent models also
"match" is not evidence of copying (Liu et al., "False Claims against Model Ownership
Resolution", USENIX Security '24: countermeasure "defender-trained independent models").

Before testing the suspect, :class:`ScreenedScheme` tests the same watermark set, with the same
scheme, on reference models the judge trained (or obtained) independently of both parties. A
false claim built from transferable adversarial examples passes on them too; a true watermark,
which only a model derived from the owner's carries, does not. The screen rejects the set when
any reference passes at ``screen_significance`` / R (Bonferroni over the R references), so
that a true watermark set is wrongly rejected with probability at most ``screen_significance``
whatever R; a rejected set gives "cannot verify" with the reason, never "stolen".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from rich.progress import Progress

from modelheist.errors import ModelheistError
from modelheist.oracle import Oracle
from modelheist.ownership.base import CannotVerify, Finding, OwnershipScheme


@dataclass
class ScreenedScheme(OwnershipScheme):
    """``inner``'s test of the suspect, run only if ``inner``'s watermark set passes on none of
    the judge's ``references``."""

    name: ClassVar[str] = "screened"

    inner: OwnershipScheme
    references: Sequence[Oracle]
    screen_significance: float = 0.01
    #: The test run on the references (default ``inner``): a backdoor test whose chance was
    #: estimated from these same references would never pass on them, so the judge screens
    #: with the plain 1/C test and decides with the estimated one.
    screening: OwnershipScheme | None = None

    def __post_init__(self) -> None:
        self.name = f"{self.inner.name}, screened"  # type: ignore[misc]
        self.applies_to = self.inner.applies_to  # type: ignore[misc]
        if not self.references:
            raise ModelheistError("a screen needs at least one independent reference model")
        if not 0.0 < self.screen_significance < 1.0:
            raise ModelheistError("the screen's significance must lie in (0, 1)")

    def _test(self, suspect: Oracle, progress: Progress | None) -> Finding:
        level = self.screen_significance / len(self.references)
        p_values = []
        for number, reference in enumerate(self.references, 1):
            evidence = (self.screening or self.inner).verify(reference, level)
            if evidence.decision == "cannot verify":
                raise CannotVerify(f"reference model {number} cannot be tested: {evidence.reason}")
            p_values.append(float(evidence.p_value or 0.0))
        passing = sum(p <= level for p in p_values)
        if passing:
            raise CannotVerify(
                f"the watermark set also passes on {passing} of {len(p_values)} independent "
                f"reference models (p <= {level:.3g}): it is not evidence of copying"
            )
        finding = self.inner._test(suspect, progress)  # the same test, on the suspect
        screen = {"references": len(p_values), "smallest_reference_p_value": min(p_values)}
        return replace(finding, details={**finding.details, "screen": screen})
