"""What a result is of, and the one way to name it and say what it was measured under: the CLI
(lib/harness/eval_run.py) and the Dagster assets (defs/evals/assets.py) both call `result_key` and
`conditions` here, so a key or a saved condition cannot differ between the two."""

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from sie_evals.lib.config.model_config import ModelConfig
from sie_evals.lib.core.errors import SieEvalsError
from sie_evals.lib.core.run_conditions import hardware as this_hardware
from sie_evals.lib.gates.conditions import summarize
from sie_evals.lib.gates.keys import ResultKey
from sie_evals.lib.perf.load import LoadSpec


class _Task(Protocol):
    task_id: str


class _Data(Protocol):
    split: str
    subset: dict[str, Any] | None


@dataclass(frozen=True)
class EvalSubject:
    """One cell of an eval: model (the config's short name), profile name, task, data slice, source."""

    model: str
    profile: str
    spec: _Task
    data: _Data
    source: str


@dataclass(frozen=True)
class PerfLoad:
    """A perf result's load: the shape, what it encodes, the swept parameter, and where it ran."""

    load: LoadSpec
    workload: str = "corpus"
    swept: str | None = None  # the parameter a sweep varies (left out of the shape, named instead)
    hardware: dict[str, Any] | None = None  # None: this machine


def result_key(subject: EvalSubject, perf: PerfLoad | None = None) -> ResultKey:
    """The key of one result: quality keys are engine-independent; perf keys name the engine, the load
    shape and the hardware."""
    s = subject
    if perf is None:
        return ResultKey.quality(s.model, s.spec.task_id, s.data.split, s.data.subset, s.profile)
    shape = perf.load.shape_key(perf.workload, perf.swept)
    hw = perf.hardware if perf.hardware is not None else this_hardware()
    return ResultKey.perf(s.model, s.spec.task_id, s.data.split, s.data.subset, s.profile, s.source, shape, hw)


@lru_cache(maxsize=8)
def _folder_hash(folder: str) -> str | None:
    """sha256 over every file's relative name and content in a local weights folder."""
    root = Path(folder)
    if not root.is_dir():
        return None  # a hub id: the revision names it
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def weights_hash(config: ModelConfig) -> str | None:
    from sie_evals.lib.engines.local import resolve_weights

    try:
        return _folder_hash(resolve_weights(config))
    except SieEvalsError:
        return None


def conditions(
    run_conditions: dict[str, Any], config: ModelConfig, profile_settings: dict[str, Any] | None
) -> dict[str, Any]:
    """What is saved with a target or measurement, and diffed when a check fails: the run's
    conditions, the weights' hash and the profile's settings."""
    return summarize({**run_conditions, "weights_hash": weights_hash(config)}, profile_settings)
