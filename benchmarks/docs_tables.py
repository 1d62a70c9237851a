"""Generate the tables of docs/benchmarks.md from the results stores (benchmarks/results/*.jsonl).

A generated table sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` in the
document; this script rewrites what lies between, so that every number in a generated table has
a row behind it. ``--check`` changes nothing and fails if the document differs from what it
would write (the test suite runs it).

    python benchmarks/docs_tables.py [--check]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
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
    machines = "; ".join(sorted({r["machine"] for r in rows}))
    commands = ", ".join(f"`{c}`" for c in sorted({r["command"] for r in rows}))
    return f"Machine: {machines}. Commands: {commands}."


#: Each generated table: its results store and the function that renders it.
TABLES: dict[str, tuple[str, Callable[[list[dict]], str]]] = {
    "state_scaling": ("state_scaling.jsonl", state_scaling),
}


def render(document: str) -> str:
    """``document`` with every generated table rewritten from its store."""
    for name, (store, build) in TABLES.items():
        pattern = re.compile(
            rf"(<!-- generated: {name} -->\n).*?(\n<!-- end: {name} -->)", re.DOTALL
        )
        if not pattern.search(document):
            raise SystemExit(f"{DOC} has no generated block for {name}")
        rows = ResultsStore(RESULTS / store).rows()
        table = build(rows) if rows else "(no results yet)"
        document = pattern.sub(lambda m, t=table: m.group(1) + t + m.group(2), document)
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Fail if the document is stale.")
    args = parser.parse_args()
    current = DOC.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{DOC} differs from its results stores; run benchmarks/docs_tables.py")
            sys.exit(1)
        return
    DOC.write_text(wanted)


if __name__ == "__main__":
    main()
