"""The conflicts table over seeds, its conflict matrix, and the report (Markdown, JSON, plot).

The conflict rule. Szyller & Asokan's paper states its verdicts in prose; modelheist makes the
rule explicit. In a cell that combines mechanisms, each ownership mechanism and adversarial
training is judged against its own metric when trained alone; dataset inference, which trains
nothing, is judged on every protected cell it was measured on, against the unprotected model:

- watermark accuracy, the radioactive loss difference, adversarial accuracy: **conflict**
  when the mean over seeds drops by more than ``tolerance`` (absolute);
- dataset inference: **conflict** when its p-value (the calibrated test's) is below the
  significance alone and not in the combination;
- a mechanism that does not work alone (radioactive data not found at the significance,
  dataset inference not finding the unprotected model) cannot be judged: **ineffective alone**.

DP-SGD's guarantee does not depend on what it is combined with (the accountant's epsilon is
reported, not judged), so it conflicts with nothing by this rule; its accuracy cost is in the
table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from modelheist.experiments.conflicts import MECHANISM_NAMES

#: The table's columns: (metric, heading, digits).
COLUMNS = (
    ("accuracy", "accuracy", 3),
    ("watermark_accuracy", "watermark accuracy", 3),
    ("loss_difference", "radioactive loss difference", 4),
    ("radioactive_p", "radioactive p", 1),
    ("di_p", "dataset inference p (calibrated)", 1),
    ("di_notebook_p", "dataset inference p (notebooks')", 1),
    ("adversarial_accuracy", "adversarial accuracy", 3),
    ("epsilon_spent", "epsilon spent", 2),
)
#: Which metric judges each mechanism, and whether by a drop or by a decision.
JUDGED_BY = {
    "wm": ("watermark_accuracy", "drop"),
    "rad": ("loss_difference", "drop"),
    "adv": ("adversarial_accuracy", "drop"),
    "di": ("di_p", "decision"),
}


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per cell and metric over seeds: mean, standard deviation (ddof 1; 0 for one seed), the
    number of seeds; p-values are summarised by their largest value as well."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_cell.setdefault(row["cell"], []).append(row)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for cell, group in by_cell.items():
        metrics: dict[str, dict[str, float]] = {}
        names = sorted({k for r in group for k, v in r["metrics"].items() if _number(v)})
        for name in names:
            values = [float(r["metrics"][name]) for r in group if _number(r["metrics"].get(name))]
            metrics[name] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "max": float(np.max(values)),
                "seeds": len(values),
            }
        summary[cell] = metrics
    return summary


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def conflicts(
    cells: list[dict[str, Any]],
    summary: dict[str, dict[str, dict[str, float]]],
    tolerance: float,
    significance: float,
) -> list[dict[str, Any]]:
    """Each combination cell's verdict on each mechanism judged in it (module docstring)."""
    verdicts = []
    for cell in cells:
        if not cell["mechanisms"] or cell["cell"] not in summary:
            continue
        judged = []
        if len(cell["mechanisms"]) >= 2:  # a mechanism alone is its own reference
            judged = [m for m in cell["mechanisms"] if m in JUDGED_BY]
        if "di_p" in summary[cell["cell"]]:  # dataset inference trains nothing: any cell pairs it
            judged.append("di")
        for mechanism in judged:
            metric, how = JUDGED_BY[mechanism]
            alone = summary.get("none" if mechanism == "di" else mechanism, {}).get(metric)
            combined = summary[cell["cell"]].get(metric)
            if alone is None or combined is None:
                continue
            verdict = _verdict(mechanism, how, alone, combined, summary, tolerance, significance)
            verdicts.append(
                {
                    "cell": cell["cell"],
                    "mechanism": mechanism,
                    "metric": metric,
                    "alone": alone["mean"],
                    "combined": combined["mean"],
                    "verdict": verdict,
                }
            )
    return verdicts


def _verdict(
    mechanism: str,
    how: str,
    alone: dict[str, float],
    combined: dict[str, float],
    summary: dict[str, dict[str, dict[str, float]]],
    tolerance: float,
    significance: float,
) -> str:
    if how == "decision":  # p-values: judged on the largest over seeds
        if alone["max"] >= significance:
            return "ineffective alone"
        return "conflict" if combined["max"] >= significance else "no conflict"
    if mechanism == "rad":
        p_alone = summary.get("rad", {}).get("radioactive_p")
        if p_alone is not None and p_alone["max"] >= significance:
            return "ineffective alone"
    return "conflict" if alone["mean"] - combined["mean"] > tolerance else "no conflict"


def document(config: dict[str, Any], rows: list[dict[str, Any]], cells: list) -> dict[str, Any]:
    """The whole report as JSON: configuration, every cell of every seed, the summary over
    seeds and the conflict verdicts."""
    summary = summarise(rows)
    plan = [{"cell": c.name, "mechanisms": list(c.mechanisms), "variant": c.variant} for c in cells]
    return {
        "kind": "modelheist-conflicts",
        "config": config,
        "seeds": sorted({r["seed"] for r in rows}),
        "cells": plan,
        "rows": rows,
        "summary": summary,
        "conflicts": conflicts(plan, summary, config["tolerance"], config["significance"]),
    }


def _value(stats: dict[str, float] | None, digits: int, p_value: bool) -> str:
    if stats is None:
        return "–"
    if p_value:
        return f"{stats['max']:.1e}" + (" (largest)" if stats["seeds"] > 1 else "")
    text = f"{stats['mean']:.{digits}f}"
    return text + (f" ± {stats['std']:.{digits}f}" if stats["seeds"] > 1 else "")


def markdown(doc: dict[str, Any]) -> str:
    """The talk's table and the conflict matrix as Markdown."""
    summary = doc["summary"]
    present = [c for c in COLUMNS if any(c[0] in summary.get(x["cell"], {}) for x in doc["cells"])]
    config = doc["config"]
    lines = [
        f"# Conflicts between protections: {config['dataset']}",
        "",
        f"Seeds {', '.join(map(str, doc['seeds']))}; mean ± standard deviation over seeds "
        "(p-values: the largest). Architecture "
        f"{config['architecture']}, {config['epochs']} epochs, {config['optimizer']} at "
        f"learning rate {config['lr']:g}"
        + (
            f"; the larger-clip relaxation: clipping norm {config['relaxed_clip']:g} at rate "
            f"{config.get('relaxed_lr') or config['lr']:g}."
            if any(c["variant"] == "larger-clip" for c in doc["cells"])
            else "."
        )
        + (
            f" Adversarial training's cells train at rate {config['adv_lr']:g}."
            if config.get("adv_lr") is not None
            and any("adv" in c["mechanisms"] for c in doc["cells"])
            else ""
        ),
        "",
        "| cell | " + " | ".join(h for _, h, _ in present) + " |",
        "|---|" + "---:|" * len(present),
    ]
    for cell in doc["cells"]:
        stats = summary.get(cell["cell"], {})
        values = [_value(stats.get(m), d, m.endswith("_p")) for m, _, d in present]
        lines.append(f"| {cell['cell']} | " + " | ".join(values) + " |")
    lines += [
        "",
        f"## Conflicts (tolerance {config['tolerance']}, significance {config['significance']})",
        "",
        "| combination | mechanism | metric | alone | combined | verdict |",
        "|---|---|---|---:|---:|---|",
    ]
    for v in doc["conflicts"]:
        p_value = v["metric"].endswith("_p")
        alone = f"{v['alone']:.2g}" if p_value else f"{v['alone']:.3f}"
        combined = f"{v['combined']:.2g}" if p_value else f"{v['combined']:.3f}"
        lines.append(
            f"| {v['cell']} | {MECHANISM_NAMES[v['mechanism']]} | {v['metric']} | {alone} "
            f"| {combined} | {v['verdict']} |"
        )
    if not doc["conflicts"]:
        lines.append("| (no combination measured yet) | | | | | |")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Each judged mechanism's metric alone and in each combination, as bars with the seeds'
    spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, Any]]] = {}
    for v in doc["conflicts"]:
        if not v["metric"].endswith("_p"):
            groups.setdefault(v["metric"], []).append(v)
    figure, axes = plt.subplots(1, max(1, len(groups)), figsize=(4.5 * max(1, len(groups)), 3.6))
    axes = np.atleast_1d(axes)
    summary = doc["summary"]
    for axis, (metric, verdicts) in zip(axes, groups.items(), strict=False):
        alone_cell = {"watermark_accuracy": "wm", "loss_difference": "rad"}.get(metric, "adv")
        names = [alone_cell, *[v["cell"] for v in verdicts]]
        stats = [summary[n][metric] for n in names]
        colours = ["tab:grey"] + [
            "tab:red" if v["verdict"] == "conflict" else "tab:blue" for v in verdicts
        ]
        axis.bar(
            range(len(names)),
            [s["mean"] for s in stats],
            yerr=[s["std"] for s in stats],
            color=colours,
            capsize=3,
        )
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        axis.set_title(metric.replace("_", " "), fontsize=10)
    if not groups:
        axes[0].text(0.5, 0.5, "no combination measured", ha="center", va="center")
    figure.suptitle(f"alone (grey) and combined (red: conflict) — {doc['config']['dataset']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(doc: dict[str, Any], folder: Path) -> dict[str, Path]:
    """``conflicts.md``, ``conflicts.json`` and ``conflicts.png`` in ``folder``."""
    from modelheist.experiments.run_folder import write_atomically

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": folder / "conflicts.md",
        "json": folder / "conflicts.json",
        "plot": folder / "conflicts.png",
    }
    write_atomically(paths["markdown"], markdown(doc))
    write_atomically(paths["json"], json.dumps(doc, indent=2))
    plot(doc, paths["plot"])
    return paths
