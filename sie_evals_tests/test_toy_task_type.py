"""A new task type is one file (toy_task_type.py) plus one registry line: it runs end to end from the CLI and as
Dagster assets, with its own rules, data, scoring and metrics, on a slice of the real Banking77 data."""

import json

import dagster as dg
import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.quality.task_types import TASK_TYPES, register_task_type, task_type_for, unregister_task_type
from sie_evals.lib.tasks import resolve_task
from sie_evals.lib.tasks.spec import TaskSpec
from sie_evals_tests.conftest import MODEL_ID
from sie_evals_tests.toy_task_type import TASK_ID, CentroidRules, NearestCentroidTaskType

runner = CliRunner()


@pytest.fixture
def toy():
    register_task_type(NearestCentroidTaskType)  # the one registry line
    yield NearestCentroidTaskType
    unregister_task_type(NearestCentroidTaskType)


@pytest.mark.slow
def test_toy_type_from_the_cli_reports_its_own_metrics(toy, tmp_path):
    out = tmp_path / "toy.json"
    res = runner.invoke(
        app, ["eval", MODEL_ID, "-t", TASK_ID, "--limit-queries", "20", "--no-progress", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert (report["task"], report["task_type"], report["main_score"]) == (
        TASK_ID,
        "nearest_centroid",
        "centroid_accuracy",
    )
    local = report["sources"]["local"]
    assert set(local["metrics"]) == {"centroid_accuracy", "centroid_macro_f1"}
    assert report["dataset"]["counts"]["test"] == 20 and report["dataset"]["variant"] == "test@n20"
    # MiniLM's nearest centroid of 4 texts a label is far above chance (1/77) on Banking77
    assert local["metrics"]["centroid_accuracy"] >= 0.4
    import pandas as pd

    per_query = pd.read_parquet(tmp_path / local["per_query_file"])
    assert len(per_query) == 20
    assert per_query["centroid_accuracy"].mean() == pytest.approx(local["metrics"]["centroid_accuracy"])
    assert "centroid_accuracy *" in res.output and "centroid_macro_f1" in res.output  # its table rows


def test_unregistered_toy_task_is_an_input_error_and_registration_is_undone(tmp_path):
    assert "nearest_centroid" not in TASK_TYPES
    res = runner.invoke(app, ["eval", MODEL_ID, "-t", TASK_ID, "--no-progress", "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "unknown task" in res.output.lower()


def test_rules_forbid_unknown_fields_and_must_match_the_type(toy):
    with pytest.raises(Exception, match="per_labell"):
        CentroidRules(per_labell=3)
    wrong = TaskSpec(
        task_id="toy/x", type="nearest_centroid", local_dir="banking77", rules=resolve_task("beir/SciFact").rules
    )
    with pytest.raises(ConfigError, match="CentroidRules"):
        task_type_for(wrong)


@pytest.mark.slow
def test_toy_type_as_dagster_assets(toy, configs_dir, eval_resources):
    """A temp model config declares the toy task: its cell exists, and task_dataset -> embeddings ->
    quality_scores materialize it with the toy's own metrics (snapshot written and read back)."""
    from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
    from sie_evals.defs.evals.partitions import sync_partitions

    config = configs_dir / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    config.write_text(config.read_text().replace("tasks:\n", f"tasks:\n  - {TASK_ID}\n", 1))
    resources = eval_resources(corpus_size=None)  # the toy task has no corpus
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, configs_dir)
    cell = f"all-MiniLM-L6-v2:{TASK_ID}:local"
    assert cell in instance.get_dynamic_partitions("eval_cells")
    result = dg.materialize(
        [task_dataset, embeddings, quality_scores], partition_key=cell, instance=instance, resources=resources
    )
    assert result.success
    scores = result.output_for_node("quality_scores")
    assert scores["main_score"] == "centroid_accuracy" and set(scores["metrics"]) == {
        "centroid_accuracy",
        "centroid_macro_f1",
    }
    assert scores["dataset"]["counts"]["test"] == 20
    mat = next(e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "quality_scores")
    metadata = mat.materialization.metadata
    assert metadata["main_score_name"].value == "centroid_accuracy"
    assert metadata["centroid_macro_f1"].value == pytest.approx(scores["metrics"]["centroid_macro_f1"])
