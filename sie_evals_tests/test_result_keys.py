"""ResultKey, the run-conditions diff and legacy configs: pure, fast, no model."""

import shutil

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.config.model_config import load_model_config
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.gates.conditions import diagnosis, diff_conditions
from sie_evals.lib.gates.keys import LoadShape, ResultKey, ResultKind, hardware_fingerprint
from sie_evals.lib.gates.saved_results import find_history, find_target

CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
HW = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_count": 2, "gpus": [], "host": "a"}
GPU_HW = {"cpu": "AMD EPYC 7B13", "cpu_count": 16, "gpus": ["NVIDIA H200", "NVIDIA H200"], "host": "b"}
LOAD = LoadShape("corpus", 1, 16)


def perf_key(engine="local", hw=HW, subset=None):
    return ResultKey.perf("all-MiniLM-L6-v2", "beir/SciFact", "test", subset, "default", engine, LOAD, hw)


def test_quality_keys_are_engine_independent_perf_keys_are_not():
    q = ResultKey.quality("m", "beir/SciFact", "test", {"limit_queries": 50, "corpus_size": 1000})
    assert q.variant == "test@q50-c1000" and q.engine is None and not q.is_partition_default
    assert ResultKey.quality("m", "mteb/STSBenchmark", "test", {"limit": 20}).variant == "test@n20"
    assert ResultKey.quality("m", "beir/SciFact", "test").is_partition_default
    assert perf_key().variant == "perf@corpus-b1-c16/test/local/intel-r-xeon-r-processorx2"
    assert perf_key("sie") != perf_key("local") and perf_key(hw=GPU_HW) != perf_key()
    assert hardware_fingerprint(GPU_HW) == "amd-epyc-7b13x16+nvidia-h200x2"
    assert hardware_fingerprint({**HW, "host": "elsewhere"}) == hardware_fingerprint(HW)  # host is not hardware
    # the data slice is part of a perf key too
    assert perf_key(subset={"limit_queries": 5, "corpus_size": 50}).variant.startswith(
        "perf@corpus-b1-c16/test@q5-c50/"
    )
    for key in (q, perf_key(), ResultKey.finesse("m", "finesse/rss-default")):
        assert ResultKey.from_dict(key.as_dict()) == key
    with pytest.raises(ValueError):
        ResultKey("m", "beir/SciFact", "test", engine="local")  # quality keys carry no engine


@pytest.mark.parametrize("bad", ["../../x", "..", "a/b", "", "x y", ".hidden"])
def test_split_and_profile_names_are_validated(bad):
    with pytest.raises(InputError, match="is not a valid name"):
        ResultKey.quality("m", "beir/SciFact", bad)
    with pytest.raises(InputError, match="is not a valid name"):
        ResultKey.quality("m", "beir/SciFact", "test", profile=bad)


def test_diff_names_what_changed_and_ignores_what_one_side_did_not_record():
    before = {
        "software": {"transformers": "5.23.0", "torch": "2.13.0"},
        "profile_settings": {"max_seq_length": 256, "pooling": "mean"},
        "hardware": {"cpu": "x", "cpu_count": 2, "gpus": []},
        "dataset_hash": "aaa",
    }
    after = {
        "software": {"transformers": "5.24.0", "torch": "2.13.0", "tokenizers": "0.22"},
        "profile_settings": {"max_seq_length": 32, "pooling": "mean"},
        "hardware": {"cpu": "x", "cpu_count": 2, "gpus": []},
        "dataset_hash": "aaa",
        "weights_hash": "new",
    }
    changes = diff_conditions(before, after)
    assert [str(c) for c in changes] == ["transformers 5.23.0 -> 5.24.0", "max_seq_length 256 -> 32"]
    line = diagnosis([{"metric": "ndcg_at_10", "value": 0.6102, "reference": 0.6451}], changes, "target x")
    assert line.startswith("ndcg_at_10 0.6451 -> 0.6102 (-5.4%); changed since last pass: transformers 5.23.0 -> ")
    same = diagnosis([{"metric": "ndcg_at_10", "value": 0.5, "reference": 0.6}], [], "target x")
    assert "nothing recorded changed since last pass" in same
    assert diff_conditions(before, before) == [] and diff_conditions({}, after) == []
    # batch size and concurrency matter for perf only
    assert diff_conditions({"batch_size": 1}, {"batch_size": 4}) == []
    assert [c.field for c in diff_conditions({"batch_size": 1}, {"batch_size": 4}, perf=True)] == ["batch size"]


OLD_PERF_ENTRY = {
    "source": "local",
    "saved": "2026-11-01T00:00:00+00:00",
    "metrics": {"latency_p50_ms": 10.0, "items_per_s": 100.0},
    "conditions": {"engine": "local", "hardware": HW, "split": "test", "subset": None},
}


@pytest.fixture
def old_config(configs_dir):
    """A config written before perf keys named engine and hardware (variant `perf@corpus-b1-c16`)."""
    path = configs_dir / CONFIG_NAME
    yaml = YAML()
    tree = yaml.load(path.read_text())
    tree["targets"]["beir/SciFact"]["default"]["perf@corpus-b1-c16"] = dict(OLD_PERF_ENTRY)
    tree["measurements"] = {
        "beir/SciFact": {
            "default": {
                "perf@corpus-b1-c16": [
                    {**OLD_PERF_ENTRY, "id": "m1"},
                    {**OLD_PERF_ENTRY, "id": "m2", "conditions": {**OLD_PERF_ENTRY["conditions"], "engine": "sie"}},
                    {**OLD_PERF_ENTRY, "id": "m3", "conditions": {}},  # too little recorded to re-key
                ]
            }
        }
    }
    with open(path, "w") as fh:
        yaml.dump(tree, fh)
    return path


def test_old_format_perf_results_are_read_per_engine_and_migrated_losslessly(old_config):
    config = load_model_config(old_config)
    # read compatibly: the legacy target applies to the engine and machine it was measured on only
    assert find_target(config, perf_key()).metrics["latency_p50_ms"] == 10.0
    assert find_target(config, perf_key("sie")) is None and find_target(config, perf_key(hw=GPU_HW)) is None
    assert [m.id for m in find_history(config, perf_key())] == ["m1"]
    assert [m.id for m in find_history(config, perf_key("sie"))] == ["m2"]

    backup = old_config.with_suffix(".bak")
    shutil.copy(old_config, backup)
    res = CliRunner().invoke(app, ["migrate", str(old_config)])
    assert res.exit_code == 0, res.output
    assert "3 entries moved" in res.output
    migrated = load_model_config(old_config)
    saved = migrated.measurements["beir/SciFact"]["default"]
    assert [m.id for m in saved[perf_key().variant]] == ["m1"]
    assert [m.id for m in saved[perf_key("sie").variant]] == ["m2"]
    assert [m.id for m in saved["perf@corpus-b1-c16"]] == ["m3"]  # kept where it was, never dropped
    assert "perf@corpus-b1-c16" not in migrated.targets["beir/SciFact"]["default"]
    assert migrated.targets["beir/SciFact"]["default"][perf_key().variant].metrics == OLD_PERF_ENTRY["metrics"]
    # the shipped quality targets are untouched
    assert (
        migrated.targets["beir/SciFact"]["default"]["test"]
        == load_model_config(backup).targets["beir/SciFact"]["default"]["test"]
    )
    # same lookups after migration; a second migrate moves nothing
    assert find_target(migrated, perf_key()).metrics["latency_p50_ms"] == 10.0
    assert [m.id for m in find_history(migrated, perf_key("sie"))] == ["m2"]
    assert "0 entries moved" in CliRunner().invoke(app, ["migrate", str(old_config)]).output
    assert ResultKind.perf.value == "perf"


def test_shipped_targets_cover_every_task_with_provenance():
    from sie_evals_tests.conftest import REPO_ROOT

    config = load_model_config(REPO_ROOT / "model_configs" / CONFIG_NAME)
    for task in config.tasks:
        if task.startswith("finesse/"):
            continue  # Finesse targets are saved from the finesse CLI (finesse gate --save-target)
        target = config.target(task, "default", "test")
        assert target is not None and target.source == "benchmark", task
        published = target.conditions["published"]
        assert published["repository"] == "embeddings-benchmark/results" and published["commit"], task
        assert target.conditions["profile_settings"]["max_seq_length"] == 256
