"""Dagster definitions, partitions generated from configs, and real materializations."""

import json
import subprocess
import sys

import dagster as dg
import pytest

from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
from sie_evals.defs.evals.partitions import eval_key, eval_keys, partition_key, sync_partitions
from sie_evals.defs.evals.profile_partitions import partition_profiles
from sie_evals.defs.evals.recording import record_report
from sie_evals.lib.config.model_config import load_all_model_configs
from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.core.sources import COMPUTE_SOURCES
from sie_evals.lib.gates.keys import EvalKey
from sie_evals_tests.conftest import REPO_ROOT

KEY = "all-MiniLM-L6-v2:beir/SciFact:local"
PKEY = KEY  # its Dagster partition: the cell itself
ALL = [task_dataset, embeddings, quality_scores]


def test_definitions_load():
    from sie_evals.definitions import defs

    d = defs()
    dg.Definitions.validate_loadable(d)
    assert {k.to_user_string() for k in d.resolve_asset_graph().get_all_asset_keys()} >= {
        "task_dataset",
        "embeddings",
        "quality_scores",
    }


def test_partitions_come_from_model_configs(configs_dir):
    before = [str(k) for k in eval_keys(load_all_model_configs(configs_dir))]
    assert KEY in before and "all-MiniLM-L6-v2:mteb/STSBenchmark:local" in before
    cfg = configs_dir / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    cfg.write_text(cfg.read_text().replace("  - beir/SciFact", "  - beir/SciFact\n  - mteb/NFCorpus"))
    configs = load_all_model_configs(configs_dir)
    keys = eval_keys(configs)
    added = sorted(set(map(str, keys)) - set(before))
    # one key per compute source of the config; an alias resolves to the canonical task id
    minilm = next(c for c in configs if c.short_name == "all-MiniLM-L6-v2")
    expected = [f"all-MiniLM-L6-v2:beir/NFCorpus:{s}" for s in minilm.sources if s in COMPUTE_SOURCES]
    # plus one local key per output profile (multivector, muvera) of a retrieval task: model@profile
    expected = sorted(expected + [f"all-MiniLM-L6-v2@{p}:beir/NFCorpus:local" for p in partition_profiles(minilm)])
    assert added == expected and "all-MiniLM-L6-v2:beir/NFCorpus:local" in added


def test_partition_keys_are_the_cells():
    """One mapping each way between EvalKey and partition key: the key itself, model[@profile]:task:source."""
    key = EvalKey.parse(KEY)
    assert partition_key(key) == PKEY and eval_key(PKEY) == key
    profile_key = EvalKey("all-MiniLM-L6-v2@multivector", "beir/SciFact", "local")
    assert partition_key(profile_key) == "all-MiniLM-L6-v2@multivector:beir/SciFact:local"
    assert eval_key(partition_key(profile_key)) == profile_key
    for bad in ("beir/SciFact", "all-MiniLM-L6-v2:local|beir/SciFact", "a:b", ""):
        with pytest.raises(ValueError):
            eval_key(bad)


def test_reserved_partition_characters_are_a_clear_config_error(configs_dir):
    minilm = next(c for c in load_all_model_configs(configs_dir) if c.short_name == "all-MiniLM-L6-v2")
    broken = minilm.model_copy(update={"sources": [*minilm.sources, "local|x"]})
    with pytest.raises(ConfigError, match=r"all-MiniLM-L6-v2.*'local\|x'.*'\|'"):
        eval_keys([broken])


def test_key_format_round_trips():
    k = EvalKey.parse(KEY)
    assert (k.model, k.task, k.source) == ("all-MiniLM-L6-v2", "beir/SciFact", "local") and str(k) == KEY
    with pytest.raises(ValueError):
        EvalKey.parse("a:b")


@pytest.fixture
def resources(eval_resources):
    return eval_resources()


def test_materialize_one_partition_in_process(resources):
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance)
    ds = dg.materialize(ALL, selection=[task_dataset], partition_key=PKEY, instance=instance, resources=resources)
    assert ds.success
    res = dg.materialize(
        ALL, selection=[embeddings, quality_scores], partition_key=PKEY, instance=instance, resources=resources
    )
    assert res.success
    scores = res.output_for_node("quality_scores")
    assert scores["key"] == KEY and scores["dataset"]["counts"]["queries"] == 20
    mat = instance.get_latest_materialization_event(dg.AssetKey("quality_scores")).asset_materialization
    assert mat.partition == PKEY
    assert mat.metadata["ndcg_at_10"].value == scores["metrics"]["ndcg_at_10"]

    # Rematerializing scores alone reuses the stored embeddings: no engine runs.
    again = dg.materialize(ALL, selection=[quality_scores], partition_key=PKEY, instance=instance, resources=resources)
    assert again.success and again.output_for_node("quality_scores")["metrics"] == scores["metrics"]


def test_cli_and_asset_agree_and_cli_run_is_recorded(resources, tmp_path):
    """Same library code: the CLI's numbers equal the asset's on the same slice; a slice is not
    recorded onto the full-split partition."""
    from typer.testing import CliRunner

    from sie_evals.cli import app

    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance)
    dg.materialize(ALL, selection=[task_dataset], partition_key=PKEY, instance=instance, resources=resources)
    asset_scores = dg.materialize(
        ALL, selection=[embeddings, quality_scores], partition_key=PKEY, instance=instance, resources=resources
    ).output_for_node("quality_scores")["metrics"]
    out = tmp_path / "cli.json"
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "all-MiniLM-L6-v2",
            "-t",
            "beir/SciFact",
            "--limit-queries",
            "20",
            "--corpus-size",
            "200",
            "--no-progress",
            "--no-record",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["sources"]["local"]["metrics"] == asset_scores

    from sie_evals.lib.config.model_config import find_model_config
    from sie_evals.lib.gates.keys import ResultKey

    # a 20-query slice is not what the full-split partition stands for: it is not recorded
    slice_key = ResultKey.from_dict(report["sources"]["local"]["result_key"])
    with dg.instance_for_test() as persistent:
        recorded, skipped = record_report(
            find_model_config("all-MiniLM-L6-v2"), report, {"local": slice_key}, persistent
        )
        assert recorded == [] and "test@q20-c200" in skipped[0] and KEY in skipped[0]
        assert persistent.get_latest_materialization_event(dg.AssetKey("quality_scores")) is None


def test_cli_perf_run_records_on_perf_scores_and_slices_are_not_recorded(tmp_path, monkeypatch):
    """With DAGSTER_HOME set, a full-split perf run lands on perf_scores (never quality_scores); a
    --limit-queries run does not touch the full partition."""
    from typer.testing import CliRunner

    from sie_evals.cli import app

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    sts = "all-MiniLM-L6-v2:mteb/STSBenchmark:local"
    perf = ["--type", "perf", "-c", "1", "-b", "2", "--requests", "4", "--warmup", "1", "--trials", "1"]
    base = ["eval", "all-MiniLM-L6-v2", "-t", "mteb/STSBenchmark", "-s", "local", "--no-progress"]
    res = CliRunner().invoke(app, [*base, *perf])
    assert res.exit_code == 0, res.output
    assert f"perf_scores[{sts}]" in " ".join(res.output.split())
    sliced = CliRunner().invoke(app, [*base, "--limit-queries", "10"])
    assert sliced.exit_code == 0, sliced.output
    assert "not recorded in Dagster" in sliced.output
    with dg.DagsterInstance.get() as instance:
        perf_event = instance.get_latest_materialization_event(dg.AssetKey("perf_scores"))
        assert perf_event is not None and eval_key(perf_event.asset_materialization.partition) == EvalKey.parse(sts)
        metadata = perf_event.asset_materialization.metadata
        assert metadata["latency_p50_ms"].value > 0 and metadata["result_key"].value["engine"] == "local"
        assert instance.get_latest_materialization_event(dg.AssetKey("quality_scores")) is None


@pytest.mark.slow
def test_dagster_cli_validate_and_materialize(tmp_path, session_cache, monkeypatch):
    env_home = tmp_path / "dagster_home"
    env_home.mkdir()
    (env_home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    import os

    env = {**os.environ, "DAGSTER_HOME": str(env_home)}
    dagster = [sys.executable, "-m", "dagster"]
    res = subprocess.run(
        [*dagster, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    config = json.dumps(
        {
            "resources": {
                "settings": {
                    "config": {
                        "limit_queries": 10,
                        "corpus_size": 100,
                        "results_dir": str(tmp_path / "results"),
                        "cache_dir": str(session_cache),
                    }
                },
                "json_io": {"config": {"base_dir": str(tmp_path / "io")}},
                "io_manager": {"config": {"base_dir": str(tmp_path / "io")}},
            }
        }
    )
    monkeypatch.setenv("DAGSTER_HOME", str(env_home))  # dagster.yaml reads its storage dir from it
    with dg.DagsterInstance.from_config(str(env_home)) as instance:
        sync_partitions(instance)  # what the eval_cells_sync sensor does on its first tick
    for select, partition in (("task_dataset", PKEY), ("embeddings,quality_scores", PKEY)):
        res = subprocess.run(
            [
                *dagster,
                "asset",
                "materialize",
                "-m",
                "sie_evals.definitions",
                "--select",
                select,
                "--partition",
                partition,
                "--config-json",
                config,
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(env_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("quality_scores"))
        assert event.asset_materialization.partition == PKEY


def test_non_retrieval_task_is_a_partition_too(resources):
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance)
    sts_key = "all-MiniLM-L6-v2:mteb/STSBenchmark:local"
    assert dg.materialize(
        ALL, selection=[task_dataset], partition_key=sts_key, instance=instance, resources=resources
    ).success
    res = dg.materialize(
        ALL, selection=[embeddings, quality_scores], partition_key=sts_key, instance=instance, resources=resources
    )
    assert res.success
    scores = res.output_for_node("quality_scores")
    assert scores["main_score"] == "cosine_spearman" and 0 < scores["metrics"]["cosine_spearman"] <= 1
    mat = instance.get_latest_materialization_event(dg.AssetKey("quality_scores")).asset_materialization
    assert mat.partition == sts_key and "cosine_spearman" in mat.metadata
