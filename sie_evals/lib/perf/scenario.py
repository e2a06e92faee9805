"""Load-test scenarios (`sie-bench loadtest SCENARIO.yaml`): which models and sources, which task's
texts, and a list of load profiles run one after another, each open-loop with a target request rate
that is constant, ramps linearly, or steps, an in-flight cap, a duration and a warm-up."""

import math
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.sources import COMPUTE_SOURCES
from sie_evals.lib.core.strict import Float, Int, OptionalFloat, OptionalInt
from sie_evals.lib.core.text_files import read_utf8
from sie_evals.lib.perf.limits import duration_problem, in_flight_problem, rate_problem


def _in_range(why: str | None) -> None:
    if why:  # a custom error type: pydantic then shows the message as it is (no "Value error, ")
        raise PydanticCustomError("out_of_range", why)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelEntry(_Strict):
    model: str
    profile: str = "default"


class LoadProfile(_Strict):
    name: str
    pattern: Literal["constant", "ramp", "step"] = "constant"
    # rates, durations and the cap: range-checked below (limits.py), the range named in the error
    rps: Float = Field(description="target requests/s (ramp: at the end; step: unused, see steps)")
    start_rps: OptionalFloat = Field(default=None, description="ramp: target requests/s at the start")
    steps: list[Float] | None = Field(default=None, description="step: target requests/s of each equal step")
    duration_s: Float
    warmup_s: Float = 0.0
    concurrency: Int = Field(default=64, description="in-flight cap")
    on_cap: Literal["late", "drop"] = "late"
    arrival: Literal["constant", "poisson", "gamma"] = "poisson"
    burstiness: Float = 1.0
    batch_size: Int = Field(default=1, ge=1)

    @field_validator("rps", "start_rps")
    @classmethod
    def _rate(cls, v: float | None) -> float | None:
        if v is not None:
            _in_range(rate_problem(v))
        return v

    @field_validator("steps")
    @classmethod
    def _step_rates(cls, steps: list[float] | None) -> list[float] | None:
        for k, v in enumerate(steps or []):
            if why := rate_problem(v):
                _in_range(f"step {k}: {why}")
        return steps

    @field_validator("duration_s")
    @classmethod
    def _duration(cls, v: float) -> float:
        _in_range(duration_problem(v))
        return v

    @field_validator("warmup_s")
    @classmethod
    def _warmup(cls, v: float) -> float:
        _in_range(duration_problem(v, allow_zero=True))
        return v

    @field_validator("concurrency")
    @classmethod
    def _cap(cls, v: int) -> int:
        _in_range(in_flight_problem(v))
        return v

    @field_validator("burstiness")
    @classmethod
    def _burstiness(cls, v: float) -> float:
        if not (v > 0 and math.isfinite(v)):
            _in_range(f"must be a finite number > 0, got {v!r}")
        return v

    @model_validator(mode="after")
    def _pattern_fields(self) -> "LoadProfile":
        if self.pattern == "ramp" and self.start_rps is None:
            raise ValueError("pattern ramp needs start_rps")
        if self.pattern == "step" and not self.steps:
            raise ValueError("pattern step needs steps: [rps, rps, ...]")
        return self

    def rate_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, rates) over the counted duration, for openloop.schedule_for_rate_curve."""
        d = self.duration_s
        if self.pattern == "constant":
            return np.array([0.0, d]), np.array([self.rps, self.rps])
        if self.pattern == "ramp":
            t = np.linspace(0.0, d, 201)
            return t, self.start_rps + (self.rps - self.start_rps) * t / d  # type: ignore[operator]
        steps = self.steps or []
        t = np.linspace(0.0, d, len(steps) + 1)
        return t, np.array([*steps, steps[-1]])

    def target_at(self, t: float) -> float:
        times, rates = self.rate_curve()
        k = int(np.searchsorted(times, t, side="right") - 1)
        if self.pattern == "ramp":
            return float(np.interp(t, times, rates))
        return float(rates[min(max(k, 0), len(rates) - 1)])


class DataSlice(_Strict):
    limit_queries: OptionalInt = Field(default=None, ge=1)
    corpus_size: OptionalInt = Field(default=None, ge=1)


class Scenario(_Strict):
    name: str = "loadtest"
    task: str = "beir/SciFact"
    workload: Literal["corpus", "queries"] = "corpus"
    tokens: OptionalInt = Field(default=None, ge=1, description="texts of exactly this many tokens")
    data: DataSlice = Field(default_factory=DataSlice)
    models: list[ModelEntry] = Field(min_length=1)
    sources: list[str] = Field(min_length=1)
    profiles: list[LoadProfile] = Field(min_length=1)
    seed: Int = 0
    slos: list[str] = Field(default_factory=list)
    window_s: Float = Field(default=5.0, gt=0, le=3600, description="rolling window of the live display")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, sources: list[str]) -> list[str]:
        for s in sources:
            if s not in COMPUTE_SOURCES:
                raise ValueError(f"unknown source {s!r}; valid: {', '.join(COMPUTE_SOURCES)}")
        return sources

    @field_validator("profiles")
    @classmethod
    def _unique_profiles(cls, profiles: list[LoadProfile]) -> list[LoadProfile]:
        names = [p.name for p in profiles]
        if len(set(names)) != len(names):
            raise ValueError("profile names must be unique")
        return profiles

    @field_validator("slos")
    @classmethod
    def _valid_slos(cls, slos: list[str]) -> list[str]:
        from sie_evals.lib.perf.sweep import parse_slo

        for s in slos:
            try:
                parse_slo(s)
            except InputError as err:
                raise ValueError(str(err).removeprefix("--slo ")) from None
        return slos


def load_scenario(path: Path) -> Scenario:
    """Parse and validate; InputError (exit 2) naming the file and the field or line."""
    path = Path(path)
    try:
        raw = yaml.safe_load(read_utf8(path))  # a non-UTF-8 byte: InputError naming line and column
    except OSError as err:
        raise InputError(f"{path}: cannot read scenario: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{path}:{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a scenario is a mapping (models, sources, profiles, ...)")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(f"{path}: field '{field}': {first['msg']}") from None
