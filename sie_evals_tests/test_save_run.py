"""Ranked results (issue 26 item 1): `--save-run` writes the ranking the metrics came from, as a TREC
run and Parquet; scored by pytrec_eval alone with the task's qrels it reproduces the report's metrics.
Saved targets keep the ranking beside the per-query scores."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytrec_eval
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.config.model_config import load_model_config
from sie_evals.lib.gates import saved_results as saved
from sie_evals.lib.gates.keys import ResultKey
from sie_evals.lib.quality.metrics import MTEB_ROUND_DIGITS, PYTREC_MEASURES
from sie_evals.lib.quality.ranking import Ranking, read_run
from sie_evals.lib.tasks import load_retrieval_data, resolve_task
from sie_evals_tests.conftest import DATA, MODEL_ID

runner = CliRunner()
SLICE = ["--limit-queries", "20", "--corpus-size", "300"]
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"


def _eval(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", *SLICE, "--no-progress", "--no-record", *args])
    return res.exit_code, " ".join(res.output.split())


def _qrels() -> dict[str, dict[str, int]]:
    data = load_retrieval_data(resolve_task("beir/SciFact"), "test", DATA).take_subset(20, 300)
    return data.qrels


def _pytrec_metrics(qrels, run, k_values) -> dict[str, float]:
    """MTEB's aggregation of pytrec_eval's per-query values: mean over queries, rounded to 5 decimals."""
    ks = ",".join(map(str, k_values))
    scores = pytrec_eval.RelevanceEvaluator(qrels, {f"{m}.{ks}" for m in PYTREC_MEASURES}).evaluate(run)
    return {
        f"{prefix}_{k}": round(float(np.mean([s[f"{m}_{k}"] for s in scores.values()])), MTEB_ROUND_DIGITS)
        for m, prefix in PYTREC_MEASURES.items()
        for k in k_values
    }


@pytest.mark.parametrize("k", [100, 1000])
def test_saved_run_scored_by_pytrec_eval_reproduces_the_report(tmp_path, k):
    code, out = _eval("-o", str(tmp_path / "r.json"), "--save-run", str(tmp_path / "run.trec"), "--save-run-k", str(k))
    assert code == 0, out
    report = json.loads((tmp_path / "r.json").read_text())
    metrics = report["sources"]["local"]["metrics"]
    with open(tmp_path / "run.trec") as fh:
        run = pytrec_eval.parse_run(fh)  # the TREC file alone, read by pytrec_eval's own parser
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert len(run) == 20 and len(lines) == sum(len(d) for d in run.values()) == 20 * min(k, 300)
    assert lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"
    # every metric the report has at a cut-off within the saved depth (recall@1000 needs k=1000)
    k_values = [c for c in (1, 3, 5, 10, 20, 100, 1000) if c <= k]
    expected = {m: v for m, v in _pytrec_metrics(_qrels(), run, k_values).items() if m in metrics}
    assert len(expected) >= 20 and ("recall_at_1000" in expected) == (k == 1000)
    assert expected == {m: metrics[m] for m in expected}
    # the Parquet holds the same rows; ranks 1..n per query, score descending, ties by corpus order
    frame = read_run(tmp_path / "run.parquet")
    assert list(frame.columns) == ["query_id", "doc_id", "rank", "score"] and len(frame) == len(lines)
    trec = pd.DataFrame([ln.split()[:5] for ln in lines], columns=["query_id", "q0", "doc_id", "rank", "score"])
    assert trec["doc_id"].tolist() == frame["doc_id"].tolist()
    assert trec["score"].astype(float).tolist() == frame["score"].astype(float).tolist()
    for _, rows in frame.groupby("query_id"):
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        assert (np.diff(rows["score"].to_numpy()) <= 0).all()
    # -o keeps the top k beside the per-query scores, for sie-bench diff
    beside = read_run(tmp_path / report["sources"]["local"]["run_file"])
    assert beside.equals(frame)


def test_tie_order_is_score_descending_then_document_index():
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1]], dtype=np.float32)
    indices = np.array([[4, 0, 2, 3, 1]])
    ranking = Ranking(["q"], ["d0", "d1", "d2", "d3", "d4"], scores, indices)
    assert ranking.frame(3)["doc_id"].tolist() == ["d4", "d0", "d2"]
    # MTEB's run rules as the metrics saw them: the query itself dropped, then the first result skipped
    ruled = Ranking(["d4"], ["d0", "d1", "d2", "d3", "d4"], scores, indices, True, True)
    assert ruled.frame(2)[["doc_id", "rank"]].values.tolist() == [["d2", 1], ["d3", 2]]


def test_save_run_path_checked_before_the_run(tmp_path):
    folder = tmp_path / "a-dir"
    folder.mkdir()
    code, out = _eval("--save-run", str(folder))
    assert code == 2 and "--save-run" in out and str(folder) in out and "directory" in out
    (tmp_path / "a-file").write_text("")
    code, out = _eval("--save-run", str(tmp_path / "a-file" / "run.trec"))
    assert code == 2 and "--save-run" in out and "a-file" in out
    code, out = _eval("--save-run", str(tmp_path / "run.trec"), "--save-run-k", "1001")
    assert code == 2 and "--save-run-k 1001" in out and "top 1000" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "a-file"]  # nothing written
    assert list(folder.iterdir()) == []


def test_save_run_on_a_classification_task_is_exit_2(tmp_path):
    res = runner.invoke(
        app,
        [
            "eval",
            MODEL_ID,
            "-t",
            "mteb/Banking77Classification",
            "--limit-queries",
            "20",
            "--no-progress",
            "--no-record",
            "--save-run",
            str(tmp_path / "run.trec"),
        ],
    )
    assert res.exit_code == 2 and "ranked results come from retrieval tasks" in " ".join(res.output.split())
    assert list(tmp_path.iterdir()) == []


def test_saved_target_keeps_its_ranking(tmp_path, configs_dir, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    code, out = _eval("--save-targets", "local", "--save-run-k", "7", "-o", str(tmp_path / "r.json"))
    assert code == 0, out
    config = load_model_config(configs_dir / CONFIG_NAME)
    key = ResultKey.quality(config.short_name, "beir/SciFact", "test", {"limit_queries": 20, "corpus_size": 300})
    target = saved.find_target(config, key)
    assert target is not None and target.run is not None and target.run.endswith(".run.parquet")
    run = saved.load_run(config, target)
    assert run is not None and len(run) == 20 * 7
    report = json.loads((tmp_path / "r.json").read_text())
    assert run.equals(read_run(tmp_path / report["sources"]["local"]["run_file"]))
    assert Path(configs_dir / target.run).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["multivector", "muvera"])
def test_saved_run_of_multivector_and_muvera_reproduces_the_report(tmp_path, profile):
    """The same contract on the MaxSim and MUVERA searches (lib/quality/output_search.py)."""
    args = ["-p", profile, "-o", str(tmp_path / "r.json"), "--save-run", str(tmp_path / "run.trec")]
    code, out = _eval(*args)
    assert code == 0, out
    metrics = json.loads((tmp_path / "r.json").read_text())["sources"]["local"]["metrics"]
    with open(tmp_path / "run.trec") as fh:
        run = pytrec_eval.parse_run(fh)
    expected = {m: v for m, v in _pytrec_metrics(_qrels(), run, [1, 3, 5, 10, 20, 100]).items() if m in metrics}
    assert len(expected) >= 20 and expected == {m: metrics[m] for m in expected}
