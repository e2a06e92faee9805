"""The one place that says what a result means and how it is named.

- `EvalKey`: a Dagster partition, `model:task:source` (the compute source that ran).
- `ResultKey`: what a saved target, a measurement, a result file and a Dagster record are *of*:
  model, task, split and data slice, profile; for perf also the engine, load shape and hardware
  fingerprint. Quality (and Finesse) results are engine-independent: every engine serving the model
  is held to the model's target. Perf results are not: a latency saved from `sie` on one machine
  says nothing about `local` on another.

In a model config a result lives at `targets[task][profile][variant]` (measurements likewise, as a
list); `ResultKey.variant` is that last key:
    quality  `test`, or `test@q50-c1000` for a `--limit-queries 50 --corpus-size 1000` slice
    perf     `perf@corpus-b1-c16/test/local/amd-epyc-7b13x2` (load shape / data / engine / hardware)
    finesse  `probes`
Perf results saved before the engine and hardware were part of the key (`perf@corpus-b1-c16`) are
still found when their recorded conditions match, and `sie-bench migrate` renames them."""

import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.names import valid_variant, validate_name

SEP = ":"
DEFAULT_PROFILE = "default"
FINESSE_VARIANT = "probes"
PERF_PREFIX = "perf@"


class ResultKind(StrEnum):
    quality = "quality"
    perf = "perf"
    finesse = "finesse"


@dataclass(frozen=True)
class LoadShape:
    """A perf load: what is sent (corpus or queries), items per request, concurrent clients."""

    workload: str
    batch_size: int
    concurrency: int

    def __str__(self) -> str:
        return f"{self.workload}-b{self.batch_size}-c{self.concurrency}"


def data_slice(subset: dict[str, Any] | None) -> str | None:
    """The name of a deterministic slice (None for the full split)."""
    if not subset:
        return None
    if "limit_queries" in subset:
        return f"q{subset['limit_queries']}-c{subset['corpus_size']}"
    return f"n{subset['limit']}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def hardware_fingerprint(hardware: dict[str, Any]) -> str:
    """CPU model and count, and GPU names and counts: what perf numbers depend on (not the host name)."""
    parts = [f"{_slug(str(hardware.get('cpu') or 'unknown-cpu'))}x{int(hardware.get('cpu_count') or 0)}"]
    for name, count in sorted(Counter(hardware.get("gpus") or []).items()):
        parts.append(f"{_slug(name)}x{count}")
    return "+".join(parts)[:128]


@dataclass(frozen=True, order=True)
class EvalKey:
    model: str  # the model config's short name
    task: str  # canonical task id, e.g. beir/SciFact
    source: str

    def __post_init__(self) -> None:
        for part in (self.model, self.task, self.source):
            if not part or SEP in part:
                raise ValueError(f"key part {part!r} must be non-empty and contain no {SEP!r}")

    def __str__(self) -> str:
        return SEP.join((self.model, self.task, self.source))

    @classmethod
    def parse(cls, key: str) -> "EvalKey":
        parts = key.split(SEP)
        if len(parts) != 3:
            raise ValueError(f"partition key {key!r} is not model{SEP}task{SEP}source")
        return cls(*parts)

    def path_slug(self) -> str:
        return path_slug(str(self))


@dataclass(frozen=True)
class ResultKey:
    model: str  # the model config's short name
    task: str
    split: str
    profile: str = DEFAULT_PROFILE
    slice: str | None = None  # None: the full split
    kind: ResultKind = ResultKind.quality
    engine: str | None = None  # perf only
    load: str | None = None  # perf only: str(LoadShape)
    hardware: str | None = None  # perf only: hardware_fingerprint(...)

    def __post_init__(self) -> None:
        validate_name("split", self.split)
        validate_name("profile", self.profile)
        if self.slice is not None:
            validate_name("data slice", self.slice)
        perf_parts = (self.engine, self.load, self.hardware)
        if self.kind is ResultKind.perf:
            if None in perf_parts:
                raise ValueError("a perf key needs engine, load shape and hardware")
            validate_name("engine", str(self.engine))
            validate_name("load shape", str(self.load))
            if not valid_variant(str(self.hardware)) or "/" in str(self.hardware):
                raise ValueError(f"hardware fingerprint {self.hardware!r} is not a valid name")
        elif any(p is not None for p in perf_parts):
            raise ValueError(f"{self.kind} results are engine- and hardware-independent")

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def quality(
        cls, model: str, task: str, split: str, subset: dict[str, Any] | None = None, profile: str = DEFAULT_PROFILE
    ) -> "ResultKey":
        return cls(model, task, split, profile, data_slice(subset))

    @classmethod
    def perf(
        cls,
        model: str,
        task: str,
        split: str,
        subset: dict[str, Any] | None,
        profile: str,
        engine: str,
        load: "LoadShape | str",
        hardware: dict[str, Any],
    ) -> "ResultKey":
        return cls(
            model, task, split, profile, data_slice(subset), ResultKind.perf, engine, str(load),
            hardware_fingerprint(hardware),
        )  # fmt: skip

    @classmethod
    def finesse(cls, model: str, task: str, profile: str = DEFAULT_PROFILE) -> "ResultKey":
        return cls(model, task, FINESSE_VARIANT, profile, kind=ResultKind.finesse)

    # --- names --------------------------------------------------------------------------------
    @property
    def data_variant(self) -> str:
        return self.split if self.slice is None else f"{self.split}@{self.slice}"

    @property
    def variant(self) -> str:
        """The key under targets[task][profile] / measurements[task][profile] in a model config."""
        if self.kind is ResultKind.perf:
            return f"{PERF_PREFIX}{self.load}/{self.data_variant}/{self.engine}/{self.hardware}"
        if self.kind is ResultKind.finesse:
            return FINESSE_VARIANT
        return self.data_variant

    @property
    def legacy_variant(self) -> str | None:
        """How the same result was keyed before engine and hardware were part of perf keys."""
        return f"{PERF_PREFIX}{self.load}" if self.kind is ResultKind.perf else None

    @property
    def is_partition_default(self) -> bool:
        """Whether this result is what a Dagster partition (full split, default profile) stands for."""
        return self.slice is None and self.profile == DEFAULT_PROFILE

    def partition(self, source: str) -> str:
        return str(EvalKey(self.model, self.task, source))

    def where(self) -> str:
        return f"[{self.task}][{self.profile}][{self.variant}]"

    def file_stem(self) -> str:
        return path_slug(f"{self.task}__{self.profile}__{self.variant}")

    def as_dict(self) -> dict[str, str]:
        fields = {
            "model": self.model,
            "task": self.task,
            "split": self.split,
            "slice": self.slice or "full",
            "profile": self.profile,
            "kind": self.kind.value,
            "variant": self.variant,
        }
        if self.kind is ResultKind.perf:
            fields.update(engine=str(self.engine), load=str(self.load), hardware=str(self.hardware))
        return fields

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResultKey":
        """Inverse of as_dict (what asset outputs and records carry)."""
        kind = ResultKind(d.get("kind", "quality"))
        slice_ = d.get("slice")
        return cls(
            d["model"], d["task"], d["split"], d.get("profile", DEFAULT_PROFILE),
            None if slice_ in (None, "full") else slice_, kind,
            d.get("engine"), d.get("load"), d.get("hardware"),
        )  # fmt: skip

    def __str__(self) -> str:
        return f"{self.model}{self.where()}"


def perf_key_of_legacy(
    model: str, task: str, profile: str, variant: str, conditions: dict[str, Any]
) -> "ResultKey | None":
    """The full perf key of an entry saved under a legacy `perf@<load>` variant, from the run
    conditions it was saved with (None when they do not say enough)."""
    if not variant.startswith(PERF_PREFIX) or "/" in variant:
        return None
    engine, hardware, split = conditions.get("engine"), conditions.get("hardware"), conditions.get("split")
    if not engine or not isinstance(hardware, dict) or not split:
        return None
    try:
        return ResultKey(
            model, task, split, profile, data_slice(conditions.get("subset")), ResultKind.perf, engine,
            variant[len(PERF_PREFIX):], hardware_fingerprint(hardware),
        )  # fmt: skip
    except (InputError, ValueError):
        return None


def path_slug(partition_key: str) -> str:
    """A file-system-safe form of any key (task ids contain '/', eval keys ':')."""
    return partition_key.replace("/", "--").replace(SEP, "__")


# A profile with its own output type (sparse, multivector, MUVERA) is evaluated as its own partitions:
# the key's model part is `model@profile` (short names and profile names cannot contain '@').
PROFILE_SEP = "@"


def model_part(model: str, profile: str | None = None) -> str:
    """The model part of a key: the short name, plus `@profile` for a non-default profile."""
    return model if profile in (None, "default") else f"{model}{PROFILE_SEP}{profile}"


def split_model_part(part: str) -> tuple[str, str | None]:
    """`model@profile` -> (model, profile); a bare model -> (model, None): the deployment's profile."""
    model, sep, profile = part.partition(PROFILE_SEP)
    return model, (profile if sep else None)
