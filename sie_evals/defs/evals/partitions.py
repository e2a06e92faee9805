"""Eval partitions: exactly the cells the model configs declare, one `model:task:source` key each
(`model@profile:task:source` for an output profile), kept in the instance as dynamic partitions.

Why this shape (Dagster 1.13, see /work/shared/reference/dagster-notes.md §1):
- A `model x task` MultiPartitionsDefinition is always a cross product: 9 of 24 cells nobody declared,
  which every column backfill then reported as "completed with failures" and which stayed missing
  forever. A flat key space has no such cells.
- Static keys generated at import need "Reload definitions" after a config change. Dynamic keys do not:
  the `eval_cells_sync` sensor (sensors.py) reads the configs directory each tick and adds the cells a
  new config declares, and deletes the cells no config declares any more (their materialization history
  stays in the event log; saved targets and measurements live in the configs' files, untouched).
- The only built-in mapping from a task-keyed dataset to a sparse set of cells is `StaticPartitionMapping`,
  which accepts static definitions only (custom mappings are dropped from the UI/daemon snapshot). So
  `task_dataset` is keyed by cell too (identity mapping): the snapshot folder is named by the data's
  content hash, so the cells of one task share their files on disk; a cell's whole chain (dataset,
  embeddings, scores, comparison) runs in one run and a backfill of any selection of cells is exact.
- The model x task view: `eval_report` (defs/reports/assets.py) renders the grid (a row per
  model:source, a column per task, each cell's status) from these keys; in the backfill dialog a column
  is the substring filter `:beir/SciFact:`, a row `all-MiniLM-L6-v2:` (keys sort by model first).

Finesse cells are a second dynamic definition (defs/finesse/partitions.py), declared here (`finesse_keys`)
and synced by the same sensor."""

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from sie_evals.defs.evals.profile_partitions import partition_profiles
from sie_evals.lib.config.model_config import ModelConfig, load_all_model_configs
from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.core.sources import COMPUTE_SOURCES, DEFAULT_SOURCE
from sie_evals.lib.gates.keys import EvalKey, model_part
from sie_evals.lib.tasks import resolve_task

EVAL_CELLS = "eval_cells"
FINESSE_CELLS = "finesse_cells"  # the Finesse assets' partitions (defs/finesse/partitions.py)
# `,` separates keys and `[a...b]` is a range in Dagster's partition selections (UI, CLI); `|` joins
# the dimensions of multi-partition keys.
RESERVED_CHARACTERS = ("|", ",", "[", "]")

eval_partitions = dg.DynamicPartitionsDefinition(name=EVAL_CELLS)


def eval_keys(configs: list[ModelConfig] | None = None) -> list[EvalKey]:
    """Every model:task:source a config declares, for sources that embed (reference sources are read).

    Finesse tasks are excluded: they have their own assets (`sie_evals.defs.finesse`)."""
    configs = load_all_model_configs() if configs is None else configs
    for c in configs:
        for value in (c.short_name, *c.profiles, *c.sources, *(resolve_task(t).task_id for t in c.tasks)):
            _check_key_part(c.short_name, value)
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
        EvalKey(model_part(c.short_name, p), resolve_task(t).task_id, DEFAULT_SOURCE)
        for c in configs
        for p in partition_profiles(c)
        for t in c.tasks
        if DEFAULT_SOURCE in c.sources and resolve_task(t).type == "retrieval"
    }
    return sorted(keys)


def finesse_keys(configs: list[ModelConfig] | None = None) -> list[EvalKey]:
    """Every model:task:source a config declares whose task is a Finesse task (type "finesse")."""
    configs = load_all_model_configs() if configs is None else configs
    keys = {
        EvalKey(c.short_name, resolve_task(t).task_id, s)
        for c in configs
        for t in c.tasks
        for s in c.sources
        if s == DEFAULT_SOURCE and resolve_task(t).type == "finesse"  # runs through the local engine
    }
    return sorted(keys)


def _check_key_part(config: str, value: str) -> None:
    bad = [c for c in RESERVED_CHARACTERS if c in value]
    if bad:
        raise ConfigError(
            f"model config {config!r}: {value!r} cannot be part of a Dagster partition key: it contains "
            f"{', '.join(map(repr, bad))} (reserved in partition keys and selections)"
        )


def partition_key(key: EvalKey) -> str:
    """The Dagster partition of an eval key: the key itself, `model:task:source`."""
    return str(key)


def eval_key(partition: str) -> EvalKey:
    """The eval key of a Dagster partition. ValueError for anything that is not `model:task:source`."""
    return EvalKey.parse(str(partition))


def storage_name(partition: str) -> str:
    """What a partition's files are named by: the partition key itself."""
    return partition


def partition_requests(
    name: str, declared: Sequence[str], existing: Sequence[str]
) -> list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest]:
    """What makes dynamic partitions `name` exactly `declared`: add the new keys, delete the undeclared."""
    add = sorted(set(declared) - set(existing))
    delete = sorted(set(existing) - set(declared))
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if add:
        requests.append(dg.AddDynamicPartitionsRequest(partitions_def_name=name, partition_keys=add))
    if delete:
        requests.append(dg.DeleteDynamicPartitionsRequest(partitions_def_name=name, partition_keys=delete))
    return requests


def declared_partitions(configs_dir: Path | None = None) -> dict[str, list[str]]:
    """Dynamic partitions definition name -> the keys the configs in `configs_dir` declare."""
    configs = load_all_model_configs(configs_dir)
    return {
        EVAL_CELLS: [partition_key(k) for k in eval_keys(configs)],
        FINESSE_CELLS: [str(k) for k in finesse_keys(configs)],
    }


def sync_requests(
    instance: dg.DagsterInstance, configs_dir: Path | None = None
) -> list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest]:
    """The requests that make the instance's eval and Finesse partitions the cells `configs_dir` declares."""
    return [
        request
        for name, keys in declared_partitions(configs_dir).items()
        for request in partition_requests(name, keys, instance.get_dynamic_partitions(name))
    ]


def apply_requests(
    instance: dg.DagsterInstance,
    requests: Sequence[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest],
) -> None:
    """Apply partition requests directly (what the sensor daemon does with a sensor's requests)."""
    for r in requests:
        if isinstance(r, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(r.partitions_def_name, list(r.partition_keys))
        else:
            for key in r.partition_keys:
                instance.delete_dynamic_partition(r.partitions_def_name, key)


def sync_partitions(instance: dg.DagsterInstance, configs_dir: Path | None = None) -> None:
    """Make the instance's partitions the declared cells now, without waiting for a sensor tick."""
    apply_requests(instance, sync_requests(instance, configs_dir))
