"""The ownership matrix's report: ``matrix.md`` (a table per suspect and scheme, the per-scheme
summary), ``matrix.json`` (the whole document) and ``matrix.png`` (a heat map of the evidence,
-log10 p, stolen suspects above the line, independent ones below)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from modelheist.experiments.ownership_matrix import SCHEME_COLUMNS, evidence_score, iter_grid

#: How a decision reads in a Markdown cell.
MARKS = {"stolen": "**stolen**", "not stolen": "not stolen", "cannot verify": "cannot verify"}


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def matrix_markdown(document: dict[str, Any]) -> str:
    """The matrix and its summary as Markdown."""
    config = document["config"]
    schemes = [s for s in SCHEME_COLUMNS if s in document["summary"]]
    lines = [
        f"# Ownership matrix: {config['dataset']}, seed {config['seed']}",
        "",
        f"Each cell: the scheme's p-value and decision at significance "
        f"{config['significance']:g} (DAWN: the smallest p-value over the clients' watermark "
        "sets, Bonferroni-adjusted).",
        "",
        "| suspect | kind | made by | test accuracy | agreement with owner | "
        + " | ".join(schemes)
        + " |",
        "|---|---|---|---:|---:|" + "---|" * len(schemes),
    ]
    for suspect, cells in iter_grid(document):
        entries = []
        for scheme in schemes:
            cell = cells.get(scheme)
            entries.append(
                "-" if cell is None else f"{_p(cell['p_value'])} {MARKS[cell['decision']]}"
            )
        lines.append(
            f"| {suspect['suspect']} | {suspect['kind']} | {suspect['how']} "
            f"| {suspect['test_accuracy']:.3f} | {suspect['agreement_with_owner']:.3f} | "
            + " | ".join(entries)
            + " |"
        )
    lines += [
        "",
        "| scheme | ROC AUC | stolen detected | independent accused | cannot verify "
        "| queries per suspect |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for scheme in schemes:
        s = document["summary"][scheme]
        auc = "-" if s["roc_auc"] is None else f"{s['roc_auc']:.3f}"
        lines.append(
            f"| {scheme} | {auc} | {s['detected']} of {s['stolen']} "
            f"| {s['false_accusations']} of {s['independent']} | {s['cannot_verify']} "
            f"| {s['mean_queries']:,.0f} |"
        )
    reasons = sorted({c["reason"] for c in document["cells"] if c["decision"] == "cannot verify"})
    if reasons:
        lines += ["", "Why cells could not verify:", ""]
        lines += [f"- {reason}" for reason in reasons]
    return "\n".join(lines) + "\n"


def plot_matrix(document: dict[str, Any], path: Path) -> Path:
    """A heat map of -log10 p per suspect (rows) and scheme (columns); cells that decided
    "stolen" are outlined and "cannot verify" is hatched grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    schemes = [s for s in SCHEME_COLUMNS if s in document["summary"]]
    grid = list(iter_grid(document))
    values = np.full((len(grid), len(schemes)), np.nan)
    for row, (_, cells) in enumerate(grid):
        for col, scheme in enumerate(schemes):
            cell = cells.get(scheme)
            if cell is not None and cell["decision"] != "cannot verify":
                values[row, col] = evidence_score(cell)
    fig, ax = plt.subplots(figsize=(1.3 * len(schemes) + 3, 0.3 * len(grid) + 1.8), dpi=120)
    level = -math.log10(document["config"]["significance"])
    top = max(level * 2, float(np.nanmax(values)) if np.isfinite(values).any() else 1.0)
    from matplotlib.colors import SymLogNorm

    scale = SymLogNorm(linthresh=1.0, vmin=0.0, vmax=top)  # weak evidence stays visible
    image = ax.imshow(values, cmap="viridis", norm=scale, aspect="auto")
    for row, (_, cells) in enumerate(grid):
        for col, scheme in enumerate(schemes):
            cell = cells.get(scheme)
            if cell is None or cell["decision"] == "cannot verify":
                ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, color="0.85", hatch="//"))
            elif cell["decision"] == "stolen":
                ax.add_patch(
                    plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, ec="red", lw=1.5)
                )
    stolen = sum(1 for suspect, _ in grid if suspect["kind"] == "stolen")
    ax.axhline(stolen - 0.5, color="white", lw=2)
    ax.set_xticks(range(len(schemes)), schemes, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(grid)), [s["suspect"] for s, _ in grid], fontsize=7)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"-log10 p (red outline: stolen at {document['config']['significance']:g})")
    ax.set_title(
        f"ownership matrix, {document['config']['dataset']}: stolen above the line, "
        "independent below",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_matrix_report(document: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write ``matrix.md``, ``matrix.json`` and ``matrix.png`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": folder / "matrix.md",
        "json": folder / "matrix.json",
        "plot": folder / "matrix.png",
    }
    paths["markdown"].write_text(matrix_markdown(document))
    paths["json"].write_text(json.dumps(document, indent=1))
    plot_matrix(document, paths["plot"])
    return paths
