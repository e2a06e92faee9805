"""Finesse in Dagster: partitions from model configs, materialize on an ephemeral instance, drift check."""

import shutil

import dagster as dg
import pytest
from ruamel.yaml import YAML

from sie_evals.defs.evals.partitions import eval_keys, sync_partitions
from sie_evals.defs.evals.resources import EvalSettings, JsonIOManager
from sie_evals.defs.finesse.assets import finesse_embeddings, finesse_scores
from sie_evals.defs.finesse.checks import finesse_rss_vs_measurement, finesse_rss_vs_target
from sie_evals.defs.finesse.partitions import finesse_keys
from sie_evals.lib.config.model_config import load_all_model_configs
from sie_evals_tests.conftest import REPO_ROOT

KEY = "all-MiniLM-L6-v2:finesse/rss-default:local"


@pytest.fixture
def finesse_configs(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    src = REPO_ROOT / "model_configs" / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    data = YAML(typ="safe", pure=True).load(src.read_text())
    data["tasks"] = ["beir/SciFact", "finesse/rss-default"]
    data["sources"] = ["local"]
    shutil.copy(REPO_ROOT / "model_configs" / "model_config.schema.json", folder)
    yaml = YAML()
    with open(folder / src.name, "w") as fh:
        yaml.dump(data, fh)
    return folder, data


def _write_target(folder, data, value):
    data["targets"] = {
        "finesse/rss-default": {
            "default": {
                "probes": {"source": "local", "saved": "2026-01-01T00:00:00Z", "metrics": {"average_rss": value}}
            }
        }
    }
    (path,) = folder.glob("*.yaml")
    with open(path, "w") as fh:
        YAML().dump(data, fh)


def test_partitions_split_finesse_from_evals(finesse_configs):
    configs = load_all_model_configs(finesse_configs[0])
    assert [str(k) for k in finesse_keys(configs)] == [KEY]
    assert all(k.task != "finesse/rss-default" for k in eval_keys(configs))


def test_materialize_and_drift_check(finesse_configs, tmp_path):
    folder, data = finesse_configs
    resources = {
        "settings": EvalSettings(model_configs_dir=str(folder), results_dir=str(tmp_path / "results"), threads=1),
        "json_io": JsonIOManager(base_dir=str(tmp_path / "io")),
    }
    run_config = {
        "ops": {"finesse_embeddings": {"config": {"samples_per_length": 2, "min_length": 4, "max_length": 5}}}
    }
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, folder)  # the declared cells, as the sync sensor makes them
    _write_target(folder, data, 1e6)  # unreachable target: the blocking check must fail
    res = dg.materialize(
        [finesse_embeddings, finesse_scores, finesse_rss_vs_target, finesse_rss_vs_measurement],
        partition_key=KEY,
        instance=instance,
        resources=resources,
        run_config=run_config,
        raise_on_error=False,
    )
    mat = instance.get_latest_materialization_event(dg.AssetKey("finesse_scores")).asset_materialization
    rss = mat.metadata["average_rss"].value
    assert mat.partition == KEY and set(mat.metadata) >= {"rss_L4", "rss_L5", "complete"}
    checks = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
    assert checks["finesse_rss_vs_target"] is False
    assert checks["finesse_rss_vs_measurement"] is True  # nothing saved: passes as "no target"

    _write_target(folder, data, rss)  # deterministic probes: the same run meets its own target
    res = dg.materialize(
        [finesse_embeddings, finesse_scores, finesse_rss_vs_target],
        partition_key=KEY,
        instance=instance,
        resources=resources,
        run_config=run_config,
    )
    assert {e.check_name: e.passed for e in res.get_asset_check_evaluations()} == {"finesse_rss_vs_target": True}
    again = instance.get_latest_materialization_event(dg.AssetKey("finesse_scores")).asset_materialization
    assert again.metadata["average_rss"].value == rss


def test_srs_task_materializes_with_its_own_main_score(finesse_configs, tmp_path):
    """finesse/srs-default: the same assets score SRS (average_srs, average_pbi, per-length means), and the drift
    checks gate the task's own main score, average_srs."""
    folder, data = finesse_configs
    data["tasks"] = ["finesse/srs-default"]
    srs_key = "all-MiniLM-L6-v2:finesse/srs-default:local"
    data["targets"] = {
        "finesse/srs-default": {
            "default": {"probes": {"source": "local", "saved": "2026-01-01T00:00:00Z", "metrics": {"average_srs": 1e6}}}
        }
    }
    (path,) = folder.glob("*.yaml")
    with open(path, "w") as fh:
        YAML().dump(data, fh)
    assert [str(k) for k in finesse_keys(load_all_model_configs(folder))] == [srs_key]
    resources = {
        "settings": EvalSettings(model_configs_dir=str(folder), results_dir=str(tmp_path / "results"), threads=1),
        "json_io": JsonIOManager(base_dir=str(tmp_path / "io")),
    }
    run_config = {
        "ops": {
            "finesse_embeddings": {
                "config": {"samples_per_length": 1, "min_length": 4, "max_length": 4, "group_amount": 2}
            }
        }
    }
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, folder)  # the declared cells, as the sync sensor makes them
    res = dg.materialize(
        [finesse_embeddings, finesse_scores, finesse_rss_vs_target],
        partition_key=srs_key,
        instance=instance,
        resources=resources,
        run_config=run_config,
        raise_on_error=False,
    )
    mat = instance.get_latest_materialization_event(dg.AssetKey("finesse_scores")).asset_materialization
    assert {"average_srs", "average_pbi", "srs_L4", "sampler"} <= set(mat.metadata)
    assert mat.metadata["sampler"].value == "sie-evals"
    evaluation = {e.check_name: e for e in res.get_asset_check_evaluations()}["finesse_rss_vs_target"]
    assert evaluation.passed is False and "average_srs" in str(evaluation.metadata)
