"""Finesse run config (shared paths and profile come from the evals `settings` resource)."""

from pathlib import Path

import dagster as dg

from sie_evals.finesse.config import FinesseConfig, load_config, packaged_config_path, parse_config
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.strict import OptionalInt


class FinesseRunConfig(dg.Config):
    """Run-config overrides of a Finesse task's packaged config (sie_evals/data/finesse/<name>.yaml)."""

    config_path: str | None = None  # use this config instead of the task's packaged one
    samples_per_length: OptionalInt = None
    min_length: OptionalInt = None
    max_length: OptionalInt = None
    group_amount: OptionalInt = None  # SRS tasks: context n-grams per probe position

    def task_config(self, task_id: str, model: str, profile: str, threads: int | None) -> tuple[FinesseConfig, Path]:
        namespace, _, name = task_id.partition("/")
        if namespace != "finesse" or not name:
            raise InputError(f"{task_id} is not a Finesse task id (finesse/<config name>)")
        path = Path(self.config_path) if self.config_path else packaged_config_path(name)
        data = load_config(path).model_dump(mode="json")
        if data["mode"] != "native_mode":
            raise InputError(f"{path}: Dagster Finesse runs use native_mode (the partition's model is the embedder)")
        data["models"]["native_embedder"].update({"name": model, "profile": profile})
        if self.samples_per_length:
            data["probe_config"]["samples_per_length"] = self.samples_per_length
        if self.min_length:
            data["probe_config"]["sequence_length"]["min"] = self.min_length
        if self.max_length:
            data["probe_config"]["sequence_length"]["max"] = self.max_length
        if self.group_amount:
            data["probe_config"]["group_amount"] = self.group_amount
        if threads:
            data["advanced"]["threads"] = threads
        return parse_config(data, str(path)), path
