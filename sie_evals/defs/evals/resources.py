"""Resources: where data, cache and results live, and how big a slice to evaluate."""

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from sie_evals.lib.core import paths
from sie_evals.lib.core.atomic import atomic_write_json
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.engines.cache import EmbeddingCache
from sie_evals.lib.gates.keys import path_slug
from sie_evals.lib.harness.evaluation import DataOptions, EngineOptions
from sie_evals.lib.perf.load import LoadSpec

_PATH_FIELDS = ("data_dir", "cache_dir", "results_dir", "model_configs_dir")


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
    device: str | None = None  # local engine and started servers: cpu, auto, cuda, cuda:N, ... (SIE_EVALS_DEVICE)
    # perf_scores load shape (the CLI's --type perf options)
    perf_workload: str = "corpus"
    perf_batch_size: int = 1
    perf_concurrency: int = 16
    perf_requests: int = 200
    perf_warmup_requests: int = 16
    perf_trials: int = 3

    @classmethod
    def from_env(cls) -> "EvalSettings":
        """Settings for the deployed code location. Slices and load shape can be set per deployment
        (e.g. a quick smoke instance) with SIE_EVALS_<FIELD> variables, e.g. SIE_EVALS_LIMIT_QUERIES=50."""
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = os.environ.get(f"SIE_EVALS_{name.upper()}")
            if raw is None or name in _PATH_FIELDS:  # paths already come from their env vars (lib/paths.py)
                continue
            kind = int if "int" in str(field.annotation) else str
            try:
                values[name] = kind(raw)
            except ValueError:
                raise InputError(
                    f"environment variable SIE_EVALS_{name.upper()}={raw!r}: expected {kind.__name__}"
                ) from None
        return cls(**values)

    def load_spec(self) -> LoadSpec:
        return LoadSpec(
            batch_size=self.perf_batch_size,
            concurrency=self.perf_concurrency,
            requests=self.perf_requests,
            warmup_requests=self.perf_warmup_requests,
            trials=self.perf_trials,
        )

    def data_options(self) -> DataOptions:
        return DataOptions(
            self.split, self.limit_queries, self.corpus_size, Path(self.data_dir) if self.data_dir else paths.data_dir()
        )

    def engine_options(self) -> EngineOptions:
        return EngineOptions(batch_size=self.batch_size, threads=self.threads, device=self.device)

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
