"""Finesse benchmark config (YAML), validated strictly.

Differences from finesse-benchmark 0.18.9 (spec §2, §14), on purpose:
- unknown or misspelt keys are errors (0.18.9 silently ignored `tokper_sample: 500` in its leaderboard file);
- `sequence_length.min <= max`, positive counts, and a fixed integer seed are enforced;
- `probe_config.reference_tokenizer` names the ONE tokenizer that selects and cuts chunks, so every model
  sees identical chunk texts;
- `final_formula` (sum | balanced) is explicit and recorded with the results;
- `sampler` picks how chunks are drawn: `sie-evals` (default: one reference tokenizer, identical texts for
  every model) or `finesse-0.18.9` (the package's own lottery box and the model's tokenizer, for numbers
  comparable with the leaderboard).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from sie_evals.finesse.scoring import FinalFormula, Gap, Mode
from sie_evals.lib.core.errors import ConfigError, validation_error_message
from sie_evals.lib.core.strict import Float, Int, OptionalInt
from sie_evals.lib.core.text_files import read_utf8

DEFAULT_REFERENCE_TOKENIZER = "sentence-transformers/all-MiniLM-L6-v2"
# Hugging Face `datasets` builders that read local/explicit files; anything else is a hub dataset.
FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


class Sampler(StrEnum):
    sie_evals = "sie-evals"  # reference tokenizer, seeded numpy order: identical texts for every model
    finesse_0_18_9 = "finesse-0.18.9"  # the package's lottery box with the model's own tokenizer (leaderboard)


class Metric(StrEnum):
    rss = "rss"  # Robust Separation Score (TD + BU)
    srs = "srs"  # Sequence Recognition Sensitivity (+ position bias index)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedderSelector(_Strict):
    """A text embedder run through sie-evals' own engine (the `local` engine)."""

    name: str = Field(
        description="A model config in model_configs/ (model id, short name or file stem), a path to a model "
        "config YAML, or a Hugging Face id / local folder (run with the profile settings below)."
    )
    profile: str = Field("default", description="Profile of the model config.")
    pool_type: Literal["cls", "mean", "last"] | None = Field(None, description="Pooling; default: the profile's.")
    prefix: str | None = Field(None, description="Prepended to every text; default: the profile's document prefix.")
    max_context_length: OptionalInt = Field(
        None, gt=0, description="Tokens the model may see; default: the profile's max_seq_length."
    )
    revision: str | None = Field(None, description="Model revision, when `name` is not a model config.")


class MergerSelector(_Strict):
    """The sequence merger of merger_mode: `mean` (shipped baseline) or a Hugging Face sequence-merger checkpoint."""

    name: str = Field("mean", description="'mean' (mean pooling + L2 norm) or a checkpoint folder / hub id.")
    pool_type: Literal["cls", "mean", "last", "pooler"] = Field(
        "pooler", description="How a checkpoint's output is pooled."
    )
    revision: str | None = None
    trust_remote_code: bool = Field(
        False, description="Sequence mergers ship their own modelling code; it only runs when this is true."
    )


class ByokEmbedder(_Strict):
    """Any OpenAI-compatible embeddings endpoint (POST {base_url}{endpoint}, body {model, input})."""

    provider: str = "openai-compatible"
    name: str = Field(description="Model name sent in the request.")
    base_url: str = Field(description="e.g. http://127.0.0.1:8080")
    endpoint: str = "/v1/embeddings"
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (the key is never written out)."
    )
    max_context_length: Int = Field(gt=0)
    prefix: str = ""
    tokenizer: str | None = Field(
        None, description="Tokenizer for context-length checks (default: the reference tokenizer)."
    )
    batch_size: Int = Field(32, gt=0)
    timeout_s: Float = Field(120.0, gt=0)


class ModelsConfig(_Strict):
    merger: MergerSelector | None = None
    base_embedder: EmbedderSelector | None = None
    native_embedder: EmbedderSelector | None = None
    byok_embedder: ByokEmbedder | None = None


class DatasetConfig(_Strict):
    """A Hugging Face dataset (path + split, pinned by commit_hash) or local files (jsonl, json, parquet, txt)."""

    path: str | None = None
    split: str = "train"
    data_files: str | list[str] | None = None
    data_dir: str | None = None
    commit_hash: str | None = None
    local_files: list[str] | None = Field(
        None, description="Local files; relative to the config file, or 'data:<rel>' under $SIE_EVALS_DATA_DIR."
    )
    text_column: str = "text"
    id_column: str | None = Field("_id", description="Column used as document id in the record (row index if absent).")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.local_files is None):
            raise ValueError("set exactly one of 'path' (Hugging Face dataset) or 'local_files'")
        if self.local_files is not None and not self.local_files:
            raise ValueError("local_files must not be empty")
        if self.path and self.path not in FILE_BUILDERS and not self.commit_hash:
            raise ValueError(f"hub dataset {self.path!r} needs a commit_hash (runs must be reproducible)")
        return self


class SequenceLength(_Strict):
    min: Int = Field(4, ge=4, description="Shortest probe (chunks); 4 as in 0.18.9's generate (RSS and SRS).")
    max: Int = Field(16, ge=4)

    @model_validator(mode="after")
    def _ordered(self) -> SequenceLength:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class ProbeConfig(_Strict):
    sequence_length: SequenceLength = Field(default_factory=SequenceLength)
    samples_per_length: Int = Field(10, gt=0)
    token_per_sample: Int = Field(256, gt=0)
    group_amount: Int = Field(
        50, gt=0, description="SRS only: context n-grams per probe position (positive and negative groups)."
    )
    reference_tokenizer: str = Field(
        DEFAULT_REFERENCE_TOKENIZER,
        description="Tokenizer that selects and cuts chunks for every model: a model config name or tokenizer folder.",
    )


class Advanced(_Strict):
    batch_size: Int = Field(32, gt=0, description="Chunk-embedding batch size.")
    device: Literal["cpu"] = Field("cpu", description="The local engine runs on CPU in this build.")
    threads: OptionalInt = Field(None, gt=0, description="Torch threads for the local engine (default: torch's).")


class FinesseConfig(_Strict):
    metric: Metric = Field(Metric.rss, description="rss (TD/BU separation) or srs (order sensitivity + PBI).")
    sampler: Sampler = Field(
        Sampler.sie_evals,
        description="sie-evals: identical chunk texts for every model (reference tokenizer); finesse-0.18.9: "
        "the package's own draws with the model's tokenizer (leaderboard-comparable).",
    )
    formula: Gap = Gap.q1q3
    final_formula: FinalFormula = Field(
        FinalFormula.sum, description="sum = 500(TD+BU) (0.18.9, leaderboard); balanced = 500((TD+BU)/2-|TD-BU|)."
    )
    mode: Mode = Mode.native_mode
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    datasets: list[DatasetConfig] = Field(min_length=1)
    probe_config: ProbeConfig = Field(default_factory=ProbeConfig)
    advanced: Advanced = Field(default_factory=Advanced)
    seed: Int = 42

    @model_validator(mode="after")
    def _mode_models(self) -> FinesseConfig:
        m = self.models
        need = {
            Mode.merger_mode: ("merger", "base_embedder"),
            Mode.native_mode: ("native_embedder",),
            Mode.byok_mode: ("byok_embedder",),
        }[self.mode]
        missing = [n for n in need if getattr(m, n) is None]
        if missing:
            raise ValueError(f"mode {self.mode.value} needs models.{' and models.'.join(missing)}")
        return self

    def lengths(self) -> list[int]:
        s = self.probe_config.sequence_length
        return list(range(s.min, s.max + 1))

    def chunks_needed(self) -> int:
        """Chunks one run draws: L per RSS probe; (L-1) probe + group_amount*(L-2) context chunks per SRS one."""
        pc = self.probe_config
        if self.metric == Metric.srs:
            per = [(n - 1) + pc.group_amount * (n - 2) for n in self.lengths()]
        else:
            per = self.lengths()
        return sum(per) * pc.samples_per_length

    def model_name(self) -> str:
        m = self.models
        if self.mode == Mode.merger_mode:
            assert m.merger and m.base_embedder
            return f"{m.merger.name}+{m.base_embedder.name}"
        if self.mode == Mode.native_mode:
            assert m.native_embedder
            return m.native_embedder.name
        assert m.byok_embedder
        return f"{m.byok_embedder.provider}:{m.byok_embedder.name}"


def parse_config(data: Any, source: str = "<config>") -> FinesseConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a Finesse config must be a YAML mapping, got {type(data).__name__}")
    try:
        return FinesseConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_error_message(source, "Finesse config", err)) from None


def load_config(path: Path) -> FinesseConfig:
    path = Path(path)
    try:
        text = read_utf8(path, ConfigError)  # a stray Latin-1 byte: exit 2 naming file:line:column
    except OSError as err:
        raise ConfigError(f"{path}: cannot read Finesse config: {err.strerror}") from None
    try:
        data = YAML(typ="safe", pure=True).load(text)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {err}") from None
    return parse_config(data, str(path))


def packaged_config_path(name: str) -> Path:
    """A config shipped with sie-evals (sie_evals/data/finesse/<name>.yaml), e.g. rss-default."""
    path = Path(__file__).resolve().parents[1] / "data" / "finesse" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no packaged Finesse config {name!r} (looked for {path})")
    return path


TEMPLATE = """\
# Finesse benchmark config (sie-evals). Unknown keys are errors. Docs: docs/finesse.md.
metric: rss                 # rss = Robust Separation Score; srs = Sequence Recognition Sensitivity (+ PBI)
sampler: sie-evals          # sie-evals: same chunk texts for every model; finesse-0.18.9: leaderboard draws
formula: q1q3               # gap per row: q1q3 = Q1(memory) - Q3(noise); q2q2 = median - median
final_formula: sum          # sum = 500*(TD+BU) (0.18.9, leaderboard); balanced = 500*((TD+BU)/2 - |TD-BU|)
mode: native_mode           # native_mode | merger_mode | byok_mode

models:
  native_embedder:          # native_mode: embeds the joined prefix text of each synthesis step
    name: sentence-transformers/all-MiniLM-L6-v2   # model config in model_configs/, or HF id / folder
    profile: default
    # pool_type: mean       # default: the profile's pooling
    # prefix: ""            # default: the profile's document prefix
    # max_context_length: 256   # default: the profile's max_seq_length; longer lengths are reported as skipped
  # merger_mode: a merger over base-embedder chunk embeddings
  # merger:
  #   name: mean            # shipped mean-pooling baseline, or a sequence-merger checkpoint folder
  #   pool_type: pooler
  #   trust_remote_code: false
  # base_embedder:
  #   name: sentence-transformers/all-MiniLM-L6-v2
  # byok_mode: any OpenAI-compatible /v1/embeddings endpoint
  # byok_embedder:
  #   name: my-model
  #   base_url: http://127.0.0.1:8080
  #   api_key_env: MY_API_KEY    # the variable's NAME; the key itself stays in the environment
  #   max_context_length: 512

datasets:                   # documents; each chunk is the opening token_per_sample tokens of one document
  - local_files: [data:scifact/corpus.jsonl]   # 'data:' = under $SIE_EVALS_DATA_DIR; else relative to this file
    text_column: text
  # - path: uonlp/CulturaX  # a Hugging Face dataset, pinned
  #   split: train
  #   data_files: en/en_part_00000.parquet
  #   commit_hash: 6a8734bc69fefcbb7735f4f9250f43e4cd7a442e
  #   text_column: text

probe_config:
  sequence_length: {min: 4, max: 8}
  samples_per_length: 10
  token_per_sample: 32
  group_amount: 50          # srs only: context n-grams per probe position
  reference_tokenizer: sentence-transformers/all-MiniLM-L6-v2   # cuts chunks for every model (sampler sie-evals)

advanced:
  batch_size: 32
  device: cpu

seed: 42
"""

LEADERBOARD_LANGS = tuple(
    "en ru es de fr zh it pt pl ja nl ar tr cs vi fa hu el ro sv uk fi ko da bg no hi sk th lt ca id".split()  # noqa: SIM905
)
CULTURAX_REVISION = "6a8734bc69fefcbb7735f4f9250f43e4cd7a442e"


def leaderboard_template() -> str:
    """The official leaderboard settings in this schema: seed 42, lengths 4-32, 25 samples per length,
    256 tokens per chunk (what 0.18.9 effectively used; its YAML's `tokper_sample: 500` was a typo it ignored),
    group_amount 100, and 0.18.9's own sampler so every submission sees the leaderboard's draws."""
    datasets = "\n".join(
        f"  - {{path: uonlp/CulturaX, split: train, data_files: {lang}/{lang}_part_00000.parquet, "
        f"commit_hash: {CULTURAX_REVISION}, text_column: text}}"
        for lang in LEADERBOARD_LANGS
    )
    return f"""\
# Finesse leaderboard settings (finesse-benchmark 0.18.9's benchmark.leaderboard.yaml in sie-evals' schema).
# sampler finesse-0.18.9 reproduces the package's draws exactly (its lottery box over the datasets, seed 42, and
# the model's OWN tokenizer to select and cut chunks), so the probes are the leaderboard's. Offline: download
# uonlp/CulturaX's parquet shards once and pass the folder with `finesse generate --dataset-path`.
metric: rss
sampler: finesse-0.18.9
formula: q1q3
final_formula: sum          # 0.18.9 computes 500*(TD+BU): keep `sum` to compare with leaderboard numbers
mode: merger_mode
models:
  merger:
    name: enzoescipy/sequence-merger-malgeum
    pool_type: pooler
    trust_remote_code: true
  base_embedder:
    name: intfloat/multilingual-e5-base
    pool_type: mean
    prefix: "passage: "
    max_context_length: 512
datasets:
{datasets}
probe_config:
  sequence_length: {{min: 4, max: 32}}
  samples_per_length: 25
  token_per_sample: 256
  group_amount: 100
  reference_tokenizer: intfloat/multilingual-e5-base   # unused by sampler finesse-0.18.9
advanced:
  batch_size: 8
  device: cpu
seed: 42
"""
