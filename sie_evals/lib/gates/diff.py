"""What changed between two runs of the same task: metric deltas (paired bootstrap), the queries that
moved most both ways, and the run conditions that differ. Pure: `sie-bench diff`, the Dagster drift
checks and the alerts all call it; loading files is the caller's job.

A query's delta is B - A of one per-query metric over the queries both runs scored; "regressed" are
the most negative deltas, "improved" the most positive. Ties are broken by query id (ascending), so
the same inputs always give the same rows."""

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

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


def _cell(text: Any) -> str:
    """A markdown table cell: user text with pipes and line breaks neutralised."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _rank(r: int | None) -> str:
    return "-" if r is None else str(r)


def render_markdown(diff: RunDiff, max_snippet: int = 120) -> str:
    """The diff as markdown: metric deltas, changed queries (with relevant documents' ranks and the
    documents that displaced them, when attached), changed run conditions."""
    lines = [f"# {_cell(diff.task)}: {_cell(diff.a)} (A) vs {_cell(diff.b)} (B)", "", "## Metrics (B - A)", ""]
    lines += ["| metric | delta | 95% CI | beyond noise | queries |", "|---|---:|---:|---|---:|"]
    for d in diff.deltas:
        noise = "yes" if d.beyond_noise else "no"
        lines.append(f"| {d.metric} | {d.delta:+.5f} | [{d.low:+.5f}, {d.high:+.5f}] | {noise} | {d.n_queries} |")
    lines += ["", f"## Queries that changed most ({_cell(diff.metric)})", ""]
    if not diff.queries:
        lines.append("No query changed.")
    for q in diff.queries:
        lines.append(
            f"### {q['direction']}: {_cell(q['query_id'])} "
            f"({q['value_a']:.4f} -> {q['value_b']:.4f}, {q['delta']:+.4f})"
        )
        if q.get("text") is not None:
            lines += ["", f"> {_cell(q['text'][: max_snippet * 2])}"]
        if q.get("relevant"):
            lines += ["", "| relevant doc | rank A | rank B | text |", "|---|---:|---:|---|"]
            for doc in q["relevant"]:
                snippet = _cell((doc.get("text") or "")[:max_snippet])
                lines.append(
                    f"| {_cell(doc['doc_id'])} | {_rank(doc.get('rank_a'))} | {_rank(doc.get('rank_b'))} | {snippet} |"
                )
        if q.get("displacing"):
            lines += ["", "| ranked above them in B | rank B | rank A | text |", "|---|---:|---:|---|"]
            for doc in q["displacing"]:
                snippet = _cell((doc.get("text") or "")[:max_snippet])
                lines.append(
                    f"| {_cell(doc['doc_id'])} | {_rank(doc.get('rank_b'))} | {_rank(doc.get('rank_a'))} | {snippet} |"
                )
        lines.append("")
    lines += ["", "## Run conditions that differ", ""]
    lines += [f"- {_cell(c)}" for c in diff.conditions] or ["None recorded differ."]
    lines += [f"- note: {_cell(n)}" for n in diff.notes]
    return "\n".join(lines) + "\n"
