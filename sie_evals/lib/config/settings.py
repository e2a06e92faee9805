"""One settings model for the CLI (`sie-bench eval`) and the Dagster resource (`EvalSettings`): every
default lives here once, and `SIE_EVALS_<FIELD>` sets a field for both (pydantic-settings). Paths
left unset fall back to lib/core/paths.py (`SIE_EVALS_DATA_DIR`, ...), which reads the same
variables."""

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.strict import Int, OptionalFloat, OptionalInt

ENV_PREFIX = "SIE_EVALS_"


class EvalDefaults(BaseSettings):
    """Every knob of an eval. Quality evals use `batch_size` (items per forward pass; unset: the
    profile's); perf evals use the `perf_*` load shape (`perf_batch_size`: items per request)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: str | None = Field(None, description="Local data root (unset: Hugging Face hub).")
    cache_dir: str | None = Field(None, description="Embedding cache (unset: ~/.cache/sie-evals).")
    results_dir: str | None = Field(None, description="Result files (unset: ./results).")
    model_configs_dir: str | None = Field(None, description="Model configs (unset: ./model_configs).")
    profile: str = Field("default", description="Profile from the model config.")
    split: str | None = Field(None, description="Dataset split (unset: the task's).")
    limit_queries: OptionalInt = Field(None, ge=1, description="Deterministic slice: this many queries.")
    corpus_size: OptionalInt = Field(None, ge=1, description="Slice corpus size (with limit_queries; default 1000).")
    batch_size: OptionalInt = Field(None, ge=1, description="Quality: items per forward pass (unset: profile's).")
    threads: OptionalInt = Field(None, ge=1, description="Torch threads (local engine, started servers).")
    device: str | None = Field(None, description="Device of started servers: cpu (unset), cuda, auto.")
    perf_workload: Literal["corpus", "queries"] = Field("corpus", description="Perf: encode documents or queries.")
    perf_batch_size: Int = Field(1, ge=1, description="Perf: items per request.")
    perf_concurrency: Int = Field(16, ge=1, description="Perf: concurrent closed-loop clients.")
    perf_requests: Int = Field(200, ge=1, description="Perf: counted requests per trial.")
    perf_warmup_requests: Int = Field(16, ge=0, description="Perf: warm-up requests per trial.")
    perf_trials: Int = Field(3, ge=1, description="Perf: repeated trials (median reported).")
    perf_rate: OptionalFloat = Field(None, description="Perf: open loop at this many requests/s (unset: closed).")
    perf_arrival: Literal["constant", "poisson", "gamma"] = Field("poisson", description="Perf: open-loop arrivals.")
    perf_sweep: str | None = Field(None, description="Perf: a sweep, e.g. concurrency=1,2,4,8.")
    perf_slos: str | None = Field(None, description="Perf: comma-separated SLOs, e.g. p99_ms<=250,error_rate<=0.01.")

    def data_root(self) -> Path | None:
        return Path(self.data_dir) if self.data_dir else paths.data_dir()

    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else paths.cache_dir()

    def results_root(self) -> Path:
        return Path(self.results_dir) if self.results_dir else paths.results_dir()

    def configs_dir(self) -> Path:
        return Path(self.model_configs_dir) if self.model_configs_dir else paths.model_configs_dir()


def eval_defaults(**overrides: Any) -> EvalDefaults:
    """The settings from the environment, with explicit values (CLI options, resource config) on top.
    A malformed SIE_EVALS_* value is an input error naming the variable."""
    try:
        return EvalDefaults(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            name = str(e["loc"][0]) if e["loc"] else "?"
            lines.append(f"{ENV_PREFIX}{name.upper()} (or its option): {e['msg']} (got {e.get('input')!r})")
        raise InputError("invalid setting: " + "; ".join(lines)) from None


DEFAULTS: dict[str, Any] = {name: field.default for name, field in EvalDefaults.model_fields.items()}
