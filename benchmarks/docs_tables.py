"""Generate the tables of docs/benchmarks.md from the results stores (benchmarks/results/*.jsonl).

A generated table sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` in the
document; this script rewrites what lies between, so that every number in a generated table has
a row behind it. ``--check`` changes nothing and fails if the document differs from what it
would write (the test suite runs it).

    python benchmarks/docs_tables.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from modelheist.experiments.results import ResultsStore

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"


def _spread(values: list[float], digits: int = 3) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def state_scaling(rows: list[dict]) -> str:
    """Median commit time per stored history size, mean ± std over runs (one run per seed)."""
    by_key: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in rows:
        by_key[(row["variant"], row["stored_vectors"])].append(row)
    smallest = {variant: min(size for v, size in by_key if v == variant) for variant, _ in by_key}
    lines = [
        "| state kept as | stored vectors | runs | median commit (ms) | p90 commit (ms) "
        "| median answer (ms) | commit vs the smallest history | commits |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (variant, size), group in sorted(by_key.items()):
        base = {r["seed"]: r for r in by_key[(variant, smallest[variant])]}
        ratios = [
            r["metrics"]["median_commit_ms"] / base[r["seed"]]["metrics"]["median_commit_ms"]
            for r in group
            if r["seed"] in base
        ]
        commits = ", ".join(sorted({r["commit"] for r in group}))
        lines.append(
            f"| {variant} | {size:,} | {len(group)} "
            f"| {_spread([r['metrics']['median_commit_ms'] for r in group])} "
            f"| {_spread([r['metrics']['p90_commit_ms'] for r in group])} "
            f"| {_spread([r['metrics']['median_answer_ms'] for r in group])} "
            f"| {_spread(ratios, 2)}x | {commits} |"
        )
    return "\n".join([*lines, "", provenance(rows)])


def provenance(rows: list[dict]) -> str:
    """The machines and commands behind a table's rows."""
    machines = "; ".join(
        sorted(
            {
                r["machine"] + (f", training on {r['device']}" if r.get("device") else "")
                for r in rows
            }
        )
    )
    commands = ", ".join(f"`{c}`" for c in sorted({r["command"] for r in rows}))
    commits = ", ".join(sorted({r["commit"] for r in rows}))
    dates = sorted(r["date"][:10] for r in rows)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return f"Machine: {machines}. Commits: {commits}; {when}. Commands: {commands}."


def _mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def where(
    match: dict[str, object], build: Callable[[list[dict]], str]
) -> Callable[[list[dict]], str]:
    """``build`` over the rows whose fields equal ``match``'s."""
    return lambda rows: build([r for r in rows if all(r.get(k) == v for k, v in match.items())])


def on_both_splits(
    name: str, stores: tuple[str, ...], make: Callable[[str], Callable[[list[dict]], str]]
) -> dict[str, tuple[tuple[str, ...], Callable[[list[dict]], str]]]:
    """Two tables of one comparison: ``name`` on validation fidelity, ``name_test`` on test."""
    return {
        name: (stores, make("fidelity_validation")),
        f"{name}_test": (stores, make("fidelity_test")),
    }


def comparison(
    series: list[tuple[str, str, str]],
    keys: tuple[str, ...] = ("transfer_set", "output", "budget"),
    metric: str = "fidelity_test",
) -> Callable[[list[dict]], str]:
    """A table with one row per grid point (``keys``) and one column per series
    (scenario, variant, heading): ``metric``'s mean ± standard deviation over seeds, the seed
    count in the heading, and the queries the API counted."""

    def build(rows: list[dict]) -> str:
        cells: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for row in rows:
            for scenario, variant, heading in series:
                if row.get("scenario") == scenario and row.get("variant") == variant:
                    cells[tuple(row[k] for k in keys)][heading].append(row)
        seeds = {h: sorted({r["seed"] for c in cells.values() for r in c[h]}) for *_, h in series}
        head = [k.replace("_", " ") for k in keys] + [
            f"{h} ({len(seeds[h])} seed{'s' if len(seeds[h]) != 1 else ''})" for *_, h in series
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(keys) + "---:|" * len(series)]
        for point in sorted(cells, key=lambda p: tuple(str(v).zfill(8) for v in p)):
            values = []
            for *_, heading in series:
                found = [r for r in cells[point][heading] if metric in r["metrics"]]
                cell = _mean_std([r["metrics"][metric] for r in found])
                if 1 < len(found) < len(seeds[heading]):
                    cell += f" ({len(found)} seeds)"  # fewer than the column's
                values.append(cell)
            lines.append(
                "| "
                + " | ".join(
                    [*(f"{v:,}" if isinstance(v, int) else str(v) for v in point), *values]
                )
                + " |"
            )
        queries = sorted(
            {r["queries_counted"] for c in cells.values() for g in c.values() for r in g}
        )
        used = [r for c in cells.values() for g in c.values() for r in g]
        victims = [v for r in used if (v := r["metrics"]["victim_accuracy"]) is not None]
        notes = [f"Metric: {metric}, mean ± standard deviation over seeds."]
        if victims:
            notes.append(f"Victim test accuracy {_mean_std(victims)} over the runs.")
        if queries:
            notes.append(
                f"Queries counted by the API per run: {', '.join(f'{q:,}' for q in queries)}."
            )
        return (
            "\n".join([*lines, "", " ".join(notes), "", provenance(used)])
            if used
            else "(no results yet)"
        )

    return build


def splits(rows: list[dict]) -> str:
    """Each registry dataset's split sizes, from its latest row (deterministic splitting)."""
    latest = {row["dataset"]: row for row in rows}
    lines = [
        "| dataset | owner's training | validation | attacker's pool | evaluation (test) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in latest.items():
        m = row["metrics"]
        lines.append(
            f"| {name} | {m['train']:,} | {m['validation']:,} | {m['pool']:,} | {m['test']:,} |"
        )
    return "\n".join([*lines, "", provenance(list(latest.values()))])


def tramer(rows: list[dict]) -> str:
    """Tramèr et al.'s attacks: the latest run of each (attack, dataset, output), one seed
    (the attacks are exact or nearly; their queries as the API counted them)."""
    latest: dict[tuple, dict] = {}
    for row in rows:
        latest[(row["dataset"], row["attack"], row["output"])] = row
    lines = [
        "| attack | dataset (test size) | victim | output | queries | 1-R_test | 1-R_unif "
        "| max abs p gap | target |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in latest.values():
        m = row["metrics"]
        lines.append(
            f"| {row['attack']} | {row['dataset']} ({row['test_size']}) | {row['victim']} "
            f"| {row['output']} | {row['queries_counted']:,} | {m['fidelity_test']:.4f} "
            f"| {m['fidelity_uniform']:.4f} | {m['max_probability_gap']:.1e} | {row['target']} |"
        )
    return "\n".join([*lines, "", provenance(list(latest.values()))])


def _first_alarms(group: list[dict]) -> str:
    """First-alarm query counts over seeds: mean ± std when every seed raised one, else how
    many seeds raised none."""
    found = [r["metrics"]["first_alarm"] for r in group if r["metrics"]["first_alarm"]]
    missing = len(group) - len(found)
    if not found:
        return f"none ({missing} of {missing})"
    text = _spread([float(v) for v in found], 0) if len(found) > 1 else f"{found[0]:.0f}"
    return text + (f"; none in {missing}" if missing else "")


def _victim(row: dict) -> str:
    return row.get("victim", "mnist5k-cnn")


def prada(rows: list[dict]) -> str:
    """PRADA's first alarm per stream and delta on the mnist5k victim, over seeds."""
    rows = [r for r in rows if _victim(r) == "mnist5k-cnn"]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["kind"], row["stream"], row["delta"])].append(row)
    lines = [
        "| stream | kind | delta | seeds | queries | first alarm (query) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (kind, stream, delta), group in sorted(groups.items()):
        queries = sorted({r["queries_counted"] for r in group})
        lines.append(
            f"| {stream} | {kind} | {delta} | {len(group)} "
            f"| {'/'.join(f'{q:,}' for q in queries)} | {_first_alarms(group)} |"
        )
    costs = [r["metrics"]["seconds_per_query"] * 1000 for r in rows]
    note = f"Time per replayed query (model, PRADA, ledger): {_spread(costs, 2)} ms."
    return "\n".join([*lines, "", note, "", provenance(rows)])


def prada_tradeoff(rows: list[dict]) -> str:
    """PRADA's delta trade-off on the fashion-mnist victim: the first alarm per stream (rows)
    and delta (columns), over seeds."""
    rows = [r for r in rows if _victim(r) == "fashion-mnist-cnn"]
    if not rows:
        return "No run yet: `python benchmarks/prada.py --dataset fashion-mnist --deltas 0.87,0.9,0.95,0.96`."
    deltas = sorted({r["delta"] for r in rows})
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["kind"], row["stream"], row["delta"])].append(row)
    lines = [
        "| stream | kind | queries | " + " | ".join(f"delta {d}" for d in deltas) + " |",
        "|---|---|---:|" + "---:|" * len(deltas),
    ]
    for kind, stream in sorted({(k, s) for k, s, _ in groups}):
        group = [r for d in deltas for r in groups.get((kind, stream, d), [])]
        queries = sorted({r["queries_counted"] for r in group})
        cells = [
            _first_alarms(groups[(kind, stream, d)]) if (kind, stream, d) in groups else "-"
            for d in deltas
        ]
        lines.append(
            f"| {stream} | {kind} | {'/'.join(f'{q:,}' for q in queries)} | "
            + " | ".join(cells)
            + " |"
        )
    seeds = len({r["seed"] for r in rows})
    note = f"First alarm (query) over {seeds} seeds; benign streams end at 10,000 queries."
    return "\n".join([*lines, "", note, "", provenance(rows)])


def quickstart(rows: list[dict]) -> str:
    """The main job: its wall time, and each run's fidelity and detector alarms (latest run of
    each preset), beside what the full attack reaches (Knockoff's default, the latest row of
    each seed of the Knockoff grid; issue 15: the table says plainly that the run is
    shortened)."""
    from modelheist.attacks.knockoff import KnockoffNets
    from modelheist.experiments.quickstart import QuickstartConfig

    full_runs: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for row in rows:
        if (row.get("scenario"), row.get("variant")) == ("knockoff-fmnist", "default"):
            full_runs[(row["transfer_set"], row["output"], row["budget"])][row["seed"]] = row
    rows = [r for r in rows if r.get("benchmark") == "quickstart"]
    if not rows:
        return "No run yet: `python benchmarks/quickstart.py`."
    latest = {r["preset"]: r for r in rows}
    presets = {"full": QuickstartConfig.full(), "fast": QuickstartConfig.fast()}
    defaults = KnockoffNets()
    used_full: list[dict] = []
    lines = []
    for preset, row in sorted(latest.items()):
        m = row["metrics"]
        watermarked = "watermark" in m
        independent = m.get("independent_model") or {}
        lines += [
            f"**{preset}** (seed {row['seed']}): {m['wall_seconds'] / 60:.1f} minutes wall time, "
            f"victim accuracy {m['victim_accuracy']:.4f}"
            + (
                f"; the independently trained model accused by {independent['accused']} of "
                f"{len(m['runs'])} clients' DAWN sets."
                if watermarked
                else "."
            ),
            "",
            "| transfer set | output | budget | queries | fidelity | full attack's fidelity "
            "| PRADA alarm | OOD alarm |"
            + (" DAWN watermarks | p-value | verdict |" if watermarked else ""),
            "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---|" if watermarked else ""),
        ]
        beside: list[dict] = []
        for run in m["runs"]:
            full = list(
                full_runs.get((run["transfer_set"], run["output"], run["budget"]), {}).values()
            )
            beside += full
            full_cell = _mean_std([r["metrics"]["fidelity_test"] for r in full])
            alarms = [
                "none" if run[k] is None else f"{run[k]:,}" for k in ("prada_alarm", "ood_alarm")
            ]
            if watermarked:
                alarms += [
                    str(run["dawn_watermarks"]),
                    _p(run["dawn_p_value"]),
                    run["dawn_verdict"],
                ]
            lines.append(
                f"| {run['transfer_set']} | {run['output']} | {run['budget']:,} "
                f"| {run['queries_used']:,} | {run['fidelity_test']:.4f} | {full_cell} | "
                + " | ".join(alarms)
                + " |"
            )
        lines.append("")
        config = presets.get(preset)
        if config is not None:
            lines.append(
                f"A shortened run: the {preset} preset's attack trains its surrogate "
                f"{config.attack_epochs} epochs (at least {config.attack_min_steps} steps), "
                f"Knockoff's defaults {defaults.epochs} (at least {defaults.min_steps})."
            )
        if beside:
            seeds = sorted({r["seed"] for r in beside})
            epochs = "/".join(
                str(e) for e in sorted({r["config"]["victim"]["epochs"] for r in beside})
            )
            devices = ", ".join(sorted({r.get("device") or "unknown" for r in beside}))
            lines[-1] += (
                " \"Full attack's fidelity\" is the attack as users run it: the Knockoff grid's "
                f"default (its own victims, {epochs} epochs, trained on {devices}), mean ± "
                f"standard deviation over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}."
            )
            used_full += beside
        lines.append("")
    return "\n".join([*lines, provenance(list(latest.values()) + used_full)])


def ood(rows: list[dict]) -> str:
    """OOD detectors: per-query rates and per-client first alarms, over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["measure"], row["stream"], row["detector"])].append(row)
    detectors = sorted({r["detector"] for r in rows})
    head = "| measure | stream | " + " | ".join(detectors) + " |"
    lines = [head, "|---|---|" + "---:|" * len(detectors)]
    for measure, stream in sorted({(m, s) for m, s, _ in groups}):
        cells = []
        for detector in detectors:
            group = groups.get((measure, stream, detector), [])
            if not group:
                cells.append("-")
            elif measure == "per-query":
                cells.append(_spread([r["metrics"]["rate"] for r in group], 4))
            else:
                cells.append(_first_alarms(group))
        lines.append(f"| {measure} | {stream} | " + " | ".join(cells) + " |")
    seeds = len({r["seed"] for r in rows})
    note = (
        f"Per-query: the share of inputs judged correctly (TNR on the evaluation split, TPR on "
        f"each outside pool's evaluation half); client: the query count at the first alarm. "
        f"{seeds} seeds."
    )
    return "\n".join([*lines, "", note, "", provenance(rows)])


def deterrence(rows: list[dict]) -> str:
    """Misinformation and proof of work: each quantity's mean ± std over seeds, and its target."""
    misinformation = [
        ("victim accuracy (evaluation split)", lambda m: m["victim_accuracy"], ""),
        ("defended API's accuracy", lambda m: m["defended_accuracy"], ""),
        (
            "accuracy lost (points)",
            lambda m: 100 * (m["victim_accuracy"] - m["defended_accuracy"]),
            "<= 0.5",
        ),
        ("Knockoff fidelity, undefended", lambda m: m["knockoff_fidelity_undefended"], ""),
        ("Knockoff fidelity, defended", lambda m: m["knockoff_fidelity_defended"], ""),
        (
            "fidelity cut (points)",
            lambda m: 100 * (m["knockoff_fidelity_undefended"] - m["knockoff_fidelity_defended"]),
            ">= 20",
        ),
    ]
    quantities = {
        "misinformation": misinformation,
        "misinformation after an OOD alarm": misinformation,
        "proof-of-work": [
            ("regular user's wall time, x undefended", lambda m: m["regular_slowdown"], "<= 2"),
            ("attacker's wall time, x undefended", lambda m: m["attacker_slowdown"], ">= 10"),
            ("attacker's seconds solving", lambda m: m["attacker_seconds_solving"], ""),
        ],
    }
    lines = ["| defense | quantity | seeds | value | target |", "|---|---|---:|---:|---|"]
    for measure, rules in quantities.items():
        group = [r for r in rows if r["measure"] == measure]
        for label, value, target in rules:
            if group:
                values = [value(r["metrics"]) for r in group]
                lines.append(
                    f"| {measure} | {label} | {len(group)} | {_spread(values, 3)} | {target} |"
                )
    return "\n".join([*lines, "", provenance(rows)])


def prada_latency(rows: list[dict]) -> str:
    """PRADA's added latency and memory per client by history size (latest run per size)."""
    latest = {r["metrics"]["history"]: r for r in rows}
    lines = [
        "| history (queries) | growing-set members | state (MB) | median added ms | p90 added ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size, row in sorted(latest.items()):
        m = row["metrics"]
        lines.append(
            f"| {size:,} | {m['growing_set_members']:,} | {m['state_bytes'] / 1e6:.1f} "
            f"| {m['median_added_ms']:.3f} | {m['p90_added_ms']:.3f} |"
        )
    return "\n".join([*lines, "", provenance(list(latest.values()))])


#: The pipeline a served stack's throughput is compared with (default: the undefended image
#: model, "none"): the int8 text model against the float one.
SERVE_BASELINES = {"text-minilm-int8": "text-minilm"}


def serve_load(rows: list[dict]) -> str:
    """Throughput and latency per (pipeline, request, clients), mean ± std over the repetitions
    of each pipeline's latest run (the code as it now is), and the defended / undefended
    throughput ratio taken within each repetition."""
    latest = defaultdict(str)
    for row in rows:
        latest[row["stack"]] = max(latest[row["stack"]], row["date"])
    rows = [r for r in rows if r["date"] == latest[r["stack"]]]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["stack"], row["request"], row["clients"])].append(row)
    lines = [
        "| pipeline | request | clients | repetitions | requests/s | images/s | p50 ms | p99 ms "
        "| errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (stack, request, clients), group in sorted(groups.items()):
        m = [r["metrics"] for r in group]
        lines.append(
            f"| {stack} | {request} | {clients} | {len(group)} "
            f"| {_spread([x['requests_per_s'] for x in m], 0)} "
            f"| {_spread([x['images_per_s'] for x in m], 0)} "
            f"| {_spread([x['p50_ms'] for x in m], 1)} | {_spread([x['p99_ms'] for x in m], 1)} "
            f"| {sum(x['errors'] for x in m)} |"
        )
    ratios = []
    for (stack, request, clients), group in sorted(groups.items()):
        if stack in ("none", *SERVE_BASELINES.values()):
            continue
        baseline = SERVE_BASELINES.get(stack, "none")
        base = {(r["commit"], r["repeat"]): r for r in groups.get((baseline, request, clients), [])}
        per_run = [
            r["metrics"]["requests_per_s"]
            / base[(r["commit"], r["repeat"])]["metrics"]["requests_per_s"]
            for r in group
            if (r["commit"], r["repeat"]) in base
        ]
        if per_run:
            ratios.append(
                f"| {stack} | {baseline} | {request} | {clients} | {_spread(per_run, 2)} |"
            )
    table = "\n".join(lines)
    if ratios:
        table += (
            "\n\n| pipeline | against | request | clients | throughput ratio |"
            "\n|---|---|---|---:|---:|\n"
        )
        table += "\n".join(ratios)
    return "\n".join([table, "", provenance(rows)])


def validation_choice(
    scenario: str, variants: tuple[str, ...], keys: tuple[str, ...]
) -> Callable[[list[dict]], str]:
    """A tuning table: one column per variant of ``scenario``, its validation fidelity (the
    split every default is chosen on)."""
    return comparison([(scenario, v, v) for v in variants], keys, "fidelity_validation")


SYNTHETIC_STORES = (
    "synthetic-jbda.jsonl",  # JBDA under its per-output step (the step-0.1 runs: their own store)
    "synthetic-t-rnd.jsonl",
    "synthetic-n-ifgsm.jsonl",
    "synthetic-tuning.jsonl",
)
# T-RND's one-network runs are the tuning scenario's no-augment variant (the same recipe); the
# T-RND grid runs the three-member ensemble only
SYNTHETIC_SERIES = [
    ("synthetic-tuning", "no-augment", "T-RND, 1 net")
    if (attack, variant) == ("t-rnd", "one-network")
    else (f"synthetic-{attack}", variant, f"{title}, {short}")
    for attack, title in (("jbda", "JBDA"), ("t-rnd", "T-RND"), ("n-ifgsm", "N I-FGSM"))
    for variant, short in (("one-network", "1 net"), ("three-members", "3 nets"))
]


def _p(value: float | None) -> str:
    if value == 0.0:  # below what a double holds (about 1e-308)
        return "< 1e-300"
    return "-" if value is None else f"{value:.2g}"


def _verified(values: list[bool]) -> str:
    return f"{sum(values)} of {len(values)}"


def watermark(rows: list[dict]) -> str:
    """The backdoor watermark: its cost and accuracy per trigger source, over seeds."""
    rows = [r for r in rows if r["measure"] == "embedding"]
    if not rows:
        return "(no results yet)"
    lines = [
        "| triggers from | seeds | plain test acc. | marked test acc. | cost (points) | "
        "watermark acc. | largest p-value |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for source in sorted({r["source"] for r in rows}):
        group = [r["metrics"] for r in rows if r["source"] == source]
        lines.append(
            f"| {source} | {len(group)} | {_spread([m['plain_test_accuracy'] for m in group], 4)} "
            f"| {_spread([m['marked_test_accuracy'] for m in group], 4)} "
            f"| {_spread([m['cost_points'] for m in group], 2)} "
            f"| {_spread([m['watermark_accuracy'] for m in group], 3)} "
            f"| {_p(max(m['p_value'] for m in group))} |"
        )
    note = "Targets: watermark accuracy >= 0.97 at a cost <= 1 point (100 triggers, 20 repeats)."
    return "\n".join([*lines, "", note, "", provenance(rows)])


def removal(rows: list[dict]) -> str:
    """What each removal attack leaves of the backdoor watermark, over seeds."""
    rows = [r for r in rows if r["measure"] == "removal"]
    if not rows:
        return "(no results yet)"
    lines = [
        "| removal | seeds | test acc. | watermark acc. | largest p-value | still verified at 0.01 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["removal"] for r in rows):  # the benchmark's order, none first
        group = [r["metrics"] for r in rows if r["removal"] == name]
        p_values = [m["p_value"] for m in group if m["p_value"] is not None]
        lines.append(
            f"| {name} | {len(group)} | {_spread([m['test_accuracy'] for m in group], 4)} "
            f"| {_spread([m['watermark_accuracy'] for m in group], 3)} "
            f"| {_p(max(p_values) if p_values else None)} "
            f"| {_verified([m['decision'] == 'stolen' for m in group])} |"
        )
    return "\n".join([*lines, "", provenance(rows)])


def false_accusations(rows: list[dict]) -> str:
    """Independent models against genuine watermark sets: the calibration of the tests."""
    rows = [r for r in rows if r["measure"] == "calibration"]
    if not rows:
        return "(no results yet)"
    latest = {row["key"]: row for row in rows}  # the newest row of each chance rule
    lines = [
        "| chance agreement | independent models | watermark sets | tests | smallest p-value "
        "| at p <= 2^-64 | at p <= 0.01 | rate at 0.01 (95% CI) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in latest.values():
        m = row["metrics"]
        low, high = m["rate_0_01_ci95"]
        lines.append(
            f"| {row.get('chance', '1/classes')} | {row['models']} | {len(row['sets'])} "
            f"| {m['tests']} | {_p(m['smallest_p_value'])} | {m['below_2_64']} "
            f"| {m['below_0_01']} | {m['rate_0_01']:.4f} ({low:.4f} to {high:.4f}) |"
        )
    sets = next(iter(latest.values()))["sets"]
    note = (
        "Sets: " + ", ".join(sets) + ". Targets: none at 2^-64; the rate at 0.01 no higher "
        "than 0.01."
    )
    return "\n".join([*lines, "", note, "", provenance(list(latest.values()))])


def false_claims(rows: list[dict]) -> str:
    """Crafted watermark sets against independent models, and true claims, per rule."""
    claims = [r for r in rows if r["measure"] in ("false-claim", "true-claim")]
    if not claims:
        return "(no results yet)"
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in claims:
        eps = "-" if row["epsilon"] is None else f"{row['epsilon'] * 255:.0f}/255"
        scheme = row["key"].split("-eps")[0]
        for label, figures in row["metrics"].items():
            claim, defense = label.split("/")
            groups[(scheme, claim, eps, defense)].append(figures)
    lines = [
        "| scheme | claim | epsilon | rule | seeds | declared stolen | share |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    rules = ["naive", "derived", "screen", "derived+screen"]
    for scheme, claim, eps, defense in sorted(
        groups, key=lambda k: (k[0], k[1] != "true", k[1], k[2], rules.index(k[3]))
    ):
        group = groups[(scheme, claim, eps, defense)]
        stolen = sum(g["stolen"] for g in group)
        total = sum(g["suspects"] for g in group)
        lines.append(
            f"| {scheme} | {claim} | {eps} | {defense} | {len(group)} | {stolen} of {total} "
            f"| {stolen / total:.3f} |"
        )
    note = (
        "False claims: the share of (seed, independent model) pairs declared stolen at 0.01; "
        "true claims: the owner's watermark against its marked victim. Target: false claims "
        "at most 5% with every true claim verified."
    )
    return "\n".join([*lines, "", note, "", provenance(claims)])


def _tested_accuracy(group: list[dict]) -> str:
    """Watermark accuracy over the runs whose set could be tested at all (a set too small for
    the loosest level has none), saying how many those were when not all."""
    tested = [m["watermark_accuracy"] for m in group if m["watermark_accuracy"] is not None]
    if not tested:
        return "-"
    cell = _spread(tested, 3)
    return cell if len(tested) == len(group) else f"{cell} ({len(tested)} testable)"


def dawn(rows: list[dict]) -> str:
    """DAWN: honest clients' cost, and each attack's surrogate against its watermark set, for
    each echo radius served (rows without one: 0, no echo)."""
    radii = sorted({r.get("radius", 0.0) for r in rows})
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["measure"] == "attack":
            key = (row.get("radius", 0.0), row["attack"], row["output"], row["budget"])
            groups[key].append(row["metrics"])
    lines = [
        "| echo radius | attack | output | budget | seeds | fidelity | watermarks | "
        "answers echoed | watermark acc. | largest p-value | verified at 1e-3 | at 2^-64 |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (radius, attack, output, budget), group in sorted(groups.items()):
        p_values = [m["p_value"] for m in group if m["p_value"] is not None]
        lines.append(
            f"| {radius:g} | {attack} | {output} | {budget:,} | {len(group)} "
            f"| {_spread([m['fidelity_test'] for m in group], 4)} "
            f"| {_spread([float(m['watermarks']) for m in group], 0)} "
            f"| {_spread([float(m.get('echoed', 0)) for m in group], 0)} "
            f"| {_tested_accuracy(group)} "
            f"| {_p(max(p_values) if p_values else None)} "
            f"| {_verified([m['verified_1e-3'] for m in group])} "
            f"| {_verified([m['verified_2^-64'] for m in group])} |"
        )
    costs = []
    for radius in radii:
        benign = [
            r["metrics"]
            for r in rows
            if r["measure"] == "benign" and r.get("radius", 0.0) == radius
        ]
        if benign:
            costs.append(
                f"- echo radius {radius:g}: accuracy lost "
                f"{_spread([m['loss_points'] for m in benign], 2)} points over {len(benign)} "
                f"seeds (target <= 0.5); answers echoed "
                f"{_spread([float(m.get('echoed', 0)) for m in benign], 0)}."
            )
    intro = ["Honest client (the evaluation split):", *costs] if costs else []
    return "\n".join([*intro, "", *lines, "", provenance(rows)])


#: Each generated table: its results stores and the function that renders it.
def radioactive(rows: list[dict]) -> str:
    """Radioactive data: the marked victim's detection and cost per setting, over seeds, and the
    independent models' p-values with a Kolmogorov-Smirnov test of uniformity per mark."""
    from scipy.stats import kstest

    lines = [
        "| q | epsilon (/255) | epochs | seeds | PSNR (dB) | clean acc. | marked acc. | white-box log10 p "
        "| black-box loss diff. | control loss diff. | black-box p (largest) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    victims = [r for r in rows if r["measure"] == "victim"]
    settings = sorted({_radioactive_setting(r) for r in rows})
    for setting in settings:
        fraction, epsilon, epochs = setting
        group = [r["metrics"] for r in victims if _radioactive_setting(r) == setting]
        if not group:
            continue
        lines.append(
            f"| {fraction:g} | {epsilon:g} | {epochs} | {len(group)} | {_spread([m['psnr'] for m in group], 1)} "
            f"| {_spread([m['clean_accuracy'] for m in group], 4)} "
            f"| {_spread([m['test_accuracy'] for m in group], 4)} "
            f"| {_spread([m['white_box_log10_p'] for m in group], 1)} "
            f"| {_spread([m['black_box_statistic'] for m in group], 3)} "
            f"| {_spread([m['control_loss_difference'] for m in group], 3)} "
            f"| {_p(max(m['black_box_p'] for m in group))} |"
        )
    lines += [
        "",
        "| q | epsilon (/255) | epochs | mark (seed) | independent models | white-box: smallest p | KS p "
        "| accused at 1e-4 | black-box: smallest p | KS p | accused at 1e-4 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setting in settings:
        fraction, epsilon, epochs = setting
        independent = [
            r for r in rows if r["measure"] == "independent" and _radioactive_setting(r) == setting
        ]
        for seed in sorted({r["seed"] for r in independent}):
            group = [r["metrics"] for r in independent if r["seed"] == seed]
            cells = []
            for mode in ("white_box", "black_box"):
                p_values = [m[f"{mode}_p"] for m in group]
                cells += [
                    _p(min(p_values)),
                    f"{kstest(p_values, 'uniform').pvalue:.2f}",
                    _verified([m[f"{mode}_decision"] == "stolen" for m in group]),
                ]
            lines.append(
                f"| {fraction:g} | {epsilon:g} | {epochs} | {seed} | {len(group)} | "
                + " | ".join(cells)
                + " |"
            )
    probes = [r for r in rows if r["measure"] == "linear-probe"]
    if probes:
        lines += [
            "",
            "| q | epsilon (/255) | marker epochs | seeds | linear probe on the marker's features: acc. "
            "| mean cosine | white-box log10 p | detected at 1e-4 |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for setting in settings:
        fraction, epsilon, epochs = setting
        group = [r["metrics"] for r in probes if _radioactive_setting(r) == setting]
        if group:
            lines.append(
                f"| {fraction:g} | {epsilon:g} | {epochs} | {len(group)} "
                f"| {_spread([m['test_accuracy'] for m in group], 4)} "
                f"| {_spread([m['white_box_statistic'] for m in group], 3)} "
                f"| {_spread([m['white_box_log10_p'] for m in group], 1)} "
                f"| {_verified([m['white_box_decision'] == 'stolen' for m in group])} |"
            )
    note = (
        "Targets: the marked victim detected at p < 1e-4 (q = 10%); the independent models' "
        "p-values uniform (KS p >= 0.05, at least 20 models)."
    )
    return "\n".join([*lines, "", note, "", provenance(rows)])


def dataset_inference(rows: list[dict]) -> str:
    """Dataset inference: each suspect's p-value over seeds, how many were accused at 1e-3, and
    the paper's aggregate beside it."""
    lines = [
        "| suspect | runs | score difference | largest p | smallest p | accused at 1e-3 "
        "| paper's aggregate (largest) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    rows = [r for r in rows if r.get("construction", "calibrated") == "calibrated"]
    for name in dict.fromkeys(_suspect_kind(r) for r in rows):
        group = [r["metrics"] for r in rows if _suspect_kind(r) == name]
        p_values = [m["p_value"] for m in group if m["p_value"] is not None]
        aggregates = [m["paper_aggregate"] for m in group if m.get("paper_aggregate") is not None]
        lines.append(
            f"| {name} | {len(group)} | {_spread([m['score_difference'] for m in group], 3)} "
            f"| {_p(max(p_values) if p_values else None)} "
            f"| {_p(min(p_values) if p_values else None)} "
            f"| {_verified([m['decision'] == 'stolen' for m in group])} "
            f"| {_p(max(aggregates) if aggregates else None)} |"
        )
    note = (
        "Targets: the victim at p < 1e-30 with m <= 50; every surrogate of >= 5,000 queries at "
        "p < 1e-3; the false-positive rate on independent models reported."
    )
    return "\n".join([*lines, "", note, "", provenance(rows)])


def _radioactive_setting(row: dict) -> tuple[float, float, int]:
    """A radioactive row's (q, epsilon, epochs); rows from before epsilon was a setting were
    made with the paper's 10/255."""
    return (row["fraction"], round(row.get("epsilon", 10 / 255) * 255, 2), row["epochs"])


def _suspect_kind(row: dict) -> str:
    """A dataset-inference row's suspect; independent models are shown together."""
    return "independent models" if row["kind"] == "independent" else row["suspect"]


def dataset_inference_notebook(rows: list[dict]) -> str:
    """The authors' notebooks' number on the same suspects: the harmonic mean of 100 draws of
    m rows of 30 images, and the one test over every scored row."""
    rows = [r for r in rows if r.get("construction") == "reference-notebook"]
    if not rows:
        return "(no results yet)"
    lines = [
        "| suspect | runs | images per row | m (rows) | harmonic mean p (largest) "
        "| harmonic mean p (smallest) | below 1e-30 | all rows' p (largest) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(_suspect_kind(r) for r in rows):
        group = [r["metrics"] for r in rows if _suspect_kind(r) == name]
        means = [m["harmonic_mean_p"] for m in group]
        lines.append(
            f"| {name} | {len(group)} | {group[0]['images_per_row']} | {group[0]['m']} "
            f"| {_p(max(means))} | {_p(min(means))} "
            f"| {_verified([p < 1e-30 for p in means])} "
            f"| {_p(max(m['all_rows_p'] for m in group))} |"
        )
    return "\n".join([*lines, "", provenance(rows)])


def cae(rows: list[dict]) -> str:
    """Conferrable adversarial examples: per generation setting, the ROC AUC of retention
    between held-out surrogates and independent models over seeds, and their decisions against
    the judge."""
    lines = [
        "| epsilon | threshold | min size | candidates | seeds | fingerprints | ROC AUC "
        "| surrogates' retention | independent models' retention | judge's references' "
        "retention | surrogates verified at 0.01 | independent accused at 0.01 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def setting(row: dict) -> tuple[float, float, int, int]:  # earlier rows: 0.85, 2,000, 0
        return (
            row["epsilon"],
            row.get("threshold", 0.85),
            row.get("min_size", 0),
            row.get("candidates", 2000),
        )

    for epsilon, threshold, min_size, candidates in sorted({setting(r) for r in rows}):
        group = [r for r in rows if setting(r) == (epsilon, threshold, min_size, candidates)]
        models = [m for r in group for m in r["metrics"]["models"]]
        surrogates = [m for m in models if m["kind"] == "surrogate"]
        independent = [m for m in models if m["kind"] == "independent"]
        lines.append(
            f"| {epsilon:g} | {threshold:g} | {min_size} | {candidates:,} | {len(group)} "
            f"| {_spread([r['fingerprints'] for r in group], 0)} "
            f"| {_spread([r['metrics']['roc_auc'] for r in group], 3)} "
            f"| {_spread([m['retention'] for m in surrogates], 3)} "
            f"| {_spread([m['retention'] for m in independent], 3)} "
            f"| {_spread([v for r in group for v in r['metrics']['judge_retention']], 3)} "
            f"| {_verified([m['decision'] == 'stolen' for m in surrogates])} "
            f"| {_verified([m['decision'] == 'stolen' for m in independent])} |"
        )
    note = "Target: ROC AUC >= 0.99 (10 surrogates, 10 independent models, none in generation)."
    return "\n".join([*lines, "", note, "", provenance(rows)])


def translation(rows: list[dict]) -> str:
    """Image-translation extraction per task and budget over seeds: PSNR to the ground truth
    (the victim's and the surrogate's), its gap, and SSIM between surrogate and victim."""
    lines = [
        "| task | budget | seeds | queries counted | victim PSNR (dB) | surrogate PSNR (dB) "
        "| gap (dB) | surrogate SSIM to truth | SSIM to the victim | PSNR to the victim (dB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task, budget in sorted({(r["task"], r["budget"]) for r in rows}):
        group = [r for r in rows if (r["task"], r["budget"]) == (task, budget)]
        m = [r["metrics"] for r in group]
        lines.append(
            f"| {task} | {budget:,} | {len(group)} "
            f"| {', '.join(f'{q:,}' for q in sorted({r['queries_counted'] for r in group}))} "
            f"| {_spread([x['victim_psnr'] for x in m], 2)} "
            f"| {_spread([x['surrogate_psnr'] for x in m], 2)} "
            f"| {_spread([x['victim_psnr'] - x['surrogate_psnr'] for x in m], 2)} "
            f"| {_spread([x['surrogate_ssim'] for x in m], 4)} "
            f"| {_spread([x['ssim_to_victim'] for x in m], 4)} "
            f"| {_spread([x['psnr_to_victim'] for x in m], 2)} |"
        )
    note = (
        "Targets at 5,000 queries: super-resolution gap <= 0.5 dB and SSIM to the victim "
        ">= 0.95; style mapping SSIM to the victim >= 0.90. Evaluation split."
    )
    return "\n".join([*lines, "", note, "", provenance(rows)])


def translation_validation(rows: list[dict]) -> str:
    """The translation surrogate's recipe grid, on the validation split (seed 0)."""
    lines = [
        "| task | learning rate | epochs | seeds | SSIM to the victim | PSNR gap to the victim's (dB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for task, lr, epochs in sorted({(r["task"], r["lr"], r["epochs"]) for r in rows}):
        group = [r for r in rows if (r["task"], r["lr"], r["epochs"]) == (task, lr, epochs)]
        m = [r["metrics"] for r in group]
        lines.append(
            f"| {task} | {lr:g} | {epochs} | {len(group)} "
            f"| {_spread([x['ssim_to_victim_validation'] for x in m], 4)} "
            f"| {_spread([x['victim_psnr_validation'] - x['surrogate_psnr_validation'] for x in m], 2)} |"
        )
    return "\n".join([*lines, "", provenance(rows)])


def cae_validation(rows: list[dict]) -> str:
    """The CAE generation grid on validation models: per (epsilon, threshold), fingerprints,
    validation ROC AUC and the gap between surrogates' and independent models' retention."""
    lines = [
        "| epsilon | threshold | min size | seeds | fingerprints | validation ROC AUC "
        "| retention gap | surrogates' retention | independent models' retention |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def setting(row: dict) -> tuple[float, float, int]:  # rows before min_size: 0
        return row["epsilon"], row["threshold"], row.get("min_size", 0)

    for epsilon, threshold, min_size in sorted({setting(r) for r in rows}):
        group = [r["metrics"] for r in rows if setting(r) == (epsilon, threshold, min_size)]
        scored = [m for m in group if "roc_auc" in m]
        models = [x for m in scored for x in m["models"]]

        def shown(values: list[float]) -> str:
            return _spread(values, 3) if values else "-"

        lines.append(
            f"| {epsilon:g} | {threshold:g} | {min_size} | {len(group)} "
            f"| {_spread([m['fingerprints'] for m in group], 0)} "
            f"| {shown([m['roc_auc'] for m in scored])} | {shown([m['gap'] for m in scored])} "
            f"| {shown([x['retention'] for x in models if x['kind'] == 'surrogate'])} "
            f"| {shown([x['retention'] for x in models if x['kind'] == 'independent'])} |"
        )
    return "\n".join([*lines, "", provenance(rows)])


#: A watermark variant's metric prefix in the conflicts validation: passes, optional clip.
WATERMARK_VARIANT = re.compile(r"wm(\d+)(?:_clip([\d.]+))?")
#: The conflicts validation's rule: a watermark counts when it reaches this accuracy.
WATERMARK_EMBEDDED = 0.9
#: ... and, where the rows measure it, when its passes trained inside DP-SGD (counted by the
#: accountant) spend at most this share more epsilon than the DP-SGD model alone.
EPSILON_SLACK = 0.25


def _watermark_variants(rows: list[dict]) -> list[tuple[str, str]]:
    """(metric prefix, label) of every watermark variant in the rows: unclipped first, then
    by passes."""
    found = set()
    suffix = "_watermark_accuracy"
    for row in rows:
        for key in (k for k in row["metrics"] if k.endswith(suffix)):
            if match := WATERMARK_VARIANT.fullmatch(key.removesuffix(suffix)):
                found.add((match[2] is not None, float(match[2] or 0), int(match[1]), match[0]))
    return [
        (
            name,
            f"{rounds} pass{'es' if rounds > 1 else ''}" + (f", clip {clip:g}" if clipped else ""),
        )
        for clipped, clip, rounds, name in sorted(found)
    ]


def _with_supplements(rows: list[dict]) -> list[dict]:
    """The conflicts validation's full rows, each with the metrics of the rows marked
    ``supplement`` that follow it for the same seed and setting (models it lacked, trained
    later: benchmarks/conflicts_validation.py)."""
    full: list[dict] = []
    for row in rows:
        key = (row["dataset"], row["training"], row["optimizer"], row["lr"], row["weight_decay"])
        if not row.get("supplement"):
            full.append({**row, "key": key})
            continue
        bases = [r for r in full if r["key"] == key and r["seed"] == row["seed"]]
        if not bases:
            raise ValueError(
                f"a supplement row of {row['date']} ({row['dataset']}, lr {row['lr']:g}, seed "
                f"{row['seed']}) follows no full row of its seed and setting"
            )
        bases[-1]["metrics"] = {**bases[-1]["metrics"], **row["metrics"]}
    return full


def conflicts_validation(rows: list[dict]) -> str:
    """The conflicts table's optimiser grid: validation accuracy of the unprotected and the
    DP-SGD models per setting, and of each watermarked variant (trigger passes after each
    epoch, trigger steps unclipped or clipped) with its watermark accuracy, mean ± std over
    seeds; rows made with fewer variants form their own lines ("-" where they have none; a
    supplement's models join its seed's latest full row before it). Then the rule applied:
    per setting and variant, over each seed's latest row that measured it, the mean
    validation accuracy of the three models, among those whose mean watermark accuracy
    reaches 0.9 and, where the rows train the same passes inside DP-SGD, whose epsilon there
    is at most ``EPSILON_SLACK`` more than the DP-SGD model's (a candidate for each way of
    training them there: on top of DP-SGD's budget, the study's, and with its noise covering
    them; covered, the bound always holds, and neither way asks the watermark to embed inside
    DP-SGD: its fall there is the conflict the table measures); per dataset and training
    settings, the largest among the candidates with its most seeds is the choice (between
    equals, the study's way)."""
    provenance_rows, rows = rows, _with_supplements(rows)
    variants = _watermark_variants(rows)
    inside_epsilon = re.compile(r"dp_wm(\d+)(_cover)?_epsilon")
    found = {
        (match[2] is not None, int(match[1]), match[0].removesuffix("_epsilon"))
        for r in rows
        for k in r["metrics"]
        if (match := inside_epsilon.fullmatch(k))
    }
    inside_models = [  # (metric prefix, label): the study's (steps on top of the budget) first
        (name, f"{n} pass{'es' if n > 1 else ''}" + (", noise covering them" if covered else ""))
        for covered, n, name in sorted(found)
    ]
    lines = [
        "| dataset | epochs | training images (cap) | batch | optimiser | learning rate "
        "| weight decay | seeds | none: validation acc. | DP-SGD: validation acc. "
        "| mean of the two | "
        + " | ".join(
            f"watermark, {label}: validation acc. / watermark acc." for _, label in variants
        )
        + "".join(
            f" | inside DP-SGD, {label}: validation acc. / watermark acc. / epsilon"
            for _, label in inside_models
        )
        + " |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
        + "---:|" * (len(variants) + len(inside_models)),
    ]

    def setting_of(row: dict) -> tuple:
        training = row["training"]
        return (
            row["dataset"], training["epochs"], training["train_size"], training["batch_size"],
            row["optimizer"], row["lr"], row["weight_decay"],
        )  # fmt: skip

    def key(row: dict) -> tuple:
        present = tuple(f"{v}_validation_accuracy" in row["metrics"] for v, _ in variants)
        inside = tuple(f"{name}_epsilon" in row["metrics"] for name, _ in inside_models)
        return (*setting_of(row), present, inside)

    for setting in dict.fromkeys(map(key, rows)):
        dataset, epochs, size, batch, optimizer, lr, weight_decay, present, inside = setting
        group = [r["metrics"] for r in rows if key(r) == setting]
        cells = [
            f"{_spread([m[f'{v}_validation_accuracy'] for m in group], 4)} / "
            f"{_spread([m[f'{v}_watermark_accuracy'] for m in group], 2)}"
            if there
            else "-"
            for (v, _), there in zip(variants, present, strict=True)
        ] + [
            f"{_spread([m[f'{name}_validation_accuracy'] for m in group], 4)} / "
            f"{_spread([m[f'{name}_watermark_accuracy'] for m in group], 2)} / "
            f"{_spread([m[f'{name}_epsilon'] for m in group], 2)}"
            if there
            else "-"
            for (name, _), there in zip(inside_models, inside, strict=True)
        ]
        lines.append(
            f"| {dataset} | {epochs} | {size:,} | {batch} | {optimizer} | {lr:g} "
            f"| {weight_decay:g} | {len(group)} "
            f"| {_spread([m['none_validation_accuracy'] for m in group], 4)} "
            f"| {_spread([m['dp_validation_accuracy'] for m in group], 4)} "
            f"| {_spread([m['mean_validation_accuracy'] for m in group], 4)} | "
            + " | ".join(cells)
            + " |"
        )
    choice = [
        "| dataset | batch | optimiser | learning rate | watermark | seeds | watermark acc. "
        "| inside DP-SGD: watermark acc. / epsilon (alone) "
        "| mean validation acc. of none, DP-SGD and watermark | eligible |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|---|",
    ]
    candidates = []
    for setting in dict.fromkeys(map(setting_of, rows)):
        for variant, label in variants:
            latest: dict[int, dict] = {}  # each seed's latest row that measured the variant
            for row in rows:
                if (
                    setting_of(row) == setting
                    and f"{variant}_validation_accuracy" in row["metrics"]
                ):
                    latest[row["seed"]] = row["metrics"]
            if not latest:
                continue
            watermark = statistics.mean(m[f"{variant}_watermark_accuracy"] for m in latest.values())
            means = [
                (m["none_validation_accuracy"] + m["dp_validation_accuracy"]
                 + m[f"{variant}_validation_accuracy"]) / 3
                for m in latest.values()
            ]  # fmt: skip
            # the same passes inside DP-SGD, on top of its budget (the study's) or covered by it
            passes = WATERMARK_VARIANT.fullmatch(variant)[1]
            modes = [
                (f"dp_wm{passes}{suffix}", note)
                for suffix, note in (("", ""), ("_cover", ", DP-SGD's noise covering them"))
                if all(f"dp_wm{passes}{suffix}_epsilon" in m for m in latest.values())
            ]
            for private, note in modes or [(None, "")]:
                inside = None  # (watermark accuracy, epsilon, the DP-SGD model's epsilon)
                if private is not None:
                    inside = tuple(
                        statistics.mean(m[k] for m in latest.values())
                        for k in (f"{private}_watermark_accuracy", f"{private}_epsilon",
                                  "dp_epsilon")
                    )  # fmt: skip
                candidates.append((setting, label + note, len(latest), watermark, inside, means))

    def eligible(candidate: tuple) -> bool:
        watermark, inside = candidate[3], candidate[4]
        return watermark >= WATERMARK_EMBEDDED and (
            inside is None or inside[1] <= (1 + EPSILON_SLACK) * inside[2]
        )

    # per dataset and training settings, among the settings with its most seeds; between
    # equals (the same watermark, on top of DP-SGD's budget or covered), the first: the study's
    chosen = []
    for training in dict.fromkeys(c[0][:4] for c in candidates):
        mine = [c for c in candidates if c[0][:4] == training]
        most = max(c[2] for c in mine)
        if qualified := [c for c in mine if eligible(c) and c[2] == most]:
            chosen.append(max(qualified, key=lambda c: statistics.mean(c[5])))
    for candidate in candidates:
        setting, label, seeds, watermark, inside, means = candidate
        verdict = (
            "chosen"
            if any(candidate is c for c in chosen)
            else ("yes" if eligible(candidate) else "no")
        )
        private = "-" if inside is None else f"{inside[0]:.2f} / {inside[1]:.2f} ({inside[2]:.2f})"
        choice.append(
            f"| {setting[0]} | {setting[3]} | {setting[4]} | {setting[5]:g} | {label} | {seeds} "
            f"| {watermark:.2f} | {private} | {_spread(means, 4)} | {verdict} |"
        )
    return "\n".join([*lines, "", *choice, "", provenance(provenance_rows)])


def ownership_matrix(rows: list[dict]) -> str:
    """The ownership matrix, per scheme over seeds: ROC AUC between stolen and independent
    suspects, detections, false accusations, "cannot verify" cells, queries; the runs; and
    where each seed's time went (from its run folder's records; a resumed phase sums its
    sittings)."""
    schemes = [r for r in rows if r["measure"] == "scheme"]
    runs = [r for r in rows if r["measure"] == "run"]
    lines = [
        "| scheme | seeds | ROC AUC | stolen detected | independent accused | cannot verify "
        "| queries per suspect |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for scheme in dict.fromkeys(r["scheme"] for r in schemes):
        group = [r["metrics"] for r in schemes if r["scheme"] == scheme]
        aucs = [m["roc_auc"] for m in group if m["roc_auc"] is not None]
        lines.append(
            f"| {scheme} | {len(group)} | {_spread(aucs, 3) if aucs else '-'} "
            f"| {sum(m['detected'] for m in group)} of {sum(m['stolen'] for m in group)} "
            f"| {sum(m['false_accusations'] for m in group)} of "
            f"{sum(m['independent'] for m in group)} "
            f"| {sum(m['cannot_verify'] for m in group)} "
            f"| {_spread([m['mean_queries'] for m in group], 0)} |"
        )
    lines += [
        "",
        "| dataset | seed | suspects | independent | owner's test accuracy | minutes "
        "| uninterrupted |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        m = run["metrics"]
        lines.append(
            f"| {run['dataset']} | {run['seed']} | {m['suspects']} | {m['independents']} "
            f"| {m['owner'].get('test_accuracy', float('nan')):.4f} | {m['minutes']:.1f} "
            f"| {'yes' if m['uninterrupted'] else 'no (resumed)'} |"
        )
    phases = [r for r in rows if r["measure"] == "phases"]
    if phases:
        lines += [
            "",
            "| dataset | seed | owner s | models made apart s | secrets s | extractions s "
            "| removal attacks s | independents s | cells s | of which dataset inference s "
            "| sittings |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
    for row in phases:
        m = row["metrics"]
        made = m["suspect_families"]
        independents = sum(
            v for k, v in made.items() if k not in ("the marked model", "extraction", "removal")
        )
        sittings = ", ".join(f"{k} {v}" for k, v in m["sittings"].items())
        lines.append(
            f"| {row['dataset']} | {row['seed']} | {m['phases'].get('owner', 0):,.0f} "
            f"| {_seconds(m['phases'].get('models apart'))} "
            f"| {m['phases'].get('secrets', 0):,.0f} | {made.get('extraction', 0):,.0f} "
            f"| {made.get('removal', 0):,.0f} | {independents:,.0f} "
            f"| {sum(m['cell_schemes'].values()):,.0f} "
            f"| {m['cell_schemes'].get('dataset-inference', 0):,.0f} | {sittings} |"
        )
    significance = {r["metrics"]["significance"] for r in schemes}
    note = (
        f"Decisions at significance {', '.join(f'{s:g}' for s in sorted(significance))}. "
        "Target: the matrix with 20 independent models in <= 60 minutes on 2 CPU cores."
    )
    if phases:
        note += (
            " Models made apart: the independent and removal-attacked suspects, the "
            "fingerprint's ensemble and the judge's references, made before the secrets ('-': "
            "a run made them within the secrets and suspects phases)."
        )
    return "\n".join([*lines, "", note, "", provenance(rows)])


def _seconds(value: float | None) -> str:
    """Whole seconds with thousands separators; "-" where a run has no such phase."""
    return "-" if value is None else f"{value:,.0f}"


def ownership_cells(rows: list[dict]) -> str:
    """Every cell of the ownership matrix: per suspect and scheme, the p-value (the largest
    over seeds) and how many seeds decided "stolen"."""
    cells = [r for r in rows if r["measure"] == "cell"]
    schemes = list(dict.fromkeys(r["scheme"] for r in cells))
    lines = [
        "| suspect | kind | " + " | ".join(schemes) + " |",
        "|---|---|" + "---:|" * len(schemes),
    ]
    for suspect in dict.fromkeys(r["suspect"] for r in cells):
        mine = [r for r in cells if r["suspect"] == suspect]
        entries = []
        for scheme in schemes:
            group = [r["metrics"] for r in mine if r["scheme"] == scheme]
            p_values = [m["p_value"] for m in group if m["p_value"] is not None]
            stolen = sum(m["decision"] == "stolen" for m in group)
            unknown = sum(m["decision"] == "cannot verify" for m in group)
            entries.append(
                (
                    "cannot verify"
                    if unknown == len(group)
                    else _p(max(p_values) if p_values else None)
                )
                + (f" ({stolen}/{len(group)} stolen)" if stolen else "")
            )
        lines.append(f"| {suspect} | {mine[0]['kind']} | " + " | ".join(entries) + " |")
    return "\n".join(
        [
            *lines,
            "",
            "Each cell: the largest p-value over seeds; in brackets, the seeds that decided stolen.",
            "",
            provenance(cells),
        ]
    )


#: The talk's conflict table (Szyller & Asokan): per dataset and cell, (accuracy, watermark
#: accuracy, radioactive loss difference, adversarial accuracy); None where it prints none.
TALK_CONFLICTS = {
    "fashion-mnist": {
        "none": (0.91, None, None, None),
        "wm": (0.87, 0.99, None, None),
        "rad": (0.88, None, 0.19, None),
        "dp": (0.86, None, None, None),
        "adv": (0.87, None, None, 0.69),
        "dp+wm": (0.86, 0.30, None, None),
        "dp+rad": (0.84, None, 0.11, None),
        "adv+wm": (0.86, 0.99, None, 0.51),
        "adv+rad": (0.84, None, 0.0007, 0.69),
    },
    "mnist5k": {
        "none": (0.99, None, None, None),
        "wm": (0.99, 0.97, None, None),
        "rad": (0.98, None, 0.284, None),
        "dp": (0.98, None, None, None),
        "adv": (0.99, None, None, 0.95),
        "dp+wm": (0.97, 0.36, None, None),
        "dp+rad": (0.97, None, 0.091, None),
        "adv+wm": (0.97, 0.99, None, 0.88),
        "adv+rad": (0.97, None, 0.001, 0.95),
    },
}


def _cell_value(group: list[dict], name: str, digits: int, published: float | None = None) -> str:
    values = [m[name] for m in group if m.get(name) is not None]
    if not values:
        return "-"
    return _spread(values, digits) + (f" ({published:g})" if published is not None else "")


def _largest(group: list[dict], name: str) -> str:
    values = [m[name] for m in group if m.get(name) is not None]
    return _p(max(values)) if values else "-"


def conflicts(rows: list[dict]) -> str:
    """The conflict table per dataset over seeds (ours, and the talk's value in brackets),
    and each run's wall time."""
    cells = [r for r in rows if r["measure"] == "cell"]
    runs = [r for r in rows if r["measure"] == "run"]
    if not cells:
        return "(no results yet)"
    lines = []
    for dataset in sorted({r["dataset"] for r in cells}):
        talk = TALK_CONFLICTS.get(dataset, {})
        lines += [
            f"**{dataset}** (ours, mean ± std over seeds; the talk's value in brackets; "
            "p-values: the largest over seeds)",
            "",
            "| cell | seeds | accuracy | watermark accuracy | radioactive loss difference "
            "| radioactive p | dataset inference p (calibrated) | dataset inference p "
            "(notebooks') | adversarial accuracy | epsilon spent |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        planned = [r["cells"] for r in runs if r["dataset"] == dataset]  # the run's table order
        order = (
            planned[-1]
            if planned
            else sorted({r["cell"] for r in cells if r["dataset"] == dataset})
        )
        for cell in order:
            group = [r["metrics"] for r in cells if r["dataset"] == dataset and r["cell"] == cell]
            if not group:
                continue
            reference = talk.get(cell, (None, None, None, None))

            lines.append(
                f"| {cell} | {len(group)} | {_cell_value(group, 'accuracy', 3, reference[0])} "
                f"| {_cell_value(group, 'watermark_accuracy', 3, reference[1])} "
                f"| {_cell_value(group, 'loss_difference', 4, reference[2])} "
                f"| {_largest(group, 'radioactive_p')} | {_largest(group, 'di_p')} "
                f"| {_largest(group, 'di_notebook_p')} "
                f"| {_cell_value(group, 'adversarial_accuracy', 3, reference[3])} "
                f"| {_cell_value(group, 'epsilon_spent', 2)} |"
            )
        lines.append("")
    lines += [
        "| dataset | seed | cells | epochs | training images (cap) | minutes | uninterrupted |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        config = r["config"]
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {len(r['cells'])} | {config['epochs']} "
            f"| {config['train_size'] or 'all'} | {r['metrics']['minutes']:.1f} "
            f"| {'yes' if r['metrics']['uninterrupted'] else 'no'} |"
        )
    if any(r["dataset"] == "fashion-mnist" for r in runs):
        lines += [
            "",
            "Target: the full Fashion-MNIST pair table, one seed, in <= 60 minutes on 2 CPU cores.",
        ]
    return "\n".join([*lines, "", provenance(rows)])


def choose_rate(latest: dict[float, dict[int, float]], grid: Iterable[float]) -> float | None:
    """A cell study's choice of learning rate (benchmarks/conflicts_larger_clip.py and
    conflicts_adversarial.py apply it too): the largest mean score over seeds, ``latest``
    holding each rate's latest score per seed; a tie goes to the larger rate (the nearer the
    table's). None until every rate of ``grid`` has a score for the same seeds."""
    grid = sorted(grid)
    seeds = {frozenset(latest.get(rate, {})) for rate in grid}
    if not grid or len(seeds) != 1 or not next(iter(seeds)):
        return None
    means = {rate: statistics.fmean(latest[rate].values()) for rate in grid}
    return max(reversed(grid), key=means.__getitem__)  # max keeps the first of a tie


def conflicts_larger_clip(rows: list[dict]) -> str:
    """The larger-clip relaxation per settings and learning rate: validation accuracy,
    watermark accuracy and epsilon over seeds, then the chosen rate's cell on the test split.
    The rule, as benchmarks/conflicts_larger_clip.py applies it: the largest mean validation
    accuracy (each seed's latest row), once every rate has the same number of seeds."""
    lines = []

    def settings_of(row: dict) -> str:
        keys = ("dataset", "relaxed_clip", "optimiser", "training")
        return json.dumps({k: row[k] for k in keys}, sort_keys=True)

    for settings in dict.fromkeys(map(settings_of, rows)):
        mine = [r for r in rows if settings_of(r) == settings]
        first = mine[0]
        latest: dict[float, dict[int, float]] = {}
        for r in mine:
            if r["split"] == "validation":
                by_seed = latest.setdefault(r["relaxed_lr"], {})
                by_seed[r["seed"]] = r["metrics"]["validation_accuracy"]
        chosen = choose_rate(latest, latest)  # the grid: the rates tried so far
        optimiser = first["optimiser"]
        lines += [
            f"**{first['dataset']}**, clipping norm {first['relaxed_clip']:g} (the table's "
            f"{optimiser['optimizer']} at {optimiser['lr']:g} for the other cells)",
            "",
            "| split | learning rate | seeds | accuracy | watermark accuracy | epsilon spent "
            "| chosen |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for split, key in (("validation", "validation_accuracy"), ("test", "accuracy")):
            for rate in sorted({r["relaxed_lr"] for r in mine if r["split"] == split}):
                group = [
                    r["metrics"] for r in mine if r["split"] == split and r["relaxed_lr"] == rate
                ]
                mark = "chosen" if split == "validation" and rate == chosen else ""
                lines.append(
                    f"| {split} | {rate:g} | {len(group)} | {_cell_value(group, key, 4)} "
                    f"| {_cell_value(group, 'watermark_accuracy', 3)} "
                    f"| {_cell_value(group, 'epsilon_spent', 2)} | {mark} |"
                )
        lines.append("")
    return "\n".join([*lines, provenance(rows)])


def conflicts_adversarial(rows: list[dict]) -> str:
    """The adversarially trained cells' own learning rate: per rate of the study's grid, clean
    and adversarial validation accuracy over seeds (each seed's latest row), then the chosen
    rate's cells on the test split. The rule, as benchmarks/conflicts_adversarial.py applies
    it (:func:`choose_rate`): the largest mean validation adversarial accuracy, once every rate
    of the grid has rows for the same seeds."""
    lines = []

    def settings_of(row: dict) -> str:
        keys = ("dataset", "optimiser", "training", "pgd", "architecture", "adversarial_test")
        return json.dumps({k: row.get(k) for k in keys}, sort_keys=True)

    for settings in dict.fromkeys(map(settings_of, rows)):
        mine = [r for r in rows if settings_of(r) == settings]
        latest: dict[float, dict[int, dict]] = {}
        grid: set[float] = set()
        for r in mine:
            if r["split"] == "validation":
                latest.setdefault(r["adv_lr"], {})[r["seed"]] = r["metrics"]
                grid.update(r["rates"])
        scores = {
            rate: {seed: m["validation_adversarial_accuracy"] for seed, m in by_seed.items()}
            for rate, by_seed in latest.items()
        }
        chosen = choose_rate(scores, grid)
        first, pgd = mine[0], mine[0]["pgd"]
        optimiser = first["optimiser"]
        lines += [
            f"**{first['dataset']}**, PGD {pgd['epsilon']:g} / {pgd['step']:g} / "
            f"{pgd['steps']} steps (the table's {optimiser['optimizer']} at "
            f"{optimiser['lr']:g} for the other cells)",
            "",
            "| learning rate | seeds | validation accuracy | validation adversarial accuracy "
            "| models read from the table's run | chosen |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for rate in sorted(grid):
            group = list(latest.get(rate, {}).values())
            read = sum(
                r["model"] == "table"
                for r in mine
                if r["split"] == "validation" and r["adv_lr"] == rate
            )
            lines.append(
                f"| {rate:g} | {len(group)} | {_cell_value(group, 'validation_accuracy', 4)} "
                f"| {_cell_value(group, 'validation_adversarial_accuracy', 4)} | {read} "
                f"| {'chosen' if rate == chosen else ''} |"
            )
        if chosen is None:
            lines += ["", "No rate chosen yet: not every rate has rows for the same seeds."]
        elif chosen == optimiser["lr"]:
            lines += ["", "The table's own rate: its adversarial cells (the table above) stand."]
        tests = [r for r in mine if r["split"] == "test" and r["adv_lr"] == chosen]
        if tests:
            lines += [
                "",
                "| cell (test split) | learning rate | seeds | accuracy | adversarial accuracy "
                "| watermark accuracy | radioactive loss difference | radioactive p "
                "| dataset inference p (calibrated) | dataset inference p (notebooks') |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for cell in dict.fromkeys(r["cell"] for r in tests):
                by_seed = {r["seed"]: r["metrics"] for r in tests if r["cell"] == cell}
                group = list(by_seed.values())
                lines.append(
                    f"| {cell} | {chosen:g} | {len(group)} "
                    f"| {_cell_value(group, 'accuracy', 3)} "
                    f"| {_cell_value(group, 'adversarial_accuracy', 3)} "
                    f"| {_cell_value(group, 'watermark_accuracy', 3)} "
                    f"| {_cell_value(group, 'loss_difference', 4)} "
                    f"| {_largest(group, 'radioactive_p')} | {_largest(group, 'di_p')} "
                    f"| {_largest(group, 'di_notebook_p')} |"
                )
        lines.append("")
    return "\n".join([*lines, provenance(rows)])


def text_quantization(rows: list[dict]) -> str:
    """The int8 copy of a served text model against the float one, one line per victim and
    result (runs of the same victim that gave the same figures share a line, with their
    count): each one's evaluation accuracy, their agreement and largest probability gap."""
    lines = [
        "| dates | runs | victim (dataset, epochs, tuned layers, seed) | weights | sentences "
        "| float accuracy | int8 accuracy | agreement | largest probability gap |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    figures = ("evaluation_sentences", "float_accuracy", "int8_accuracy", "agreement")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["date"]):
        key = (row["victim"]["weights_sha256"], *(row["metrics"][f] for f in figures))
        groups[key + (row["metrics"]["max_probability_gap"],)].append(row)
    for same in groups.values():
        row, dates = same[0], sorted({r["date"][:10] for r in same})
        v, m = row["victim"], row["metrics"]
        when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        lines.append(
            f"| {when} | {len(same)} | {row['dataset']}, {v['epochs']}, {v['tuned_layers']}, "
            f"{v['seed']} | {v['weights_sha256'][:12]} | {m['evaluation_sentences']:,} "
            f"| {m['float_accuracy']:.4f} | {m['int8_accuracy']:.4f} | {m['agreement']:.4f} "
            f"| {m['max_probability_gap']:.3f} |"
        )
    return "\n".join([*lines, "", provenance(rows)])


def thieves_tuning(rows: list[dict]) -> str:
    """The Thieves surrogate's recipe grid: agreement on the validation split, one row per
    query kind (RANDOM's with its vocabulary), learning rate and epochs."""
    lines = [
        "| queries | learning rate | epochs | seeds | budget | agreement (validation) |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def setting(row: dict) -> tuple[str, float, int, int]:
        p = row["attack_params"]
        kind = p["queries"].upper()
        if kind == "RANDOM":
            kind += f" ({p['vocabulary']})"
        return kind, p["lr"], p["epochs"], row["budget"]

    for kind, lr, epochs, budget in sorted({setting(r) for r in rows}):
        group = [r["metrics"] for r in rows if setting(r) == (kind, lr, epochs, budget)]
        lines.append(
            f"| {kind} | {lr:g} | {epochs} | {len(group)} | {budget:,} "
            f"| {_spread([m['fidelity_validation'] for m in group], 4)} |"
        )
    return "\n".join([*lines, "", provenance(rows)])


THIEVES_SERIES = [("thieves-fortunes", v, v.upper()) for v in ("random", "natural")]

TABLES: dict[str, tuple[tuple[str, ...], Callable[[list[dict]], str]]] = {
    "splits": (("splits.jsonl",), splits),
    "state_scaling": (("state_scaling.jsonl",), state_scaling),
    "tramer": (("tramer.jsonl",), tramer),
    "serve_load": (("serve_load.jsonl",), serve_load),
    "text_quantization": (("text_quantization.jsonl",), text_quantization),
    "prada": (("prada.jsonl",), prada),
    "prada_tradeoff": (("prada.jsonl",), prada_tradeoff),
    "quickstart": (("quickstart.jsonl", "knockoff-fmnist.jsonl"), quickstart),
    "ood": (("ood.jsonl",), ood),
    "prada_latency": (("prada_latency.jsonl",), prada_latency),
    "deterrence": (("deterrence.jsonl",), deterrence),
    "watermark": (("watermark.jsonl",), watermark),
    "removal": (("watermark.jsonl",), removal),
    "false_accusations": (("false_claims.jsonl",), false_accusations),
    "false_claims": (("false_claims.jsonl",), false_claims),
    "dawn": (("dawn.jsonl",), dawn),
    "radioactive": (("radioactive.jsonl",), radioactive),
    "dataset_inference": (("dataset_inference.jsonl",), dataset_inference),
    "dataset_inference_notebook": (("dataset_inference.jsonl",), dataset_inference_notebook),
    "cae": (("cae.jsonl",), cae),
    "cae_validation": (("cae-validation.jsonl",), cae_validation),
    "ownership_matrix": (("ownership_matrix.jsonl",), ownership_matrix),
    "ownership_cells": (("ownership_matrix.jsonl",), ownership_cells),
    "ownership_matrix_jobs2": (("ownership_matrix-jobs2.jsonl",), ownership_matrix),
    "ownership_matrix_cae01": (("ownership_matrix-cae0.1.jsonl",), ownership_matrix),
    "ownership_cells_cae01": (("ownership_matrix-cae0.1.jsonl",), ownership_cells),
    "conflicts": (("conflicts.jsonl",), conflicts),
    "translation": (("translation.jsonl",), translation),
    "translation_validation": (("translation-validation.jsonl",), translation_validation),
    "conflicts_validation": (("conflicts-validation.jsonl",), conflicts_validation),
    "conflicts_larger_clip": (("conflicts-larger-clip.jsonl",), conflicts_larger_clip),
    "conflicts_adversarial": (("conflicts-adversarial.jsonl",), conflicts_adversarial),
    # mnist5k's first run, at batch 256: another configuration than its table's
    "conflicts_mnist5k_batch256": (("conflicts-mnist5k-batch256.jsonl",), conflicts),
    "knockoff_vs_art": (
        ("knockoff-fmnist.jsonl", "knockoff-fmnist-art.jsonl"),
        comparison(
            [
                ("knockoff-fmnist", "default", "modelheist"),
                ("knockoff-fmnist-art", "art-same-budget", "ART, same budget"),
                ("knockoff-fmnist-art", "art-defaults", "ART, its defaults"),
            ]
        ),
    ),
    # the scenario's budget; an early one-seed run at 1,000 queries stays in the store, its
    # question answered over three seeds by knockoff_augmentation
    "knockoff_tuning": (
        ("knockoff-tuning.jsonl",),
        where(
            {"budget": 5000},
            validation_choice(
                "knockoff-tuning",
                ("augment", "t1-augment", "no-augment", "t1-no-augment"),
                keys=("transfer_set", "budget"),
            ),
        ),
    ),
    "knockoff_self_training": (
        ("knockoff-self-training.jsonl",),
        validation_choice(
            "knockoff-self-training",
            ("no-self-training", "self-training"),
            keys=("transfer_set", "budget"),
        ),
    ),
    "knockoff_augmentation": (
        ("knockoff-augmentation.jsonl",),
        validation_choice(
            "knockoff-augmentation", ("augment", "no-augment"), keys=("transfer_set", "budget")
        ),
    ),
    "adaptive": (
        ("adaptive-knockoff.jsonl", "adaptive-knockoff-art.jsonl"),
        comparison(
            [
                ("adaptive-knockoff", "random", "modelheist random"),
                ("adaptive-knockoff", "adaptive", "modelheist adaptive"),
                ("adaptive-knockoff-art", "art-random", "ART random"),
                ("adaptive-knockoff-art", "art-adaptive", "ART adaptive"),
            ],
            keys=("budget",),
        ),
    ),
    "thieves_fortunes": (
        ("thieves-fortunes.jsonl",),
        comparison(THIEVES_SERIES, keys=("budget",)),
    ),
    "thieves_fortunes_share": (
        ("thieves-fortunes.jsonl",),
        comparison(THIEVES_SERIES, keys=("budget",), metric="accuracy_share"),
    ),
    "thieves_vader": (
        ("thieves-vader.jsonl",),
        comparison(
            [("thieves-vader", v, v.upper()) for v in ("random", "natural")], keys=("budget",)
        ),
    ),
    "thieves_tuning": (("thieves-tuning.jsonl",), thieves_tuning),
    "synthetic_tuning": (
        ("synthetic-tuning.jsonl",),
        validation_choice("synthetic-tuning", ("augment", "no-augment"), keys=("output", "budget")),
    ),
    "synthetic": (
        SYNTHETIC_STORES,
        comparison(SYNTHETIC_SERIES, keys=("output", "budget")),
    ),
    "synthetic_validation": (
        SYNTHETIC_STORES,
        comparison(SYNTHETIC_SERIES, keys=("output", "budget"), metric="fidelity_validation"),
    ),
    # lambda = 0.1 is the grid's one-network JBDA before the per-output step (the same recipe,
    # victims and seeds; its rows were moved to their own store when label_step was added)
    **on_both_splits(
        "jbda_step",
        ("synthetic-jbda-step-0.1.jsonl", "synthetic-jbda-step.jsonl"),
        lambda metric: comparison(
            [
                ("synthetic-jbda", "one-network", "step 0.1"),
                ("synthetic-jbda-step", "step-025", "step 0.25"),
            ],
            keys=("output", "budget"),
            metric=metric,
        ),
    ),
    # JBDA from labels: one lever a variant against the grid's one network (the same recipe,
    # victims and seeds, tau 3 and 30 final epochs)
    **on_both_splits(
        "jbda_labels",
        ("synthetic-jbda.jsonl", "synthetic-jbda-labels.jsonl"),
        lambda metric: where(
            {"output": "labels"},
            comparison(
                [
                    ("synthetic-jbda", "one-network", "tau 3, 30 final epochs"),
                    ("synthetic-jbda-labels", "tau-2", "tau 2"),
                    ("synthetic-jbda-labels", "tau-1", "tau 1"),
                    ("synthetic-jbda-labels", "final-epochs-60", "60 final epochs"),
                ],
                keys=("output", "budget"),
                metric=metric,
            ),
        ),
    ),
}


def render(document: str) -> str:
    """``document`` with every generated table rewritten from its store. A block emptied by
    hand is filled again; a marker without its pair, or naming no table, is an error."""
    starts = re.findall(r"<!-- generated: (\S+) -->", document)
    ends = re.findall(r"<!-- end: (\S+) -->", document)
    unknown = sorted(set(starts) - set(TABLES))
    if unknown:
        raise ValueError(f"no generator for the table(s) {', '.join(unknown)}")
    if sorted(starts) != sorted(ends):
        raise ValueError(f"unpaired table markers: {sorted(set(starts) ^ set(ends))}")
    for name, (stores, build) in TABLES.items():
        pattern = re.compile(
            rf"(<!-- generated: {name} -->\n)(?:.*?\n)?(<!-- end: {name} -->)", re.DOTALL
        )
        if not pattern.search(document):
            continue  # a table not (yet) in the document
        rows = [row for store in stores for row in ResultsStore(RESULTS / store).rows()]
        table = build(rows) if rows else "(no results yet)"
        document = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), document)
    return document


def plot(
    path: Path,
    rows: list[dict],
    series: list[tuple[str, str, str]],
    where: dict[str, object],
    title: str,
) -> None:
    """Fidelity (test) against queries, mean ± standard deviation over seeds, one line per
    series (scenario, variant, label), over the rows matching ``where``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for scenario, variant, label in series:
        points: dict[int, list[float]] = defaultdict(list)
        for row in rows:
            if (
                row.get("scenario") == scenario
                and row.get("variant") == variant
                and all(row.get(k) == v for k, v in where.items())
            ):
                points[row["budget"]].append(row["metrics"]["fidelity_test"])
        if not points:
            continue
        budgets = sorted(points)
        means = [statistics.fmean(points[b]) for b in budgets]
        spreads = [statistics.stdev(points[b]) if len(points[b]) > 1 else 0 for b in budgets]
        ax.errorbar(budgets, means, yerr=spreads, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("queries to the victim")
    ax.set_ylabel("fidelity (agreement on the test split)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


#: Plots written beside the document (not checked: a plot's bytes vary with matplotlib).
PLOTS = {
    "knockoff_vs_art.png": (
        ("knockoff-fmnist.jsonl", "knockoff-fmnist-art.jsonl"),
        [
            ("knockoff-fmnist", "default", "modelheist"),
            ("knockoff-fmnist-art", "art-same-budget", "ART, same budget"),
            ("knockoff-fmnist-art", "art-defaults", "ART, its defaults"),
        ],
        {"transfer_set": "fashion-mnist", "output": "probs"},
        "Knockoff Nets, Fashion-MNIST CNN, in-distribution, probabilities",
    ),
    "adaptive_knockoff.png": (
        ("adaptive-knockoff.jsonl", "adaptive-knockoff-art.jsonl"),
        [
            ("adaptive-knockoff", "random", "modelheist random"),
            ("adaptive-knockoff", "adaptive", "modelheist adaptive"),
            ("adaptive-knockoff-art", "art-random", "ART random"),
            ("adaptive-knockoff-art", "art-adaptive", "ART adaptive"),
        ],
        {},
        "Knockoff Nets on a 25% in-distribution transfer set",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Fail if the document is stale.")
    args = parser.parse_args()
    current = DOC.read_text()
    try:
        wanted = render(current)
    except ValueError as exc:
        sys.exit(f"{DOC}: {exc}")
    if args.check:
        if wanted != current:
            print(f"{DOC} differs from its results stores; run benchmarks/docs_tables.py")
            sys.exit(1)
        return
    DOC.write_text(wanted)
    for name, (stores, series, where, title) in PLOTS.items():
        rows = [row for store in stores for row in ResultsStore(RESULTS / store).rows()]
        if rows:
            plot(DOC.parent / name, rows, series, where, title)


if __name__ == "__main__":
    main()
