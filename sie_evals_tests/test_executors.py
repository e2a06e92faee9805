"""$SIE_EVALS_EXECUTOR picks the eval jobs' executor in one place (defs/executors.py); steps carry
the queue of what they need; the broker URL (a secret: it may hold a password) is never in the job."""

import json

import dagster as dg
import pytest
from dagster._serdes import serialize_value
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

from sie_evals.defs.executors import celery_app_args, celery_config, executor_from_env, missing_requirements
from sie_evals.lib.core.errors import ConfigError

SECRET_BROKER = "redis://:s3cret-pw@10.0.0.5:6379/0"


def asset_job(monkeypatch, **env) -> dg.JobDefinition:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from sie_evals.definitions import defs

    return defs().resolve_implicit_global_asset_job_def()


def test_default_is_in_process(monkeypatch):
    monkeypatch.delenv("SIE_EVALS_EXECUTOR", raising=False)
    assert executor_from_env() is dg.in_process_executor
    assert executor_from_env({"SIE_EVALS_EXECUTOR": "multiprocess"}) is dg.multiprocess_executor


@pytest.mark.parametrize("env", [{"SIE_EVALS_EXECUTOR": "celry"}, {"SIE_EVALS_EXECUTOR": "celery"}])
def test_bad_choice_is_a_config_error_naming_the_variable(env):
    with pytest.raises(ConfigError) as err:
        executor_from_env(env)
    assert err.value.exit_code == 2
    want = "SIE_EVALS_CELERY_BROKER" if env["SIE_EVALS_EXECUTOR"] == "celery" else "'celry': unknown executor"
    assert "$SIE_EVALS_EXECUTOR" in str(err.value) and want in str(err.value)


def test_celery_job_routes_steps_by_queue_and_never_holds_the_broker_url(monkeypatch):
    job = asset_job(monkeypatch, SIE_EVALS_EXECUTOR="celery", SIE_EVALS_CELERY_BROKER=SECRET_BROKER)
    assert job.executor_def.name == "celery"

    def tags(name: str) -> dict:  # "graph.op": an op of a graph-backed asset (embeddings' shard steps)
        node = job.graph.node_named(name.split(".")[0])
        return (node.definition.node_named(name.split(".")[1]) if "." in name else node).definition.tags

    embedding_ops = ("embeddings.plan_shards", "embeddings.embed_shard", "embeddings.merge_shards")
    queues = {
        name: tags(name).get(DAGSTER_CELERY_QUEUE_TAG)
        for name in (
            "task_dataset",
            *embedding_ops,
            "quality_scores",
            "perf_scores",
            "target_comparison",
            "eval_report",
            "finesse_embeddings",
            "finesse_scores",
        )
    }
    assert queues == {
        "task_dataset": "cpu",
        "embeddings.plan_shards": "cpu",
        "embeddings.embed_shard": "gpu",
        "embeddings.merge_shards": "cpu",
        "quality_scores": "cpu",
        "perf_scores": "gpu",
        "target_comparison": "cpu",
        "eval_report": "cpu",
        "finesse_embeddings": "gpu",
        "finesse_scores": "cpu",
    }
    gpu_k8s = json.loads(tags("embeddings.embed_shard")["dagster-k8s/config"])
    assert gpu_k8s["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    # The executor's config names the variable; the URL itself is read when a run starts.
    assert celery_config({"SIE_EVALS_CELERY_BROKER": SECRET_BROKER})["broker"] == {"env": "SIE_EVALS_CELERY_BROKER"}
    assert "s3cret" not in serialize_value(job.get_job_snapshot())


def test_worker_app_uses_the_runs_broker_and_late_acks():
    args = celery_app_args({"SIE_EVALS_CELERY_BROKER": SECRET_BROKER})
    assert args["broker"] == args["backend"] == SECRET_BROKER
    cfg = vars(args["config_source"])
    assert cfg["task_acks_late"] and cfg["task_reject_on_worker_lost"] and cfg["task_default_queue"] == "cpu"


def test_missing_requirements_names_each():
    assert missing_requirements("") == []
    assert missing_requirements("json, sie_evals_no_such_package") == ["the Python package 'sie_evals_no_such_package'"]
