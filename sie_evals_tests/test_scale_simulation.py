"""The scale model against the real scheduler: a job of the sharded eval's shape (plan_shards -> one
embed_shard step per shard with the gpu queue's tags and pool -> merge -> scores, the cpu steps with the
cpu queue's tags), whose steps sleep known durations, runs on the project's multiprocess executor
(defs/executors.py) on a temporary instance with the concurrency block of the repo's dagster.yaml. The
gpu and cpu queues are bounded as a Celery fleet bounds them (N worker processes per queue), here by the
executor's tag concurrency limits on the queue tag. The fleet model's scheduler (lib/scale/schedule.py)
must predict the measured wall time within TOLERANCE, and reject the predictions of a fleet whose gpu
limit were ignored or one slot."""

import statistics
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from sie_evals.defs.executors import (
    CELERY_QUEUE_TAG,
    CPU_QUEUE,
    CPU_STEP_TAGS,
    GPU_QUEUE,
    GPU_STEP_TAGS,
    executor_from_env,
)
from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.engines.sharding import plan_shards as real_plan_shards
from sie_evals.lib.scale.schedule import Step, max_overlap, simulate

REPO = Path(__file__).resolve().parents[1]
# The fake cell: 200 documents + 20 queries in shards of 50 texts (whole 10-text chunks): 5 shard steps.
SIZES = {EmbedKind.query: 20, EmbedKind.document: 200}
SHARD_SIZE, CHUNK = 50, 10
SLEEP = {"plan_shards": 0.2, "embed_shard": 2.0, "merge_shards": 0.5, "scores": 1.0}
GPU_WORKERS, CPU_WORKERS = 2, 1
TOLERANCE = 0.20  # |measured - predicted| / predicted; the wrong limits below are off by more than 1.5x


def _nap(step: str) -> None:
    time.sleep(SLEEP[step])


@dg.op(out=dg.DynamicOut(dict), tags=CPU_STEP_TAGS)
def plan_shards():
    _nap("plan_shards")
    for shard in real_plan_shards(SIZES, SHARD_SIZE, CHUNK):
        yield dg.DynamicOutput(shard.as_dict(), mapping_key=shard.name)


@dg.op(tags=GPU_STEP_TAGS, pool="gpu")
def embed_shard(shard: dict) -> int:
    _nap("embed_shard")
    return shard["index"]


@dg.op(tags=CPU_STEP_TAGS)
def merge_shards(reports: list[int]) -> int:
    _nap("merge_shards")
    return len(reports)


@dg.op(tags=CPU_STEP_TAGS)
def scores(merged: int) -> int:
    _nap("scores")
    return merged


@dg.job(executor_def=executor_from_env({"SIE_EVALS_EXECUTOR": "multiprocess"}))
def fake_sharded_eval():
    scores(merge_shards(plan_shards().map(embed_shard).collect()))


def _template_concurrency() -> dict:
    return yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))["concurrency"]


def _run_config(gpu: int, cpu: int) -> dict:
    limits = [{"key": CELERY_QUEUE_TAG, "value": q, "limit": n} for q, n in ((GPU_QUEUE, gpu), (CPU_QUEUE, cpu))]
    return {"execution": {"config": {"max_concurrent": gpu + cpu, "tag_concurrency_limits": limits}}}


def _spans(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """Per step: from the executor launching its process to its success (the time it held a slot)."""
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        if ev is None or not ev.step_key:
            continue
        if ev.event_type_value == "STEP_WORKER_STARTING":
            start[ev.step_key] = rec.timestamp
        elif ev.event_type_value == "STEP_SUCCESS":
            end[ev.step_key] = rec.timestamp
    return {k: (start[k], end[k]) for k in start}


def _model_steps(overhead_s: float, n_shards: int) -> list[Step]:
    shard_keys = [f"embed_shard[{i}]" for i in range(n_shards)]
    return [
        Step("plan_shards", "cpu", SLEEP["plan_shards"] + overhead_s),
        *(Step(k, "gpu", SLEEP["embed_shard"] + overhead_s, ("plan_shards",)) for k in shard_keys),
        Step("merge_shards", "cpu", SLEEP["merge_shards"] + overhead_s, tuple(shard_keys)),
        Step("scores", "cpu", SLEEP["scores"] + overhead_s, ("merge_shards",)),
    ]


@pytest.mark.slow
def test_fleet_model_predicts_the_multiprocess_executor_with_queue_limits(tmp_path):
    n_shards = len(real_plan_shards(SIZES, SHARD_SIZE, CHUNK))
    assert n_shards == 5  # 220 texts in 50-text shards of whole 10-text chunks, queries in the first
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides={"concurrency": _template_concurrency()}) as instance:
        result = dg.execute_job(
            dg.reconstructable(fake_sharded_eval),
            instance=instance,
            run_config=_run_config(GPU_WORKERS, CPU_WORKERS),
        )
        assert result.success
        spans = _spans(instance, result.run_id)
    assert len(spans) == n_shards + 3
    gpu = [v for k, v in spans.items() if k.startswith("embed_shard")]
    cpu = [v for k, v in spans.items() if not k.startswith("embed_shard")]
    # what the queues allowed: never more gpu steps at once than gpu workers, and that many at times
    assert max_overlap(gpu) == GPU_WORKERS
    assert max_overlap(cpu) <= CPU_WORKERS
    measured = max(b for _, b in spans.values()) - min(a for a, _ in spans.values())
    # one per-step overhead (process start, Dagster's step bookkeeping), the median over the run's steps
    overhead = statistics.median(b - a - SLEEP[k.split("[")[0]] for k, (a, b) in spans.items())
    steps = _model_steps(overhead, n_shards)

    def predicted(gpu_slots: int) -> float:
        return simulate(steps, {"gpu": gpu_slots, "cpu": CPU_WORKERS}, max_concurrent=gpu_slots + CPU_WORKERS).wall_s

    right = predicted(GPU_WORKERS)
    print(
        f"measured {measured:.2f} s, overhead {overhead:.2f} s/step, predicted {right:.2f} s, "
        f"ignored limit {predicted(n_shards):.2f} s, one slot {predicted(1):.2f} s"
    )
    assert abs(measured - right) / right <= TOLERANCE
    for wrong in (n_shards, 1):  # the gpu limit ignored, or one gpu: the model must tell them apart
        assert abs(measured - predicted(wrong)) / predicted(wrong) > TOLERANCE
