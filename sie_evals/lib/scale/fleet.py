"""The fleet model: eval cells (model x task) on a fleet (GPU workers, CPU workers, shared artifact
storage) under the instance's settings (shard size, run and pool limits) become the steps the sharded
eval runs (task_dataset -> plan_shards -> embed_shard per shard on the gpu queue -> merge_shards ->
scores), with durations from per-step costs; the list scheduler (schedule.py) packs them and gives
the wall time, busy time per resource and the bottleneck.

Shard counts come from the sharded eval's own plan (lib/engines/sharding.plan_shards). Costs measured on
the 2-vCPU machine are in `StepCosts`; GPU throughputs are assumptions (`ModelClass.source` says which)."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.engines.sharding import plan_shards
from sie_evals.lib.scale.schedule import Schedule, Step, simulate

GPU, CPU = "gpu", "cpu"


@dataclass(frozen=True)
class ModelClass:
    name: str
    tokens_per_s: float  # one GPU, the whole forward pass (dynamic batching, long runs)
    dims: int
    load_s: float  # weights into the GPU at the start of every embedding step
    source: str  # where the figures come from: "measured here" or the assumption and its citation


@dataclass(frozen=True)
class Task:
    name: str
    docs: int  # texts embedded besides the queries (a non-retrieval task: all its texts)
    queries: int = 0  # 0: nothing to search
    doc_tokens: float = 100.0
    query_tokens: float = 12.0


@dataclass(frozen=True)
class Fleet:
    gpus: int  # GPU workers on the `gpu` queue, one per GPU (--concurrency 1)
    cpu_workers: int  # worker processes on the `cpu` queue
    cpu_speedup: float = 1.0  # one CPU worker's exact-search speed over the measured 2-vCPU machine
    storage_mb_s: float = 1000.0  # aggregate bandwidth of the shared artifact store


@dataclass(frozen=True)
class Settings:
    shard_size: int = 100_000  # settings.shard_size
    chunk_size: int = 2048  # the embedding cache's chunk (a shard is whole chunks)
    max_concurrent_runs: int = 4  # dagster.yaml concurrency.runs.max_concurrent_runs
    gpu_pool_limit: int = 1  # dagster.yaml concurrency.pools.default_limit (the `gpu` pool)
    pool_granularity: Literal["run", "op"] = "run"  # dagster.yaml concurrency.pools.granularity


@dataclass(frozen=True)
class StepCosts:
    """Per-step costs (bench_scale_costs.py measures them on this machine)."""

    step_start_s: float  # a Dagster step in a fresh process, trivial body, start to success
    run_start_s: float  # a run's launch before its first step (process or pod start)
    store_mb_s: float  # one worker writing plus reading back vectors (cache chunks, npy)
    merge_s_per_mvec: float  # merge_shards: a million 384-dim vectors read back through the cache
    search_s_per_gqd: float  # exact search, seconds per 1e9 query x document pairs at 384 dims
    score_s_per_kq: float  # run building + scoring, per 1,000 queries (top 1000 each)


@dataclass(frozen=True)
class Cell:
    model: ModelClass
    task: Task
    cached: bool = False  # the embedding cache holds every chunk: shard steps only read vectors back


@dataclass(frozen=True)
class Prediction:
    schedule: Schedule
    storage_bytes: float
    bounds: dict[str, float]  # the least wall time each resource alone allows: busy / slots
    runs_waited: bool  # some run queued behind max_concurrent_runs or a run-granularity gpu pool

    @property
    def wall_s(self) -> float:
        """The schedule's, or the store's aggregate bandwidth if that is longer (steps move vectors at one
        worker's measured rate; the store as a whole may not keep up with all of them)."""
        return max(self.schedule.wall_s, self.bounds["storage"])

    @property
    def bottleneck(self) -> str:
        """The resource whose busy time sets the wall time (within 1.5x); else the run limits, where runs
        waited; else the critical path (one cell's chain of steps: starts, model loads, merge, search)."""
        resource = max(self.bounds, key=lambda k: self.bounds[k])
        if self.bounds[resource] * 1.5 >= self.wall_s:
            return resource
        return "run limits" if self.runs_waited else "critical path"


def shard_rows(task: Task, settings: Settings) -> list[tuple[int, int]]:
    """(documents, queries) in each shard, as the sharded eval plans them (queries first)."""
    sizes = {EmbedKind.query: task.queries, EmbedKind.document: task.docs}
    shards = plan_shards(sizes, settings.shard_size, settings.chunk_size)
    return [
        (
            sum(p.stop - p.start for p in s.pieces if p.kind == EmbedKind.document),
            sum(p.stop - p.start for p in s.pieces if p.kind == EmbedKind.query),
        )
        for s in shards
    ]


def cell_steps(cell: Cell, fleet: Fleet, settings: Settings, costs: StepCosts, run: str) -> list[Step]:
    """The steps of one cell's run, keyed `<run>/<step>`."""
    m, t, o = cell.model, cell.task, costs.step_start_s
    vec_mb = m.dims * 4 / 1e6  # one float32 vector

    def k(name: str) -> str:
        return f"{run}/{name}"

    steps = [
        Step(k("task_dataset"), CPU, costs.run_start_s + o, run=run),
        Step(k("plan"), CPU, o, (k("task_dataset"),), run),
    ]
    shard_keys = []
    for i, (docs, queries) in enumerate(shard_rows(t, settings)):
        embed_s = 0.0 if cell.cached else m.load_s + (docs * t.doc_tokens + queries * t.query_tokens) / m.tokens_per_s
        store_s = (docs + queries) * vec_mb / costs.store_mb_s
        shard_keys.append(k(f"embed_shard[{i}]"))
        steps.append(Step(shard_keys[-1], GPU, o + embed_s + store_s, (k("plan"),), run))
    rows = t.docs + t.queries
    merge_s = o + rows / 1e6 * costs.merge_s_per_mvec * m.dims / 384 + rows * vec_mb / costs.store_mb_s
    steps.append(Step(k("merge"), CPU, merge_s, tuple(shard_keys), run))
    search = t.queries * t.docs / 1e9 * costs.search_s_per_gqd * m.dims / 384 / fleet.cpu_speedup
    score = o + search + t.queries / 1000 * costs.score_s_per_kq
    steps.append(Step(k("scores"), CPU, score, (k("merge"),), run))
    return steps


def storage_bytes(cell: Cell) -> float:
    """Vector bytes through the shared store: shards write (unless cached), the merge reads and writes,
    the search reads."""
    return (3 if cell.cached else 4) * (cell.task.docs + cell.task.queries) * cell.model.dims * 4


def predict(cells: Sequence[Cell], fleet: Fleet, settings: Settings, costs: StepCosts) -> Prediction:
    """Every cell a run, queued in the order given, under the instance's run and pool limits."""
    if settings.pool_granularity == "run":  # a run takes a `gpu` slot when dequeued; its steps then run freely
        gpu_slots, max_runs = fleet.gpus, min(settings.max_concurrent_runs, settings.gpu_pool_limit)
    else:  # each gpu step claims a slot, across runs
        gpu_slots, max_runs = min(fleet.gpus, settings.gpu_pool_limit), settings.max_concurrent_runs
    steps = [s for i, c in enumerate(cells) for s in cell_steps(c, fleet, settings, costs, f"cell{i}")]
    schedule = simulate(steps, {GPU: gpu_slots, CPU: fleet.cpu_workers}, max_runs=max_runs)
    stored = sum(storage_bytes(c) for c in cells)
    bounds = {
        GPU: schedule.busy_s(GPU) / fleet.gpus,
        CPU: schedule.busy_s(CPU) / fleet.cpu_workers,
        "storage": stored / 1e6 / fleet.storage_mb_s,
    }
    return Prediction(schedule, stored, bounds, runs_waited=len(cells) > max_runs)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{math.ceil(seconds / 60)} min"
