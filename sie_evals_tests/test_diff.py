"""sie-bench diff: the pure core (lib/gates/diff.py) and the CLI on two real runs."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.gates.diff import (
    RunDiff,
    changed_queries,
    condition_diff,
    metric_deltas,
    render_markdown,
    render_terminal,
)
from sie_evals_tests.conftest import DATA, MODEL_ID, REPO_ROOT


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


# ---------------------------------------------------------------- the CLI on two real runs


runner = CliRunner()
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
SLICE = ["--limit-queries", "20", "--corpus-size", "300"]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, session_cache, runtime_cache):
    """`default` and a `short` profile (max_seq_length 16, in a temp model config) on a SciFact slice."""
    root = tmp_path_factory.mktemp("diff")
    configs = root / "model_configs"
    shutil.copytree(REPO_ROOT / "model_configs", configs)
    cfg = configs / CONFIG_NAME
    cfg.write_text(cfg.read_text().replace("  bf16:\n", "  short:\n    max_seq_length: 16\n  bf16:\n", 1))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("DATA_DIR", DATA), ("CACHE_DIR", session_cache), ("RUNTIME_CACHE_DIR", runtime_cache)):
            mp.setenv(f"SIE_EVALS_{name}", str(value))
        mp.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs))
        for profile in ("default", "short"):
            args = ["eval", MODEL_ID, "-t", "beir/SciFact", *SLICE, "-p", profile, "--no-progress", "--no-record"]
            res = runner.invoke(app, [*args, "-o", str(root / f"{profile}.json")])
            assert res.exit_code == 0, res.output
    return root


def _diff(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["diff", *args])
    return res.exit_code, _flat(res.output)


def _per_query(report: Path) -> pd.DataFrame:
    src = json.loads(report.read_text())["sources"]["local"]
    return pd.read_parquet(report.parent / src["per_query_file"]).set_index("query_id")


def _ranks(report: Path) -> pd.DataFrame:
    src = json.loads(report.read_text())["sources"]["local"]
    return pd.read_parquet(report.parent / src["run_file"])


@pytest.mark.slow
def test_diff_of_two_real_runs_lists_regressed_queries_with_ranks(two_runs, tmp_path):
    a, b = two_runs / "default.json", two_runs / "short.json"
    code, out = _diff(str(a), str(b), "-n", "3", "-o", str(tmp_path / "d.json"))
    assert code == 0, out
    diff = json.loads((tmp_path / "d.json").read_text())
    pq_a, pq_b = _per_query(a), _per_query(b)
    expected = (pq_b["ndcg_at_10"] - pq_a["ndcg_at_10"]).sort_values(kind="stable")
    regressed = [q for q in diff["queries"] if q["direction"] == "regressed"]
    assert regressed, "a 16-token max_seq_length must hurt some query"
    assert [q["delta"] for q in regressed] == pytest.approx(sorted(expected[expected < 0].tolist())[:3])
    run_a, run_b = _ranks(a), _ranks(b)
    for q in regressed:
        qid = q["query_id"]
        assert q["value_a"] == pq_a.loc[qid, "ndcg_at_10"] and q["value_b"] == pq_b.loc[qid, "ndcg_at_10"]
        assert q["text"] and q["relevant"]  # the query's text and its relevant documents
        for doc in q["relevant"]:
            for run, key in ((run_a, "rank_a"), (run_b, "rank_b")):
                hit = run[(run["query_id"] == qid) & (run["doc_id"] == doc["doc_id"])]["rank"].tolist()
                assert doc[key] == (hit[0] if hit else None), (qid, doc["doc_id"], key)
        best_b = min((d["rank_b"] or 10**9) for d in q["relevant"])
        assert all(d["rank_b"] < best_b for d in q["displacing"])  # they rank above the relevant ones in B
        assert str(qid) in out  # the terminal table lists it too
    ndcg = next(d for d in diff["deltas"] if d["metric"] == "ndcg_at_10")
    assert ndcg["delta"] == pytest.approx(float((pq_b["ndcg_at_10"] - pq_a["ndcg_at_10"]).mean()))
    assert {"field": "max_seq_length", "before": 256, "after": 16} in diff["conditions"]
    # markdown by suffix
    assert _diff(str(a), str(b), "-o", str(tmp_path / "d.md"))[0] == 0
    md = (tmp_path / "d.md").read_text()
    assert (
        "| ndcg_at_10 |" in md and "max_seq_length 256 -> 16" in md and f"regressed: {regressed[0]['query_id']}" in md
    )


@pytest.mark.slow
def test_diff_against_a_saved_target(two_runs, tmp_path, monkeypatch):
    configs = tmp_path / "model_configs"
    shutil.copytree(two_runs / "model_configs", configs)
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs))
    args = ["eval", MODEL_ID, "-t", "beir/SciFact", *SLICE, "--no-progress", "--no-record", "--save-targets", "local"]
    assert runner.invoke(app, args).exit_code == 0
    ref = "all-MiniLM-L6-v2#targets/beir/SciFact/default/test@q20-c300"
    code, out = _diff(ref, str(two_runs / "short.json"), "-o", str(tmp_path / "d.json"))
    assert code == 0, out
    diff = json.loads((tmp_path / "d.json").read_text())
    assert diff["a"] == ref and any(q["direction"] == "regressed" for q in diff["queries"])
    assert all(d["rank_a"] is not None for q in diff["queries"] for d in q["relevant"][:1] if q["value_a"] > 0)
    code, out = _diff(f"{configs / CONFIG_NAME}#targets/beir/SciFact/default/test@q99-c300", ref)
    assert code == 2 and "nothing saved there" in out and "test@q20-c300" in out


@pytest.mark.slow
def test_diff_bad_inputs_exit_2_naming_the_file(two_runs, tmp_path):
    a = two_runs / "default.json"
    report = json.loads(a.read_text())
    missing = tmp_path / "nope.json"
    code, out = _diff(str(missing), str(a))
    assert code == 2 and str(missing) in out and "Traceback" not in out
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(a.read_text()[:200])
    code, out = _diff(str(a), str(corrupt))
    assert code == 2 and f"{corrupt}:" in out and "not a JSON report" in out
    no_pq = tmp_path / "no_pq.json"
    del report["sources"]["local"]["per_query_file"]
    no_pq.write_text(json.dumps(report))
    code, out = _diff(str(a), str(no_pq))
    assert code == 2 and str(no_pq) in out and "no per-query data" in out
    other = tmp_path / "other.json"
    shutil.copy(two_runs / "default.local.per_query.parquet", tmp_path / "other.local.per_query.parquet")
    report = json.loads(a.read_text())
    report["task"] = "beir/NFCorpus"
    report["sources"]["local"]["per_query_file"] = "other.local.per_query.parquet"
    del report["sources"]["local"]["run_file"]
    other.write_text(json.dumps(report))
    code, out = _diff(str(a), str(other))
    assert code == 2 and str(other) in out and "same task" in out
    bad_pq = tmp_path / "bad_pq.json"
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    report["task"] = "beir/SciFact"
    report["sources"]["local"]["per_query_file"] = "junk.parquet"
    bad_pq.write_text(json.dumps(report))
    code, out = _diff(str(a), str(bad_pq))
    assert code == 2 and str(tmp_path / "junk.parquet") in out
    code, out = _diff(str(a), str(two_runs / "short.json"), "-o", str(tmp_path / "d.txt"))
    assert code == 2 and ".md" in out and not (tmp_path / "d.txt").exists()


def test_terminal_prints_user_text_literally():
    a = _pq({"q1": 1.0})
    b = _pq({"q1": 0.0})
    rows = changed_queries(a, b, "ndcg_at_10", 1).to_dict("records")
    rows[0].update(text="[bold red]q[/bold red] :100:", relevant=[{"doc_id": "[x]", "rank_a": 1, "rank_b": None}])
    console = Console(record=True, width=200, emoji=False, markup=False, highlight=False)
    render_terminal(RunDiff("A", "B", "t", "ndcg_at_10", [], rows, []), console)
    text = console.export_text()
    assert "[bold red]q[/bold red] :100:" in text and "[x]" in text


def test_saved_result_addresses():
    from sie_evals.lib.core.errors import InputError
    from sie_evals.lib.gates.saved_results import parse_saved_ref

    assert parse_saved_ref("m#targets/beir/SciFact/default/test@q20-c300") == (
        "m", "targets", "beir/SciFact", "default", "test@q20-c300", 0,
    )  # fmt: skip
    assert parse_saved_ref("c.yaml#measurements/mteb/X/en/bf16/test~2")[2:] == ("mteb/X/en", "bf16", "test", 2)
    for bad in ("m#targets/beir/SciFact", "m#other/a/b/c", "m#measurements/a/b/c~x"):
        with pytest.raises(InputError, match=r"addressed as|~N"):
            parse_saved_ref(bad)
