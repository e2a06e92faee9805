"""sie-bench diff: the pure core (lib/gates/diff.py) and the CLI on two real runs."""

import pandas as pd
import pytest

from sie_evals.lib.gates.diff import RunDiff, changed_queries, condition_diff, metric_deltas, render_markdown


def _pq(values: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame({"query_id": list(values), "ndcg_at_10": list(values.values())})


def test_changed_queries_both_ways_ranked_and_tied_by_query_id():
    a = _pq({"q1": 1.0, "q2": 0.5, "q3": 0.5, "q4": 0.2, "q5": 0.9, "q6": 0.3})
    b = _pq({"q1": 0.2, "q2": 0.3, "q3": 0.3, "q4": 0.9, "q5": 0.9, "q6": 0.4, "q7": 1.0})
    out = changed_queries(a, b, "ndcg_at_10", 2)
    assert out["query_id"].tolist() == ["q1", "q2", "q4", "q6"]
    assert out["direction"].tolist() == ["regressed", "regressed", "improved", "improved"]
    assert out["delta"].tolist() == pytest.approx([-0.8, -0.2, 0.7, 0.1])
    assert out.loc[0, "value_a"] == 1.0 and out.loc[0, "value_b"] == 0.2
    # unchanged (q5) and one-sided (q7) queries never listed
    assert "q5" not in set(changed_queries(a, b, "ndcg_at_10", 10)["query_id"])
    assert "q7" not in set(changed_queries(a, b, "ndcg_at_10", 10)["query_id"])


def test_changed_queries_missing_metric_is_named():
    with pytest.raises(ValueError, match="'map_at_10'"):
        changed_queries(_pq({"q1": 1.0}), _pq({"q1": 1.0}), "map_at_10", 3)


def test_condition_diff_report_and_saved_forms():
    full = {"engine": "local", "profile": "default", "dataset": {"content_hash": "x"}, "software": {"torch": "2.1"}}
    saved = {"engine": "local", "profile": "short", "dataset_hash": "x", "software": {"torch": "2.2"}}
    changes = {c.field: (c.before, c.after) for c in condition_diff(full, saved)}
    assert changes == {"profile": ("default", "short"), "torch": ("2.1", "2.2")}
    assert condition_diff(None, saved) == []


def test_metric_deltas_and_markdown_escape_user_text():
    a = _pq({f"q{i}": 1.0 for i in range(20)})
    b = _pq({f"q{i}": 0.0 if i < 10 else 1.0 for i in range(20)})
    (d,) = metric_deltas(a, b, ["ndcg_at_10", "absent"])
    assert d.delta == pytest.approx(-0.5) and d.beyond_noise and d.n_queries == 20
    rows = changed_queries(a, b, "ndcg_at_10", 1).to_dict("records")
    rows[0]["text"] = "a | b\n[bold]x[/bold]"
    rows[0]["relevant"] = [{"doc_id": "d|1", "rank_a": 1, "rank_b": None, "text": "t"}]
    md = render_markdown(RunDiff("A.json", "B.json", "scifact", "ndcg_at_10", [d], rows, []))
    assert "| d\\|1 | 1 | - | t |" in md
    assert "> a \\| b [bold]x[/bold]" in md
    assert "| ndcg_at_10 | -0.50000 |" in md
