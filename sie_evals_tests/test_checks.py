"""Dagster asset checks on quality_scores, with the same margins as --check-targets."""

import dagster as dg
import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
from sie_evals.defs.evals.checks import EVAL_CHECKS, check_description, quality_vs_measurement, quality_vs_target
from sie_evals.defs.evals.partitions import sync_partitions
from sie_evals.defs.finesse.checks import finesse_rss_vs_measurement, finesse_rss_vs_target
from sie_evals.lib.gates import thresholds
from sie_evals.lib.gates.thresholds import Against, MetricKind
from sie_evals_tests.conftest import MODEL_ID

KEY = "all-MiniLM-L6-v2:beir/SciFact:local"  # a declared cell: model:task:source
VARIANT = "test@q20-c200"
DEFS = [task_dataset, embeddings, quality_scores, quality_vs_target, quality_vs_measurement]
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"


@pytest.fixture
def setup(eval_resources, configs_dir):
    resources = eval_resources()
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, configs_dir)  # the declared cells, as the sync sensor makes them
    assert dg.materialize(
        DEFS, selection=[task_dataset], partition_key=KEY, instance=instance, resources=resources
    ).success
    return resources, instance, configs_dir


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


def _scale(configs_dir, section, metric, factor):
    path = configs_dir / CONFIG_NAME
    yaml = YAML()
    tree = yaml.load(path.read_text())
    entry = tree[section]["beir/SciFact"]["default"][VARIANT]
    entry = entry[-1] if section == "measurements" else entry
    entry["metrics"][metric] = float(entry["metrics"][metric]) * factor
    with open(path, "w") as fh:
        yaml.dump(tree, fh)


def _cli(*args):
    res = CliRunner().invoke(
        app,
        [
            "eval",
            MODEL_ID,
            "-t",
            "beir/SciFact",
            "-s",
            "local",
            "--limit-queries",
            "20",
            "--corpus-size",
            "200",
            "--no-progress",
            "--no-record",
            *args,
        ],
    )
    assert res.exit_code == 0, res.output


def test_no_target_passes_and_says_so(setup):
    resources, instance, _ = setup
    result = _run(resources, instance)
    assert result.success
    evals = _evaluations(result)
    assert evals["quality_vs_target"].passed and evals["quality_vs_measurement"].passed
    description = evals["quality_vs_target"].description
    assert description.startswith(f"NO TARGET saved for all-MiniLM-L6-v2[beir/SciFact][default][{VARIANT}]")
    assert evals["quality_vs_target"].metadata["target_status"].value == "no target"
    assert evals["quality_vs_target"].partition == KEY


def _override_margins(configs_dir, margins):
    path = configs_dir / CONFIG_NAME
    yaml = YAML()
    tree = yaml.load(path.read_text())
    tree["margins"] = margins
    with open(path, "w") as fh:
        yaml.dump(tree, fh)


def test_check_descriptions_come_from_the_margins(monkeypatch):
    """The six drift checks come from one factory, and their descriptions state the margins of
    thresholds.py, generated, not restated: a changed default changes the description."""
    checks = [*EVAL_CHECKS, finesse_rss_vs_target, finesse_rss_vs_measurement]
    specs = {spec.key.name: spec for check in checks for spec in check.check_specs}
    assert specs["quality_vs_target"].description.startswith("quality >= 0.99 x the saved target")
    assert "quality >= 0.98 x the latest saved measurement" in specs["finesse_rss_vs_measurement"].description
    assert specs["latency_vs_target"].description.startswith("latency <= 2.5 x the saved target")
    assert specs["throughput_vs_target"].description.startswith("throughput >= the saved target / 2.5")
    assert specs["quality_vs_target"].blocking and specs["finesse_rss_vs_target"].blocking
    assert not specs["quality_vs_measurement"].blocking and not specs["latency_vs_target"].blocking
    margins = {**thresholds.DEFAULT_MARGINS, Against.targets: {MetricKind.quality: 0.97}}
    monkeypatch.setattr(thresholds, "DEFAULT_MARGINS", margins)
    assert check_description(Against.targets, (MetricKind.quality,), True).startswith(
        "quality >= 0.97 x the saved target"
    )


def test_target_drift_fails_the_run_and_measurement_drift_warns(setup):
    resources, instance, configs_dir = setup
    # a model config's margin override is the margin in force, and a passing check says which it applied
    _override_margins(configs_dir, {"measurements": {"quality": 0.97}})
    _cli("--save-targets", "local")
    _cli("--save-measurements", "local")
    result = _run(resources, instance)
    evals = _evaluations(result)
    assert result.success and evals["quality_vs_target"].passed and evals["quality_vs_measurement"].passed
    assert evals["quality_vs_target"].metadata["ndcg_at_10_ratio"].value == pytest.approx(1.0)
    assert "ndcg_at_10 >= 0.99 x the saved target" in evals["quality_vs_target"].description
    assert "recall_at_10 >= 0.97 x the latest saved measurement" in evals["quality_vs_measurement"].description

    _scale(configs_dir, "measurements", "recall_at_10", 1.05)
    result = _run(resources, instance)
    evals = _evaluations(result)
    assert result.success  # WARN, non-blocking
    warn = evals["quality_vs_measurement"]
    assert not warn.passed and warn.severity == dg.AssetCheckSeverity.WARN and "recall_at_10" in warn.description

    _scale(configs_dir, "targets", "ndcg_at_10", 1.02)
    result = _run(resources, instance)
    assert not result.success  # blocking ERROR check fails the run
    err = _evaluations(result)["quality_vs_target"]
    assert not err.passed and err.severity == dg.AssetCheckSeverity.ERROR
    assert err.description.startswith("drift: ndcg_at_10 ") and err.metadata["ndcg_at_10_margin"].value == 0.99
    # the target was saved by the CLI on this machine minutes ago: the Dagster run's conditions match it
    assert "nothing recorded changed since last pass" in err.description, err.description
    assert err.metadata["changes_since_last_pass"].value == []
    assert "| ndcg_at_10 |" in err.metadata["verdicts"].value
