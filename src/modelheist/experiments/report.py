"""Reports of extraction results: a Markdown page and a plot of fidelity against queries."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = (
    ("transfer_set", "transfer set"),
    ("output", "output"),
    ("budget", "budget"),
    ("queries_used", "queries"),
    ("surrogate_accuracy", "surrogate acc."),
    ("fidelity_test", "fidelity (1-R_test)"),
    ("fidelity_uniform", "fidelity (1-R_unif)"),
)


#: When each of the quickstart API's detectors flagged the attacker, per run.
DETECTION_COLUMNS = (
    ("transfer_set", "transfer set"),
    ("output", "output"),
    ("budget", "budget"),
    ("prada_alarm", "PRADA alarm (query)"),
    ("ood_alarm", "OOD alarm (query)"),
)
#: Each surrogate tested against the DAWN watermark set its own client was given.
WATERMARK_COLUMNS = (
    ("transfer_set", "transfer set"),
    ("output", "output"),
    ("budget", "budget"),
    ("dawn_watermarks", "watermarked answers"),
    ("dawn_p_value", "p-value"),
    ("dawn_verdict", "verdict"),
)
#: The quickstart report's table: the measurements, the detectors' alarms, the watermark.
QUICKSTART_COLUMNS = (*COLUMNS, *DETECTION_COLUMNS[3:], *WATERMARK_COLUMNS[3:])


def _cell(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):  # small p-values keep their digits
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"
    return str(value)


def plot_fidelity(
    runs: list[dict[str, Any]], path: Path, title: str, ylim: tuple[float, float] = (0.0, 1.0)
) -> Path:
    """Fidelity on the test split against queries used, one line per (transfer set, output)."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for run in runs:
        series[f"{run['transfer_set']}, {run['output']}"].append(
            (run["queries_used"], run["fidelity_test"])
        )
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log")
    budgets = sorted({run["queries_used"] for run in runs})
    ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("queries to the victim")
    ax.set_ylabel("fidelity (agreement on test split)")
    ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_table(
    runs: list[dict[str, Any]], columns: tuple[tuple[str, str], ...] = COLUMNS
) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    rows = ["| " + " | ".join(_cell(run.get(key)) for key, _ in columns) + " |" for run in runs]
    return "\n".join([head, rule, *rows])


def _independent_sentence(document: dict[str, Any]) -> str:
    independent = document.get("independent_model")
    if not independent:
        return ""
    tested = [c for c in independent["checks"] if c["verdict"] != "cannot verify"]
    return (
        f"An independently trained CNN (test accuracy {independent['test_accuracy']:.4f}), "
        f"tested against every client's set at {independent['significance_per_set']:.3g} each "
        f"(Bonferroni), was accused by {independent['accused']} of {len(tested)} testable sets."
    )


def write_quickstart_report(document: dict[str, Any], folder: Path) -> Path:
    """Write ``report.md`` and ``fidelity.png`` for a quickstart results document."""
    folder.mkdir(parents=True, exist_ok=True)
    victim = document["victim"]
    plot = plot_fidelity(
        document["runs"],
        folder / "fidelity.png",
        f"Knockoff Nets against a {victim['dataset']} {victim['architecture']}",
    )
    text = f"""# modelheist quickstart

Created {document["created"]} with modelheist {document["modelheist_version"]}
on {document["machine"]}.

**Victim:** {victim["architecture"]} trained on {victim["train_size"]} {victim["dataset"]}
images, test accuracy {victim["test_accuracy"]:.4f}.

**Attack:** Knockoff Nets (random strategy, Orekondy et al. CVPR '19) from a fresh API client
whose budget is the number of queries; the transfer set is either the attacker's
in-distribution pool (disjoint from the victim's training and test data) or an
out-of-distribution dataset; the API answers with full probabilities or labels only.
Fidelity is agreement with the victim's labels on the test split (1-R_test) and on uniformly
random inputs (1-R_unif).

This is {document["note"]}.

The API ran two detectors with the flag policy (they record an alarm and answer as usual):
{", ".join(f"`{spec}`" for spec in document.get("detectors", [])) or "none"}. The last two
columns give the query at which each first flagged the attacking client ("none": never). A
Knockoff client drawing from the victim's own distribution is the blind spot both share.

The API also ran DAWN (`{document.get("watermark", "")}`, Szyller et al. ACM MM '21): a keyed
0.5% of each client's queries got a wrong label, kept as that client's watermark set. The last
three columns test each surrogate against its own client's set (exact binomial test, at
{document.get("watermark_significance", 0.01):g}; "cannot verify": too few watermarked answers to
ever reach it). {_independent_sentence(document)}

{markdown_table(document["runs"], QUICKSTART_COLUMNS)}

![fidelity against queries]({plot.name})
"""
    path = folder / "report.md"
    path.write_text(text)
    return path
