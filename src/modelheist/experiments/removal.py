"""The removal table: each removal attack applied to a stolen copy, and what is left of the
owner's watermark (test accuracy against the watermark's p-value), so that a reader sees which
attack breaks which scheme at what cost (issue: the malicious suspect).

``extract`` re-distils the copy into a fresh network through the project's own Knockoff Nets
(random sampling, probabilities) on the attacker's split, spending ``extract_budget`` queries
on the copy served in-process; the other methods are :mod:`modelheist.attacks.removal`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress

from modelheist.attacks.knockoff import KnockoffNets
from modelheist.attacks.removal import Removal, apply_removal
from modelheist.data.registry import Dataset
from modelheist.errors import ModelheistError
from modelheist.experiments.extraction import measure_extraction
from modelheist.experiments.targets import local_oracle
from modelheist.models.classifier import Classifier, TorchClassifier, accuracy
from modelheist.models.training import TrainConfig
from modelheist.ownership.base import OwnershipScheme


@dataclass(frozen=True)
class RemovalSettings:
    """How hard the suspect works: fine-tuning epochs, peak learning rate and examples (from
    the attacker's split, true labels); Knockoff's budget for ``extract``; the seed."""

    epochs: int = 10
    lr: float = 1e-3
    examples: int | None = None  # None: the whole attacker split
    extract_budget: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or self.extract_budget < 1:
            raise ModelheistError("epochs and the extraction budget must be >= 1, lr > 0")
        if self.examples is not None and self.examples < 1:
            raise ModelheistError(f"examples must be at least 1, got {self.examples}")


def removed_copy(
    stolen: Classifier,
    removal: Removal,
    data: Dataset,
    settings: RemovalSettings,
    progress: Progress | None = None,
) -> Classifier:
    """``stolen`` after ``removal``, using the attacker's split of ``data``."""
    if not isinstance(stolen, TorchClassifier):
        raise ModelheistError(f"removal attacks need a network, not {stolen.card.architecture}")
    pool = data.pool
    if len(pool) == 0:
        raise ModelheistError(f"{data.name} has no attacker split to fine-tune or extract with")
    count = len(pool) if settings.examples is None else min(settings.examples, len(pool))
    x, y = pool.x[:count], pool.y[:count]
    if removal.method == "extract":
        attack = KnockoffNets()
        result, _ = measure_extraction(
            stolen,
            attack,
            x,
            None,
            min(settings.extract_budget, len(x)),
            "probs",
            "attacker split",
            settings.seed,
            progress=progress,
        )
        return result.surrogate
    config = TrainConfig(epochs=settings.epochs, lr=settings.lr, seed=settings.seed)
    return apply_removal(stolen, removal, x, y, config, progress)


def removal_rows(
    stolen: Classifier,
    removals: list[Removal],
    schemes: dict[str, OwnershipScheme],
    data: Dataset,
    settings: RemovalSettings,
    significance: float = 0.01,
    progress: Progress | None = None,
    on_copy: Callable[[Removal, Classifier], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (removal, scheme): the copy's test accuracy, the watermark's statistic,
    p-value and decision; the unmodified copy first (method ``none``). ``on_copy`` receives
    each modified copy (to keep it)."""
    rows = []
    for removal in [None, *removals]:
        copy = (
            stolen if removal is None else removed_copy(stolen, removal, data, settings, progress)
        )
        if removal is not None and on_copy is not None:
            on_copy(removal, copy)
        test_accuracy = accuracy(copy, data.test.x, data.test.y)
        for name, scheme in schemes.items():
            evidence = scheme.verify(local_oracle(copy, "labels", client="judge"), significance)
            rows.append(
                {
                    "removal": "none" if removal is None else str(removal),
                    "scheme": name,
                    "test_accuracy": test_accuracy,
                    "watermark_accuracy": evidence.statistic,
                    "p_value": evidence.p_value,
                    "decision": evidence.decision,
                    "reason": evidence.reason,
                }
            )
    return rows


def plot_removal(rows: list[dict[str, Any]], path: Path, significance: float) -> Path:
    """Test accuracy against the watermark's -log10 p-value, one point per removal and scheme,
    with the significance as a line: points below it escaped the verdict."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for scheme in sorted({row["scheme"] for row in rows}):
        points = [r for r in rows if r["scheme"] == scheme and r["p_value"] is not None]
        xs = [r["test_accuracy"] for r in points]
        ys = [-math.log10(max(r["p_value"], 1e-300)) for r in points]
        ax.scatter(xs, ys, label=scheme)
        for row, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(
                row["removal"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.axhline(-math.log10(significance), color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("test accuracy of the modified copy")
    ax.set_ylabel("watermark evidence, -log10 p-value")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("removal attacks: accuracy kept against evidence left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
