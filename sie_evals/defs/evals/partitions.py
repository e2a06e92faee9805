"""Partition keys generated from `model_configs/`: adding a model, task or source to a config adds
its partitions with no code change (reload the code location)."""

from collections import defaultdict

import dagster as dg

from sie_evals.lib.config.model_config import ModelConfig, load_all_model_configs
from sie_evals.lib.core.sources import COMPUTE_SOURCES
from sie_evals.lib.engines.outputs import partition_profiles
from sie_evals.lib.gates.keys import EvalKey, model_part
from sie_evals.lib.tasks import resolve_task


def eval_keys(configs: list[ModelConfig] | None = None) -> list[EvalKey]:
    """Every model:task:source a config declares, for sources that embed (reference sources are read).

    Finesse tasks are excluded: they have their own assets (`sie_evals.defs.finesse`)."""
    configs = load_all_model_configs() if configs is None else configs
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


def task_to_eval_keys(keys: list[EvalKey]) -> dict[str, list[str]]:
    by_task: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        by_task[k.task].append(str(k))
    return dict(by_task)


EVAL_KEYS = eval_keys()
task_partitions = dg.StaticPartitionsDefinition(sorted({k.task for k in EVAL_KEYS}))
eval_partitions = dg.StaticPartitionsDefinition([str(k) for k in EVAL_KEYS])
# Built-in mapping (visible to the UI and daemon, unlike custom PartitionMapping subclasses).
task_to_evals = dg.StaticPartitionMapping(task_to_eval_keys(EVAL_KEYS))
