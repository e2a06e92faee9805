"""Resources: where data, cache and results live, and how big a slice to evaluate."""

import json
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from sie_evals.defs.evals.partitions import storage_name
from sie_evals.lib.config.model_config import ModelConfig, ResolvedProfile
from sie_evals.lib.config.settings import DEFAULTS, EvalDefaults, PerfPlan, eval_defaults, perf_plan
from sie_evals.lib.core import paths
from sie_evals.lib.core.artifacts import ArtifactStore, open_store
from sie_evals.lib.core.errors import ConfigError, InputError
from sie_evals.lib.core.sources import url_sources
from sie_evals.lib.core.urls import http_url_problem, redact_url
from sie_evals.lib.engines import Engine, create_engine
from sie_evals.lib.engines.cache import EmbeddingCache
from sie_evals.lib.gates.keys import path_slug
from sie_evals.lib.harness.evaluation import DataOptions, EngineOptions
from sie_evals.lib.perf.load import LoadSpec
from sie_evals.lib.tasks.snapshot import read_snapshot

D = DEFAULTS  # every default lives in lib/config/settings.py (EvalDefaults), shared with the CLI


class EvalSettings(dg.ConfigurableResource):
    """The eval settings of lib/config/settings.py as a Dagster resource (same fields, same defaults,
    same SIE_EVALS_<FIELD> variables through `from_env`). Unset paths fall back to lib/core/paths.py."""

    data_dir: str | None = D["data_dir"]
    cache_dir: str | None = D["cache_dir"]
    results_dir: str | None = D["results_dir"]
    model_configs_dir: str | None = D["model_configs_dir"]
    profile: str = D["profile"]
    split: str | None = D["split"]
    limit_queries: int | None = D["limit_queries"]
    corpus_size: int | None = D["corpus_size"]
    batch_size: int | None = D["batch_size"]  # quality: items per forward pass (unset: the profile's)
    threads: int | None = D["threads"]
    device: str | None = D["device"]  # local engine and started servers: cpu, auto, cuda, cuda:N, ...
    shard_size: int = D["shard_size"]  # embeddings: texts per shard step of a large task
    # perf_scores load shape (the CLI's --type perf options)
    perf_workload: str = D["perf_workload"]
    perf_batch_size: int = D["perf_batch_size"]  # perf: items per request
    perf_concurrency: int = D["perf_concurrency"]
    perf_requests: int = D["perf_requests"]
    perf_warmup_requests: int = D["perf_warmup_requests"]
    perf_trials: int = D["perf_trials"]
    perf_duration_s: float | None = D["perf_duration_s"]  # seconds per trial instead of perf_requests
    perf_rate: float | None = D["perf_rate"]  # open loop at this many requests/s (--rate)
    perf_arrival: str = D["perf_arrival"]
    perf_burstiness: float = D["perf_burstiness"]
    perf_max_concurrency: int = D["perf_max_concurrency"]
    perf_on_cap: str = D["perf_on_cap"]
    perf_seed: int = D["perf_seed"]
    perf_tokens: str | None = D["perf_tokens"]  # N, or N1,N2,... (a sweep)
    perf_sweep: str | None = D["perf_sweep"]  # e.g. concurrency=1,2,4,8 (--sweep)
    perf_slos: str | None = D["perf_slos"]  # comma-separated, e.g. p99_ms<=250,error_rate<=0.01 (--slo)
    # Where step outputs every worker reads live (lib/core/artifacts.py): unset, $SIE_EVALS_ARTIFACTS_URL, else
    # results_dir as always. Not in EvalDefaults: the CLI runs on one machine.
    artifacts_url: str | None = Field(None, description="s3://bucket/prefix, gs://..., or a shared folder")
    artifacts_options: dict[str, Any] | None = Field(
        None, description="fsspec storage options, e.g. {endpoint_url: ...} (unset: $SIE_EVALS_ARTIFACTS_OPTIONS)"
    )

    @classmethod
    def from_env(cls) -> "EvalSettings":
        """Settings for the deployed code location: any field as SIE_EVALS_<FIELD> (e.g. a quick smoke
        instance with SIE_EVALS_LIMIT_QUERIES=50), validated by the shared settings model."""
        return cls(**eval_defaults().model_dump())

    def defaults(self) -> EvalDefaults:
        return eval_defaults(**{name: getattr(self, name) for name in DEFAULTS})

    def load_spec(self) -> LoadSpec:
        return self.perf_plan().load

    def perf_plan(self) -> PerfPlan:
        """Load shape, sweep and SLOs: the one builder the CLI uses too (lib/config/settings.py)."""
        return perf_plan(self.defaults())

    def perf_sweep_and_slos(self) -> tuple[Any, tuple[Any, ...]]:
        plan = self.perf_plan()
        return plan.sweep, plan.slos

    def data_options(self) -> DataOptions:
        return DataOptions(
            self.split, self.limit_queries, self.corpus_size, Path(self.data_dir) if self.data_dir else paths.data_dir()
        )

    def engine_options(self) -> EngineOptions:
        return EngineOptions(batch_size=self.batch_size, threads=self.threads, device=self.device)

    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else paths.cache_dir()

    def artifacts(self) -> ArtifactStore:
        """Snapshots, vector files and per-query tables a later step (on any worker) reads."""
        return open_store(self.artifacts_url, self.artifacts_options, self.results_root(), self.cache_root())

    def cache(self) -> EmbeddingCache:
        """This worker's embedding cache, with the artifact store's `cache/` as its shared tier when it is remote."""
        store = self.artifacts()
        return EmbeddingCache(self.cache_root(), remote=store.child("cache") if store.remote else None)

    def snapshot(self, task_dataset: dict[str, Any]) -> Any:
        """The task data a task_dataset output snapshotted, fetched from the shared store on this worker."""
        return read_snapshot(self.artifacts().fetch_dir(task_dataset["snapshot_dir"]))

    def local_outputs(self, scores: dict[str, Any]) -> dict[str, Any]:
        """A scores output with its per-query table and snapshot as local paths (fetched on this worker), for
        the code that opens them as files (drift checks, regressed queries)."""
        store, out = self.artifacts(), dict(scores)
        if out.get("per_query_path"):
            local = store.find_file(out["per_query_path"])
            out["per_query_path"] = str(local) if local else None
        if out.get("snapshot_dir"):
            out["snapshot_dir"] = str(store.fetch_dir(out["snapshot_dir"]))
        return out

    def cache_scope(self) -> AbstractContextManager[None]:
        """`cache_dir` for every cache of a step (embeddings, ONNX/OpenVINO exports, servers it starts),
        as the CLI's --cache-dir does."""
        return paths.cache_dir_override(Path(self.cache_dir) if self.cache_dir else None)

    def results_root(self) -> Path:
        return Path(self.results_dir) if self.results_dir else paths.results_dir()

    def configs_dir(self) -> Path | None:
        return Path(self.model_configs_dir) if self.model_configs_dir else None


class EngineFactory(dg.ConfigurableResource):
    """Builds the engine of a compute source for the eval assets, through lib/engines' one `create_engine`.
    Its config is what Dagster used to get only from hidden environment variables: the running server each
    source talks to, visible in the UI and settable per run. The options the CLI shares (batch_size, threads,
    device) stay in `EvalSettings`, the one settings model, and come in as `base`. Tests pass a subclass or
    a server URL here to put a fake or a test server behind the assets."""

    server_urls: dict[str, str] = Field(
        default={},
        description="Compute source -> base URL of a running server to use instead of starting one, e.g. "
        "{sie: 'http://127.0.0.1:8080'} (unset: $SIE_EVALS_<SOURCE>_URL, else the harness starts the server). "
        "Keep a URL with credentials in that variable: config is shown in the UI.",
    )
    openai_model: str | None = Field(
        None, description="openai source: the request's `model` (unset: the profile's openai_model, else the model id)."
    )

    @classmethod
    def from_env(cls) -> "EngineFactory":
        """For the deployed code location: each source whose $SIE_EVALS_<SOURCE>_URL is set, as a reference
        to that variable (dg.EnvVar: read when a run starts; the UI shows the variable's name, never the URL,
        which may carry credentials)."""
        return cls(server_urls={s.name: dg.EnvVar(s.url_env) for s in url_sources() if os.environ.get(s.url_env)})

    def engine_options(self, base: EngineOptions) -> EngineOptions:
        """`base` (the settings' options) with this resource's server URLs and OpenAI model on top."""
        takes_url = [spec.name for spec in url_sources()]  # the source table's rows with a server URL
        for source, url in self.server_urls.items():
            where = f"engines resource config server_urls.{source}"
            if source not in takes_url:
                raise ConfigError(
                    f"{where}: {source!r} is not a source that takes a server URL ({', '.join(takes_url)})"
                )
            if problem := http_url_problem(url):
                raise ConfigError(f"{where}: {redact_url(url)!r} is not an http(s)://host[:port] URL: {problem}")
        return base.replace(server_urls=self.server_urls, openai_model=self.openai_model or base.openai_model)

    def create(self, source: str, config: ModelConfig, profile: ResolvedProfile, base: EngineOptions) -> Engine:
        return create_engine(source, config, profile, self.engine_options(base))


class JsonIOManager(dg.ConfigurableIOManager):
    """Asset outputs are small JSON documents (facts and artifact references); large arrays and tables are
    written by the assets themselves as .npy/Parquet. JSON, not pickle: nothing here can run code.
    They live in the artifact store (lib/core/artifacts.py) under `dagster/`, so a step on another worker
    reads them: `base_dir` (a folder or URL) if set, else $SIE_EVALS_ARTIFACTS_URL, else the results dir."""

    base_dir: str | None = None
    artifacts_options: dict[str, Any] | None = Field(
        None, description="fsspec storage options (unset: $SIE_EVALS_ARTIFACTS_OPTIONS)"
    )

    def _store(self) -> ArtifactStore:
        if self.base_dir:
            return open_store(self.base_dir, self.artifacts_options, paths.results_dir(), paths.cache_dir())
        return open_store(None, self.artifacts_options, paths.results_dir(), paths.cache_dir()).child("dagster")

    @staticmethod
    def _partition(context: dg.OutputContext | dg.InputContext) -> str:
        return context.asset_partition_key if context.has_asset_partitions else "all"

    def _key(self, context: dg.OutputContext | dg.InputContext) -> str:
        if not context.has_asset_key:  # an op's output inside a graph asset (embeddings' shard plan and reports)
            out = context if isinstance(context, dg.OutputContext) else context.upstream_output
            mapped = f"[{out.mapping_key}]" if out.mapping_key and not out.step_key.endswith("]") else ""
            return f"steps/{out.run_id}/{out.step_key}{mapped}.{out.name}.json"
        name = "__".join(context.asset_key.path)
        return f"{name}/{path_slug(storage_name(self._partition(context)))}.json"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
        self._store().write_bytes(self._key(context), text.encode("utf-8"))

    def load_input(self, context: dg.InputContext) -> Any:
        store, key = self._store(), self._key(context)
        raw = store.read_bytes(key)
        if raw is None:
            raise FileNotFoundError(
                f"{store.ref(key)}: upstream output missing; materialize "
                f"{context.asset_key.to_user_string() if context.has_asset_key else 'its asset'} "
                f"for partition {self._partition(context)} first"
            )
        try:
            return json.loads(raw)
        except ValueError as err:  # JSON and UTF-8 errors
            raise InputError(f"{store.ref(key)}: upstream output is not valid JSON ({err}); rematerialize it") from None
