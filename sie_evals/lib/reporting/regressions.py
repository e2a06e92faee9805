"""Which queries explain a result, as markdown for the Dagster UI: the most regressed queries of a
failed drift check (lib/gates/drift.py computes them with lib/gates/diff.py) and the lowest-scoring
queries of each eval report cell. Pure: callers load the tables and the query texts."""

import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

from sie_evals.lib.gates.conditions import Change
from sie_evals.lib.gates.diff import md_cell as cell

SNIPPET_CHARS = 80
_MARKDOWN = re.compile(r"([`*_\[\]<>#!~])")  # shown literally, not as emphasis, links or HTML
WORST_QUERIES = 5  # per eval report cell


def snippet(text: str | None, chars: int = SNIPPET_CHARS) -> str:
    """One table cell of user text, cut to `chars` characters (pipes and line breaks neutralised)."""
    if not text:
        return "-"
    flat = " ".join(text.split())
    return _MARKDOWN.sub(r"\\\1", cell(flat if len(flat) <= chars else flat[: chars - 1] + "…"))


def regressed_markdown(
    metric: str, rows: list[dict[str, Any]], texts: Mapping[str, str] | None, reference_label: str = "target"
) -> str:
    """The regressed-queries table of a failed check: query id, text snippet, value in the reference and
    now, delta (rows as lib/gates/drift.regressed_queries gives them, most negative first)."""
    texts = texts or {}
    lines = [
        f"| # | query id | query | {cell(metric)} {cell(reference_label)} | {cell(metric)} now | delta |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(
            f"| {i} | {cell(r['query_id'])} | {snippet(texts.get(r['query_id']))} "
            f"| {r['reference']:.4f} | {r['value']:.4f} | {r['delta']:+.4f} |"
        )
    return "\n".join(lines)


def changes_markdown(changes: list[Change], reference_label: str = "target") -> str:
    """Run conditions that differ between the reference and this run, one table row each."""
    if not changes:
        return f"No recorded run condition differs between the {reference_label} and this run."
    lines = [f"| condition | {cell(reference_label)} | now |", "|---|---|---|"]
    lines += [f"| {cell(c.field)} | {cell(c.before)} | {cell(c.after)} |" for c in changes]
    return "\n".join(lines)


def worst_queries(per_query: pd.DataFrame, metric: str, n: int = WORST_QUERIES) -> list[dict[str, Any]]:
    """The `n` queries with the lowest value of `metric` (ties by query id); [] when the table has no
    such column."""
    if metric not in per_query.columns or "query_id" not in per_query.columns:
        return []
    frame = per_query[["query_id", metric]].astype({"query_id": str}).dropna()
    frame = frame.sort_values([metric, "query_id"], kind="stable").head(n)
    return [{"query_id": q, "value": float(v)} for q, v in frame.itertuples(index=False)]


def worst_queries_markdown(cells: Mapping[str, tuple[str, list[dict[str, Any]]]], n: int = WORST_QUERIES) -> str:
    """A section of the eval report: per cell (model:task:source), its metric and lowest queries."""
    lines = [f"## Worst queries per cell (the {n} lowest per-query main scores)", ""]
    if not cells:
        return "\n".join([*lines, "No cell has per-query scores yet."])
    lines += ["| cell | metric | worst queries (id: value) |", "|---|---|---|"]
    for key in sorted(cells):
        metric, rows = cells[key]
        shown = ", ".join(f"{cell(r['query_id'])}: {r['value']:.4f}" for r in rows) or "-"
        lines.append(f"| {cell(key)} | {cell(metric)} | {shown} |")
    return "\n".join(lines)
