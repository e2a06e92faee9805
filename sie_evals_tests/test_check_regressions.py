"""A failed quality drift check says which queries got worse: its metadata lists the queries whose
per-query value dropped most from the saved target (checked against the two Parquet files) and the
run conditions that differ; the alert links to the check and names the top three; the eval report
lists each cell's lowest queries. Real model, real SciFact slice, real webhook on 127.0.0.1."""

import json
import urllib.parse

import dagster as dg
import pandas as pd
import pytest
from ruamel.yaml import YAML

from sie_evals.defs.alerts.sensors import make_check_failure_sensor
from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
from sie_evals.defs.evals.checks import EVAL_CHECKS, quality_vs_measurement, quality_vs_target
from sie_evals.defs.evals.partitions import sync_partitions
from sie_evals.defs.reports.assets import eval_report
from sie_evals.lib.config.model_config import find_model_config
from sie_evals.lib.gates.drift import REGRESSED_QUERIES
from sie_evals.lib.gates.keys import ResultKey
from sie_evals.lib.gates.saved_results import save_target
from sie_evals.lib.reporting.regressions import snippet, worst_queries
from sie_evals_tests.conftest import MODEL_ID, SCIFACT
from sie_evals_tests.webhook import WebhookReceiver

pytestmark = pytest.mark.slow  # three real materializations (~1 min)

KEY = CELL = "all-MiniLM-L6-v2:beir/SciFact:local"  # the partition is the declared cell
SLICE = {"limit_queries": 20, "corpus_size": 200}
DEFS = [task_dataset, embeddings, quality_scores, quality_vs_target, quality_vs_measurement, eval_report]
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
SHORT = "short"  # documents cut to 16 tokens: a real, slice-compatible change that costs quality
UI = "http://127.0.0.1:3999"
WHY_KEYS = ("regressed_queries", "regressed_query_ids", "conditions_vs_reference")


def _add_short_profile(configs_dir) -> None:
    path = configs_dir / CONFIG_NAME
    yaml = YAML()
    tree = yaml.load(path.read_text())
    tree["profiles"][SHORT] = {"max_seq_length": 16, "runtime": "torch"}
    with open(path, "w") as fh:
        yaml.dump(tree, fh)


def _run(resources, instance):
    return dg.materialize(
        DEFS,
        selection=dg.AssetSelection.assets(embeddings, quality_scores),
        partition_key=KEY,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def _evaluations(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _expected_regressions(target: pd.DataFrame, now: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Straight from the two Parquet files: now - target per query, most negative first, ties by id."""
    joined = target[["query_id", metric]].merge(now[["query_id", metric]], on="query_id", suffixes=("_t", "_n"))
    joined["delta"] = joined[f"{metric}_n"] - joined[f"{metric}_t"]
    down = joined[joined["delta"] < 0].sort_values(["delta", "query_id"])
    return down.head(REGRESSED_QUERIES).reset_index(drop=True)


@pytest.fixture
def receiver(monkeypatch):
    r = WebhookReceiver("/hook")
    monkeypatch.setenv("SIE_EVALS_ALERT_WEBHOOK_URL", r.url)
    monkeypatch.setenv("SIE_EVALS_DAGSTER_URL", UI)
    yield r
    r.close()


def test_failed_check_lists_regressed_queries_and_alert_links_to_it(
    tmp_path, configs_dir, eval_resources, monkeypatch, receiver
):
    _add_short_profile(configs_dir)
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, configs_dir)  # the declared cells, as the sync sensor makes them
    default = eval_resources(profile="default", **SLICE)
    assert dg.materialize(
        DEFS, selection=[task_dataset], partition_key=KEY, instance=instance, resources=default
    ).success

    # the reference run: the default profile; nothing saved for it, so its checks pass and stay small
    first = _run(default, instance)
    assert first.success
    for evaluation in _evaluations(first).values():
        assert evaluation.passed and not set(WHY_KEYS) & set(evaluation.metadata), evaluation.metadata.keys()
    value = first.output_for_node("quality_scores")
    target_pq = pd.read_parquet(value["per_query_path"])  # the next run overwrites the file

    # its result becomes the target of the `short` profile's cell: same queries, same slice
    config = find_model_config(MODEL_ID, configs_dir)
    key = ResultKey.quality(config.short_name, "beir/SciFact", "test", SLICE, SHORT)
    save_target(config, key, "local", {"ndcg_at_10": value["metrics"]["ndcg_at_10"]}, value["conditions"], target_pq)

    sensor = make_check_failure_sensor([k for c in EVAL_CHECKS for k in c.check_keys])

    def tick(cursor):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
        list(sensor(ctx) or [])
        return ctx.cursor

    cursor = tick(None)  # a new sensor starts after the history it finds

    failed = _run(eval_resources(profile=SHORT, **SLICE), instance)
    assert not failed.success  # the blocking check failed
    check = _evaluations(failed)["quality_vs_target"]
    assert not check.passed and check.description.startswith("drift: ndcg_at_10 "), check.description
    now_pq = pd.read_parquet(failed.output_for_node("quality_scores")["per_query_path"])

    # exactly the queries whose per-query delta is most negative, with both values
    expected = _expected_regressions(target_pq, now_pq, "ndcg_at_10")
    assert len(expected) >= 3, expected  # truncating documents to 16 tokens must hurt several queries
    listed = check.metadata["regressed_query_ids"].value
    assert listed["metric"] == "ndcg_at_10"
    assert [q["query_id"] for q in listed["queries"]] == expected["query_id"].tolist()
    for q, row in zip(listed["queries"], expected.itertuples(index=False), strict=True):
        assert q["reference"] == pytest.approx(row.ndcg_at_10_t, abs=1e-12)
        assert q["value"] == pytest.approx(row.ndcg_at_10_n, abs=1e-12)
        assert q["delta"] == pytest.approx(row.delta, abs=1e-12) and q["delta"] < 0

    # the markdown table: one row per regressed query, in order, with the query's text
    texts = {str(q["_id"]): q["text"] for q in map(json.loads, (SCIFACT / "queries.jsonl").read_text().splitlines())}
    table = check.metadata["regressed_queries"].value
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(expected), table
    for i, (line, row) in enumerate(zip(rows, expected.itertuples(index=False), strict=True), 1):
        cells = [c.strip() for c in line.strip("| ").split(" | ")]
        assert cells[:3] == [str(i), row.query_id, snippet(texts[row.query_id])], line
        assert cells[3:] == [f"{row.ndcg_at_10_t:.4f}", f"{row.ndcg_at_10_n:.4f}", f"{row.delta:+.4f}"], line
    # the conditions that differ between the target and this run: the profile and its max_seq_length
    conditions = check.metadata["conditions_vs_reference"].value
    assert "| profile | default | short |" in conditions, conditions
    assert "| max_seq_length | 256 | 16 |" in conditions, conditions

    # the alert: a link to the check (and partition) in the UI, and the top three query ids
    cursor = tick(cursor)
    alerts = [b for b in receiver.bodies if b["alert"]["kind"] == "check"]
    assert [a["alert"]["title"] for a in alerts] == ["quality_scores.quality_vs_target"], receiver.bodies
    alert, text = alerts[0]["alert"], alerts[0]["text"]
    query = urllib.parse.urlencode({"view": "checks", "checkDetail": "quality_vs_target", "partition": KEY})
    assert alert["check_url"] == f"{UI}/assets/quality_scores?{query}", alert["check_url"]
    top3 = expected["query_id"].tolist()[:3]
    assert alert["regressed_queries"] == top3 and alert["regressed_metric"] == "ndcg_at_10"
    assert f"most regressed queries (ndcg_at_10): {', '.join(top3)}" in text and alert["check_url"] in text, text

    # the eval report: the lowest queries of the cell's latest result
    report = dg.materialize(DEFS, selection=[eval_report], instance=instance, resources=default)
    assert report.success
    md = (tmp_path / "results" / "reports" / "eval_report.md").read_text()
    worst = worst_queries(now_pq, "ndcg_at_10")
    assert len(worst) == 5 and [w["value"] for w in worst] == sorted(now_pq["ndcg_at_10"])[:5]
    shown = ", ".join(f"{w['query_id']}: {w['value']:.4f}" for w in worst)
    assert f"| {CELL} | ndcg_at_10 | {shown} |" in md, md
