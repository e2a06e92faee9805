"""What changed between two runs of the same task: metric deltas (paired bootstrap), the queries that
moved most both ways, and the run conditions that differ. Pure: `sie-bench diff`, the Dagster drift
checks and the alerts all call it; loading files is the caller's job.

A query's delta is B - A of one per-query metric over the queries both runs scored; "regressed" are
the most negative deltas, "improved" the most positive. Ties are broken by query id (ascending), so
the same inputs always give the same rows."""

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sie_evals.lib.core.errors import InputError
from sie_evals.lib.gates.bootstrap import DeltaInterval, paired_bootstrap
from sie_evals.lib.gates.conditions import Change, diff_conditions


@dataclass(frozen=True)
class QueryChange:
    query_id: str
    value_a: float
    value_b: float
    delta: float  # value_b - value_a


def _paired(per_query_a: pd.DataFrame, per_query_b: pd.DataFrame, metric: str) -> pd.DataFrame:
    for name, frame in (("A", per_query_a), ("B", per_query_b)):
        missing = [c for c in ("query_id", metric) if c not in frame.columns]
        if missing:
            raise ValueError(f"per-query scores of {name} have no column {missing[0]!r}")
    a = per_query_a[["query_id", metric]].astype({"query_id": str})
    b = per_query_b[["query_id", metric]].astype({"query_id": str})
    joined = a.merge(b, on="query_id", suffixes=("_a", "_b"))
    joined = joined.rename(columns={f"{metric}_a": "value_a", f"{metric}_b": "value_b"})
    joined["delta"] = joined["value_b"] - joined["value_a"]
    return joined


def changed_queries(per_query_a: pd.DataFrame, per_query_b: pd.DataFrame, metric: str, n: int) -> pd.DataFrame:
    """The `n` queries that regressed most (delta < 0, most negative first) and the `n` that improved
    most (delta > 0, largest first), with columns query_id, direction ("regressed"/"improved"),
    value_a, value_b, delta. Queries whose value did not move are never listed."""
    joined = _paired(per_query_a, per_query_b, metric)
    down = joined[joined["delta"] < 0].sort_values(["delta", "query_id"], ascending=[True, True], kind="stable")
    up = joined[joined["delta"] > 0].sort_values(["delta", "query_id"], ascending=[False, True], kind="stable")
    out = pd.concat([down.head(n).assign(direction="regressed"), up.head(n).assign(direction="improved")])
    return out[["query_id", "direction", "value_a", "value_b", "delta"]].reset_index(drop=True)


def condition_diff(conditions_a: dict[str, Any] | None, conditions_b: dict[str, Any] | None) -> list[Change]:
    """Run conditions recorded in both and different (saved summaries or a report's full conditions)."""
    from sie_evals.lib.gates.conditions import summarize

    def saved_form(c: dict[str, Any] | None) -> dict[str, Any] | None:
        if not c:
            return c
        # a report holds the full conditions (dataset, hardware.host...): compare them in the saved form
        return c if "dataset_hash" in c or "harness_version" in c else summarize(c, c.get("profile_settings"))

    return diff_conditions(saved_form(conditions_a), saved_form(conditions_b))


def metric_deltas(
    per_query_a: pd.DataFrame, per_query_b: pd.DataFrame, metrics: list[str], resamples: int = 2000
) -> list[DeltaInterval]:
    """B - A per metric with a paired bootstrap interval, for each metric both per-query frames hold."""
    out = []
    for m in metrics:
        interval = paired_bootstrap(per_query_b, per_query_a, m, resamples=resamples)
        if interval is not None:
            out.append(interval)
    return out


@dataclass
class DiffSide:
    """One side of a diff, read by the caller: a report's computed source or a saved target/measurement."""

    name: str  # as the user addressed it
    task: str
    split: str
    variant: str  # split, or split@q<N>-c<M> for a slice
    main_score: str
    task_type: str
    metrics: dict[str, float]
    per_query: pd.DataFrame
    ranking: pd.DataFrame | None  # query_id, doc_id, rank, score (top k) or None when not kept
    conditions: dict[str, Any] | None
    dataset_hash: str | None = None
    subset: dict[str, int] | None = None  # the --limit-queries/--corpus-size slice it was scored on


@dataclass(frozen=True)
class TaskTexts:
    """What a retrieval task's data says about the listed queries: their text, judged documents, doc texts."""

    queries: dict[str, str]
    documents: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _first_relevant(ranks: dict[str, int], relevant: set[str]) -> int | None:
    return min((r for d, r in ranks.items() if d in relevant), default=None)


def _ranks(ranking: pd.DataFrame | None, query_id: str) -> dict[str, int]:
    if ranking is None:
        return {}
    rows = ranking[ranking["query_id"] == query_id]
    return dict(zip(rows["doc_id"].astype(str).tolist(), rows["rank"].astype(int).tolist(), strict=True))


def displacing_documents(
    worse: dict[str, int], better: dict[str, int], relevant: set[str], n: int = 3, top: int = 10
) -> list[str]:
    """Non-relevant documents the worse run ranks above its first relevant one (within its top `top`)
    that the better run ranked below its own first relevant one, or not at all: what pushed the
    relevant documents down. Best-ranked first."""
    first_worse = _first_relevant(worse, relevant) or top + 1
    first_better = _first_relevant(better, relevant)
    out = []
    for doc, rank in sorted(worse.items(), key=lambda x: x[1]):
        if rank >= min(first_worse, top + 1) or len(out) == n:
            break
        if doc not in relevant and (first_better is None or better.get(doc, 1 << 30) > first_better):
            out.append(doc)
    return out


def query_details(
    query_id: str, direction: str, a: DiffSide, b: DiffSide, texts: TaskTexts | None, snippet: int = 300
) -> dict[str, Any]:
    """The query's text, its relevant documents with their rank in A and in B (None: not in the saved
    top k), and the documents that displaced them in the run where it scored worse."""
    ranks_a, ranks_b = _ranks(a.ranking, query_id), _ranks(b.ranking, query_id)
    out: dict[str, Any] = {}
    if texts is None:
        return out
    out["text"] = texts.queries.get(query_id)
    relevant = {d for d, rel in texts.qrels.get(query_id, {}).items() if rel > 0}
    out["relevant"] = [
        {"doc_id": d, "rank_a": ranks_a.get(d), "rank_b": ranks_b.get(d), "text": texts.documents.get(d, "")[:snippet]}
        for d in sorted(relevant, key=lambda d: (ranks_b.get(d, 1 << 30), ranks_a.get(d, 1 << 30), d))
    ]
    if a.ranking is not None and b.ranking is not None:
        worse, better, side = (ranks_b, ranks_a, "B") if direction == "regressed" else (ranks_a, ranks_b, "A")
        out["displacing_side"] = side
        out["displacing"] = [
            {
                "doc_id": d,
                "rank_a": ranks_a.get(d),
                "rank_b": ranks_b.get(d),
                "text": texts.documents.get(d, "")[:snippet],
            }
            for d in displacing_documents(worse, better, relevant)
        ]
    return out


def check_comparable(a: DiffSide, b: DiffSide) -> None:
    """Two runs of the same task and split that scored some queries in common, or InputError naming B."""
    if (a.task, a.split) != (b.task, b.split):
        raise InputError(
            f"{b.name}: a result of {b.task} ({b.split}), but {a.name} is of {a.task} ({a.split}); "
            "a diff compares two runs of the same task and split"
        )
    common = set(a.per_query["query_id"].astype(str)) & set(b.per_query["query_id"].astype(str))
    if not common:
        raise InputError(f"{b.name}: no query in common with {a.name} (different data slices?)")


def build_diff(
    a: DiffSide,
    b: DiffSide,
    texts: TaskTexts | None,
    metric: str | None = None,
    n: int = 5,
    metrics: list[str] | None = None,
    resamples: int = 2000,
) -> "RunDiff":
    """The whole diff of two sides of the same task. `metric` ranks the queries (default: A's main
    score); `metrics`: which deltas to show (default: every metric both sides scored per query)."""
    check_comparable(a, b)
    metric = metric or a.main_score
    common = [c for c in a.per_query.columns if c != "query_id" and c in b.per_query.columns]
    if metric not in common:
        raise InputError(f"metric {metric!r} is not a per-query score of both sides (both have: {', '.join(common)})")
    shown = [m for m in (metrics or common) if m in common]
    rows = changed_queries(a.per_query, b.per_query, metric, n).to_dict("records")
    queries = [{**r, **query_details(str(r["query_id"]), r["direction"], a, b, texts)} for r in rows]
    notes = []
    if a.variant != b.variant or (a.dataset_hash and b.dataset_hash and a.dataset_hash != b.dataset_hash):
        notes.append(
            f"the two sides scored different data ({a.variant} vs {b.variant}): only the queries both scored compare"
        )
    for side, label in ((a, "A"), (b, "B")):
        if side.ranking is None:
            notes.append(f"{label} ({side.name}) kept no ranking: its documents' ranks are not shown")
    return RunDiff(a.name, b.name, a.task, metric, metric_deltas(a.per_query, b.per_query, shown, resamples),
                   queries, condition_diff(a.conditions, b.conditions), notes)  # fmt: skip


@dataclass
class RunDiff:
    """Everything `sie-bench diff` shows; `queries` rows may carry the documents (see attach_documents)."""

    a: str  # how each side was named (a file, a saved target)
    b: str
    task: str
    metric: str  # the per-query metric the queries are ranked by
    deltas: list[DeltaInterval]
    queries: list[dict[str, Any]]
    conditions: list[Change]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deltas"] = [x.as_dict() for x in self.deltas]
        d["conditions"] = [c.as_dict() for c in self.conditions]
        return d


RANK_LEGEND = "Ranks start at 1; - means not within the saved top k of that run (or no ranking kept)."


def md_cell(text: Any) -> str:
    """A markdown table cell: user text with pipes and line breaks neutralised."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _rank(r: int | None) -> str:
    return "-" if r is None else str(r)


def render_markdown(diff: RunDiff, max_snippet: int = 120) -> str:
    """The diff as markdown: metric deltas, changed queries (with relevant documents' ranks and the
    documents that displaced them, when attached), changed run conditions."""
    lines = [f"# {md_cell(diff.task)}: {md_cell(diff.a)} (A) vs {md_cell(diff.b)} (B)", "", "## Metrics (B - A)", ""]
    lines += ["| metric | delta | 95% CI | beyond noise | queries |", "|---|---:|---:|---|---:|"]
    for d in diff.deltas:
        noise = "yes" if d.beyond_noise else "no"
        lines.append(f"| {d.metric} | {d.delta:+.5f} | [{d.low:+.5f}, {d.high:+.5f}] | {noise} | {d.n_queries} |")
    lines += ["", f"## Queries that changed most ({md_cell(diff.metric)})", "", RANK_LEGEND, ""]
    if not diff.queries:
        lines.append("No query changed.")
    for q in diff.queries:
        lines.append(
            f"### {q['direction']}: {md_cell(q['query_id'])} "
            f"({q['value_a']:.4f} -> {q['value_b']:.4f}, {q['delta']:+.4f})"
        )
        if q.get("text") is not None:
            lines += ["", f"> {md_cell(q['text'][: max_snippet * 2])}"]
        if q.get("relevant"):
            lines += ["", "| relevant doc | rank A | rank B | text |", "|---|---:|---:|---|"]
            for doc in q["relevant"]:
                snippet = md_cell((doc.get("text") or "")[:max_snippet])
                lines.append(
                    f"| {md_cell(doc['doc_id'])} | {_rank(doc.get('rank_a'))} | {_rank(doc.get('rank_b'))} "
                    f"| {snippet} |"
                )
        if q.get("displacing"):
            side = q.get("displacing_side", "B")
            lines += ["", f"| ranked above them in {side} | rank A | rank B | text |", "|---|---:|---:|---|"]
            for doc in q["displacing"]:
                snippet = md_cell((doc.get("text") or "")[:max_snippet])
                lines.append(
                    f"| {md_cell(doc['doc_id'])} | {_rank(doc.get('rank_a'))} | {_rank(doc.get('rank_b'))} "
                    f"| {snippet} |"
                )
        lines.append("")
    lines += ["", "## Run conditions that differ", ""]
    lines += [f"- {md_cell(c)}" for c in diff.conditions] or ["None recorded differ."]
    lines += [f"- note: {md_cell(n)}" for n in diff.notes]
    return "\n".join(lines) + "\n"


def _t(value: Any) -> Text:
    """User text as a literal rich Text: no markup, emoji codes or highlighting interpreted."""
    return Text(str(value).replace("\r", " ").replace("\n", " "))


def render_terminal(diff: RunDiff, console: Console, max_snippet: int = 100) -> None:
    """Rich tables: metric deltas, then each changed query with its documents, then the conditions."""
    console.print(Text.assemble((f"{diff.task}: ", "bold"), _t(f"A = {diff.a}, B = {diff.b}")))
    table = Table(title="metrics (B - A), paired bootstrap over queries")
    for col in ("metric", "delta", "95% CI", "beyond noise", "queries"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for d in diff.deltas:
        table.add_row(
            _t(d.metric), f"{d.delta:+.5f}", f"[{d.low:+.5f}, {d.high:+.5f}]", "yes" if d.beyond_noise else "no",
            str(d.n_queries),
        )  # fmt: skip
    console.print(table)
    console.print(Text(f"queries that changed most by {diff.metric}. {RANK_LEGEND}"))
    if not diff.queries:
        console.print(Text("no query changed"))
    for q in diff.queries:
        head = f"{q['direction']} {q['query_id']}: {q['value_a']:.4f} -> {q['value_b']:.4f} ({q['delta']:+.4f})"
        docs = Table(title=_t(head), title_justify="left", show_lines=False)
        for col in ("", "doc", "rank A", "rank B", "text"):
            docs.add_column(col, justify="right" if col.startswith("rank") else "left", overflow="fold")
        if q.get("text") is not None:
            docs.add_row("query", "", "", "", _t(q["text"][: max_snippet * 2]))
        for label, key in (("relevant", "relevant"), (f"above in {q.get('displacing_side', 'B')}", "displacing")):
            for doc in q.get(key) or []:
                docs.add_row(
                    label, _t(doc["doc_id"]), _rank(doc.get("rank_a")), _rank(doc.get("rank_b")),
                    _t((doc.get("text") or "")[:max_snippet]),
                )  # fmt: skip
        console.print(docs)
    console.print(Text("run conditions that differ:", "bold"))
    for c in diff.conditions or []:
        console.print(_t(f"  {c}"))
    if not diff.conditions:
        console.print(Text("  none recorded differ"))
    for n in diff.notes:
        console.print(Text.assemble(("note: ", "yellow"), _t(n)))
