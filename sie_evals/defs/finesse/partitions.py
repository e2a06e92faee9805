"""Finesse partitions: every model:task:source whose task is a Finesse task (type "finesse") in model_configs/."""

import dagster as dg

from sie_evals.lib.config.model_config import ModelConfig, load_all_model_configs
from sie_evals.lib.gates.keys import EvalKey
from sie_evals.lib.tasks import resolve_task


def finesse_keys(configs: list[ModelConfig] | None = None) -> list[EvalKey]:
    configs = load_all_model_configs() if configs is None else configs
    keys = {
        EvalKey(c.short_name, resolve_task(t).task_id, s)
        for c in configs
        for t in c.tasks
        for s in c.sources
        if s == "local" and resolve_task(t).type == "finesse"  # runs through the local engine
    }
    return sorted(keys)


FINESSE_KEYS = finesse_keys()
finesse_partitions = dg.StaticPartitionsDefinition([str(k) for k in FINESSE_KEYS])
