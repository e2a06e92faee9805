"""Partition keys generated from `model_configs/`: adding a model, task or source to a config adds
its partitions with no code change (reload the code location: "Reload definitions" in the UI).

Eval assets are partitioned on two dimensions, so an asset's Partitions page is a matrix:
- `model`: one row per model (or `model@profile` output profile) and compute source, `model:source`;
- `task`: one column per task id, the same keys as `task_dataset`'s partitions.
The grid is the cross product. A cell no config declares stays missing: the nightly schedule and
sensors launch declared cells only (`EVAL_KEYS`), and a run that reaches an undeclared cell (a
backfill of whole task columns, or a click on it) skips it with a log line saying how to declare it or
run it ad hoc from the CLI, so a broad backfill neither fails nor alerts on combinations nobody asked
for (an output profile on a classification task, a model on a task its config does not list). The one
mapping between an `EvalKey` and a Dagster partition key is here: `partition_key` / `eval_key`."""

from collections import defaultdict

import dagster as dg

from sie_evals.lib.config.model_config import ModelConfig, load_all_model_configs
from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.core.sources import COMPUTE_SOURCES
from sie_evals.lib.engines.outputs import partition_profiles
from sie_evals.lib.gates.keys import SEP, EvalKey, model_part, split_model_part
from sie_evals.lib.tasks import resolve_task

MODEL_DIM, TASK_DIM = "model", "task"
# Dagster reserves these in multi-partition keys (`|` joins the dimensions of a serialized key).
RESERVED_CHARACTERS = ("|", ",", "[", "]")


def eval_keys(configs: list[ModelConfig] | None = None) -> list[EvalKey]:
    """Every model:task:source a config declares, for sources that embed (reference sources are read).

    Finesse tasks are excluded: they have their own assets (`sie_evals.defs.finesse`)."""
    configs = load_all_model_configs() if configs is None else configs
    for c in configs:
        for value in (c.short_name, *c.profiles, *c.sources, *(resolve_task(t).task_id for t in c.tasks)):
            _check_dimension_value(c.short_name, value)
    keys = {
        EvalKey(c.short_name, resolve_task(t).task_id, s)
        for c in configs
        for t in c.tasks
        for s in c.sources
        if s in COMPUTE_SOURCES and resolve_task(t).type != "finesse"  # finesse has its own assets
    }
    # Output profiles (sparse, multivector, MUVERA): `model@profile` keys, retrieval tasks, local engine
    # (server sources serve them from the CLI: `-s sie -p <profile>`).
    keys |= {
        EvalKey(model_part(c.short_name, p), resolve_task(t).task_id, "local")
        for c in configs
        for p in partition_profiles(c)
        for t in c.tasks
        if "local" in c.sources and resolve_task(t).type == "retrieval"
    }
    return sorted(keys)


def _check_dimension_value(config: str, value: str) -> None:
    bad = [c for c in RESERVED_CHARACTERS if c in value]
    if bad:
        raise ConfigError(
            f"model config {config!r}: {value!r} cannot be part of a Dagster partition key: it contains "
            f"{', '.join(map(repr, bad))} (reserved in multi-partition keys)"
        )


def model_row(key: EvalKey) -> str:
    """The `model` dimension value of a key: `model[@profile]:source`."""
    return f"{key.model}{SEP}{key.source}"


def partition_key(key: EvalKey) -> dg.MultiPartitionKey:
    """The Dagster partition of an eval key."""
    return dg.MultiPartitionKey({MODEL_DIM: model_row(key), TASK_DIM: key.task})


def eval_key(partition: str | dg.MultiPartitionKey) -> EvalKey:
    """The eval key of a Dagster partition: a MultiPartitionKey, or its serialized form
    `model:source|task` (what run tags and event records carry). ValueError for anything else."""
    if isinstance(partition, dg.MultiPartitionKey):
        dims = partition.keys_by_dimension
        row, task = dims.get(MODEL_DIM), dims.get(TASK_DIM)
    else:
        parts = str(partition).split("|")  # dimensions in name order: model, task
        row, task = parts if len(parts) == 2 else (None, None)
    model, sep, source = (row or "").partition(SEP)
    if not sep or not task:
        raise ValueError(f"partition {partition!r} is not {MODEL_DIM}:source|{TASK_DIM}")
    return EvalKey(model, task, source)


def undeclared_cell_message(key: EvalKey) -> str:
    model, profile = split_model_part(key.model)
    cli = f"sie-bench eval {model} -t {key.task} -s {key.source}" + (f" -p {profile}" if profile else "")
    return (
        f"{key}: no model config declares this cell, so nothing was run and it stays missing. Declare it "
        f"(the task under `tasks:` and the source under `sources:` of {model}'s config, then reload "
        f"definitions), or run it ad hoc: {cli}"
    )


def storage_name(partition: str) -> str:
    """What a partition's files are named by: the eval key (`model:task:source`) for an eval partition,
    the key itself otherwise (a task)."""
    return str(eval_key(partition)) if "|" in partition else partition


def task_to_eval_keys(keys: list[EvalKey]) -> dict[str, list[EvalKey]]:
    by_task: dict[str, list[EvalKey]] = defaultdict(list)
    for k in keys:
        by_task[k.task].append(k)
    return dict(by_task)


EVAL_KEYS = eval_keys()
TASKS = sorted({k.task for k in EVAL_KEYS})
task_partitions = dg.StaticPartitionsDefinition(TASKS)
eval_partitions = dg.MultiPartitionsDefinition(
    {
        MODEL_DIM: dg.StaticPartitionsDefinition(sorted({model_row(k) for k in EVAL_KEYS})),
        TASK_DIM: dg.StaticPartitionsDefinition(TASKS),
    }
)
# Built-in mapping (visible to the UI and daemon, unlike custom PartitionMapping subclasses).
task_to_evals = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=TASK_DIM)
