"""Resources: where data, cache and results live, and how big a slice to evaluate."""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from sie_evals.lib import paths
from sie_evals.lib.atomic import atomic_write_json
from sie_evals.lib.cache import EmbeddingCache
from sie_evals.lib.evaluation import DataOptions, EngineOptions
from sie_evals.lib.keys import path_slug


class EvalSettings(dg.ConfigurableResource):
    """Unset paths fall back to the SIE_EVALS_* environment variables and their defaults."""

    data_dir: str | None = None
    cache_dir: str | None = None
    results_dir: str | None = None
    model_configs_dir: str | None = None
    profile: str = "default"
    split: str | None = None
    limit_queries: int | None = None
    corpus_size: int | None = None
    batch_size: int | None = None
    threads: int | None = None

    def data_options(self) -> DataOptions:
        return DataOptions(
            self.split, self.limit_queries, self.corpus_size, Path(self.data_dir) if self.data_dir else paths.data_dir()
        )

    def engine_options(self) -> EngineOptions:
        return EngineOptions(batch_size=self.batch_size, threads=self.threads)

    def cache(self) -> EmbeddingCache:
        return EmbeddingCache(Path(self.cache_dir) if self.cache_dir else paths.cache_dir())

    def results_root(self) -> Path:
        return Path(self.results_dir) if self.results_dir else paths.results_dir()

    def configs_dir(self) -> Path | None:
        return Path(self.model_configs_dir) if self.model_configs_dir else None


class JsonIOManager(dg.ConfigurableIOManager):
    """Asset outputs are small JSON documents (facts and file paths); large arrays and tables are
    written by the assets themselves as .npy/Parquet. JSON, not pickle: nothing here can run code."""

    base_dir: str | None = None

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        root = Path(self.base_dir) if self.base_dir else paths.results_dir() / "dagster"
        name = "__".join(context.asset_key.path)
        partition = context.asset_partition_key if context.has_asset_partitions else "all"
        return root / name / f"{path_slug(partition)}.json"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        atomic_write_json(self._path(context), obj)

    def load_input(self, context: dg.InputContext) -> Any:
        path = self._path(context)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: upstream output missing; materialize {context.asset_key.to_user_string()} "
                f"for partition {context.asset_partition_key} first"
            )
        return json.loads(path.read_text())
