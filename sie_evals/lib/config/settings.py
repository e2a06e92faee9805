"""One settings model for the CLI (`sie-bench eval`) and the Dagster resource (`EvalSettings`): every
default lives here once, and `SIE_EVALS_<FIELD>` sets a field for both (pydantic-settings). Paths
left unset fall back to lib/core/paths.py (`SIE_EVALS_DATA_DIR`, ...), which reads the same
variables. The perf fields become a load shape in one place, `perf_plan` (CLI and assets alike)."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.strict import Float, Int, OptionalFloat, OptionalInt

if TYPE_CHECKING:
    from sie_evals.lib.perf.load import LoadSpec
    from sie_evals.lib.perf.sweep import Slo, Sweep

ENV_PREFIX = "SIE_EVALS_"


def _opt(flag: str) -> dict[str, Any]:
    """The `sie-bench eval` option that sets a field: named in errors and in the generated help."""
    return {"json_schema_extra": {"option": flag}}


class EvalDefaults(BaseSettings):
    """Every knob of an eval. Quality evals use `batch_size` (items per forward pass; unset: the
    profile's); perf evals use the `perf_*` load shape (`perf_batch_size`: items per request)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: str | None = Field(None, description="Local data root (unset: Hugging Face hub).", **_opt("--data-dir"))
    cache_dir: str | None = Field(
        None, description="Embedding cache (unset: ~/.cache/sie-evals).", **_opt("--cache-dir")
    )
    results_dir: str | None = Field(None, description="Result files (unset: ./results).")
    model_configs_dir: str | None = Field(None, description="Model configs (unset: ./model_configs).")
    profile: str = Field("default", description="Profile from the model config.", **_opt("--profile"))
    split: str | None = Field(None, description="Dataset split (unset: the task's, e.g. test).", **_opt("--split"))
    limit_queries: OptionalInt = Field(
        None,
        ge=1,
        description="Deterministic subset: this many queries (test items / pairs for other task types)...",
        **_opt("--limit-queries"),
    )
    corpus_size: OptionalInt = Field(
        None,
        ge=1,
        description="...and a corpus of their relevant docs filled up to this size by a fixed sample "
        "(with limit_queries; unset: 1000).",
        **_opt("--corpus-size"),
    )
    batch_size: OptionalInt = Field(
        None, ge=1, description="Quality: items per forward pass (unset: the profile's).", **_opt("--batch-size")
    )
    threads: OptionalInt = Field(
        None,
        ge=1,
        description="Torch threads for the local engine and the sie/infinity servers the harness starts.",
        **_opt("--threads"),
    )
    device: str | None = Field(
        None,
        description="Device of the local engine (unset: the profile's, cpu) and of started servers (sie, "
        "infinity): cpu, auto, mps, cuda (all GPUs, data-parallel), cuda:N or a comma-separated list.",
        **_opt("--device"),
    )
    shard_size: Int = Field(
        100_000,
        ge=1,
        description="Dagster: a task with more texts than this is embedded as shards of about this many (whole "
        "embedding-cache chunks), each a step of its own; the merged vectors equal the unsharded run's.",
    )
    perf_workload: Literal["corpus", "queries"] = Field(
        "corpus", description="Perf: encode the task's corpus (documents) or its queries.", **_opt("--workload")
    )
    perf_batch_size: Int = Field(1, ge=1, description="Perf: items per request.", **_opt("--batch-size"))
    perf_concurrency: Int = Field(
        16, ge=1, description="Perf: concurrent closed-loop clients.", **_opt("--concurrency")
    )
    perf_requests: Int = Field(200, ge=1, description="Perf: counted requests per trial.", **_opt("--requests"))
    perf_duration_s: OptionalFloat = Field(
        None, description="Perf: seconds per trial instead of a request count.", **_opt("--duration")
    )
    perf_warmup_requests: Int = Field(16, ge=0, description="Perf: warm-up requests per trial.", **_opt("--warmup"))
    perf_trials: Int = Field(3, ge=1, description="Perf: repeated trials (median reported).", **_opt("--trials"))
    perf_rate: OptionalFloat = Field(
        None,
        description="Perf: open loop at this many requests/s (latency from the scheduled send; unset: closed loop).",
        **_opt("--rate"),
    )
    perf_arrival: Literal["constant", "poisson", "gamma"] = Field(
        "poisson", description="Perf, open loop: constant, poisson or gamma arrivals.", **_opt("--arrival")
    )
    perf_burstiness: Float = Field(
        1.0, description="Perf, gamma arrivals: shape (<1 burstier, 1 = Poisson).", **_opt("--burstiness")
    )
    perf_max_concurrency: Int = Field(
        256, description="Perf, open loop: in-flight cap (late/dropped when reached).", **_opt("--max-concurrency")
    )
    perf_on_cap: Literal["late", "drop"] = Field(
        "late", description="Perf, open loop, cap reached: late (send when a slot frees) or drop.", **_opt("--on-cap")
    )
    perf_seed: Int = Field(0, description="Perf, open loop: arrival schedule seed.", **_opt("--seed"))
    perf_tokens: str | None = Field(
        None,
        description="Perf: texts of exactly N tokens cut from the corpus; N1,N2,... = a sweep.",
        **_opt("--tokens"),
    )
    perf_sweep: str | None = Field(
        None,
        description="Perf: one load point per value: concurrency=1,2,4 | rate=5,10,20 | batch=1,8 | tokens=32,128.",
        **_opt("--sweep"),
    )
    perf_slos: str | None = Field(
        None,
        description="Perf: SLOs, e.g. p99_ms<=250 (--slo repeatable; comma-separated in the variable): goodput and "
        "max_rate_at_slo.",
        **_opt("--slo"),
    )

    def data_root(self) -> Path | None:
        return Path(self.data_dir) if self.data_dir else paths.data_dir()

    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else paths.cache_dir()

    def results_root(self) -> Path:
        return Path(self.results_dir) if self.results_dir else paths.results_dir()

    def configs_dir(self) -> Path:
        return Path(self.model_configs_dir) if self.model_configs_dir else paths.model_configs_dir()


def option_of(name: str) -> str | None:
    """The CLI option of a settings field (None for fields only the environment or Dagster sets)."""
    extra = EvalDefaults.model_fields[name].json_schema_extra
    return extra.get("option") if isinstance(extra, dict) else None  # type: ignore[return-value]


def env_var(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def _label(name: str) -> str:
    """How an error names a field: its option and variable (the CLI, the environment and Dagster's
    resource config all set it)."""
    option = option_of(name)
    return f"{option} ({env_var(name)})" if option else env_var(name)


def field_help(name: str, text: str | None = None) -> str:
    """A CLI option's help from its settings field: the description and the default in force, so the
    help cannot restate a default that has since changed."""
    info = EvalDefaults.model_fields[name]
    default = "unset" if info.default is None else info.default
    return f"{text or info.description} Default: {default} (${env_var(name)})."


def eval_defaults(**overrides: Any) -> EvalDefaults:
    """The settings from the environment, with explicit values (CLI options, resource config) on top.
    A malformed SIE_EVALS_* value is an input error naming the variable and its option."""
    try:
        return EvalDefaults(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            name = str(e["loc"][0]) if e["loc"] else "?"
            where = _label(name) if name in EvalDefaults.model_fields else f"{ENV_PREFIX}{name.upper()}"
            lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
        raise InputError("invalid setting: " + "; ".join(lines)) from None


DEFAULTS: dict[str, Any] = {name: field.default for name, field in EvalDefaults.model_fields.items()}


@dataclass(frozen=True)
class PerfPlan:
    """A perf eval's load: one shape, or a sweep of shapes, and the SLOs each point is held to."""

    load: "LoadSpec"
    sweep: "Sweep | None"
    slos: "tuple[Slo, ...]"


def _tokens(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise InputError(f"{_label('perf_tokens')} {text!r}: expected N or N1,N2,... (integers)") from None
    if any(t < 1 for t in values):
        raise InputError(f"{_label('perf_tokens')} {text!r}: token counts must be >= 1")
    return values


def load_spec(d: EvalDefaults, tokens: int | None = None) -> "LoadSpec":
    """The one LoadSpec of the settings (every open-loop field), exit 2 naming the option and variable.
    A duration replaces the request count; giving both explicitly is an error."""
    from dataclasses import fields

    from sie_evals.lib.perf.load import LoadSpec, LoadSpecError

    # a duration replaces the default request count; a request count someone chose conflicts with it
    chosen_requests = "perf_requests" in d.model_fields_set and d.perf_requests != DEFAULTS["perf_requests"]
    if d.perf_duration_s is not None and chosen_requests:
        raise InputError(f"give {_label('perf_requests')} or {_label('perf_duration_s')}, not both")
    # every LoadSpec field comes from the setting perf_<field>, so a new one is declared, not copied
    shape = {
        f.name: getattr(d, f"perf_{f.name}") for f in fields(LoadSpec) if f"perf_{f.name}" in EvalDefaults.model_fields
    }
    shape.update(requests=None if d.perf_duration_s is not None else d.perf_requests, tokens=tokens)
    try:
        return LoadSpec(**shape)
    except LoadSpecError as err:
        name = str(err).split(":")[0]
        field = f"perf_{name}" if f"perf_{name}" in EvalDefaults.model_fields else None
        raise InputError(f"{_label(field) if field else name}{str(err)[len(name) :]}") from None


def perf_plan(d: EvalDefaults) -> PerfPlan:
    """Load shape, sweep and SLOs of the settings: what `sie-bench eval --type perf` and the
    perf_scores asset both run. Every sweep point is checked before anything starts."""
    from sie_evals.lib.perf.sweep import parse_slo, parse_sweep

    sweep = parse_sweep(d.perf_sweep) if d.perf_sweep else None
    token_values = _tokens(d.perf_tokens)
    if len(token_values) > 1:
        if sweep is not None:
            raise InputError(
                f"{_label('perf_tokens')} with several values is a sweep: it cannot be combined with --sweep"
            )
        sweep = parse_sweep(f"tokens={d.perf_tokens}")
    load = load_spec(d, token_values[0] if len(token_values) == 1 else None)
    if sweep is not None:
        for v in sweep.values:
            sweep.spec_at(load, v)
    slos = tuple(parse_slo(s) for s in (d.perf_slos or "").split(",") if s.strip())
    return PerfPlan(load, sweep, slos)
