"""`runtime: auto`: the fastest exact runtime of the `local` engine on this machine.

On first use per machine (CPU model and count, threads), model (id, revision, weights, the profile
fields that change vectors), batch size and installed runtime versions, a short calibration embeds a
few batches of real text (the module docs of Python's standard library: every install has them, and
their lengths range from a few tokens to past max_seq_length, like queries and documents) with every
installed runtime: torch, ONNX Runtime and OpenVINO on the ONNX export. Only a runtime whose vectors
are within EXPORT_TOLERANCE (1e-5, the export's own gate) of torch's on the same texts is a candidate;
the fastest candidate wins (torch when none passes). The choice and its timings are cached as a small
JSON under the cache root and recorded in the run conditions; results stay keyed by the profile name.
"""

import hashlib
import importlib
import inspect
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sie_evals.lib.config.model_config import Dtype, ModelConfig, OutputType, ResolvedProfile, Runtime
from sie_evals.lib.core.atomic import atomic_write_json
from sie_evals.lib.core.run_conditions import cpu_model, now_iso

log = logging.getLogger(__name__)

CHOICE_FORMAT = 2  # 2: ONNX Runtime without spinning threads
# Where auto keeps its choices (and the exports it calibrates): the cache root unless this is set. The
# test suite points it at one folder per session so each test with its own cache does not re-export.
RUNTIME_CACHE_ENV = "SIE_EVALS_RUNTIME_CACHE_DIR"
CANDIDATES = (Runtime.torch, Runtime.onnx, Runtime.openvino)
RUNTIME_MODULES = {Runtime.torch: "torch", Runtime.onnx: "onnxruntime", Runtime.openvino: "openvino"}
TIMED_ROUNDS = 3  # runtimes timed in turn, best of each: a load spike hits one round, not one runtime
# Standard-library modules whose docs are the calibration text (a few tokens to ~1,400 tokens each).
_TEXT_MODULES = (
    "argparse", "collections", "subprocess", "logging", "statistics", "random", "heapq", "difflib", "unittest",
    "pickle", "sqlite3", "csv", "typing", "inspect", "ast", "tempfile", "socket", "json", "shutil", "functools",
)  # fmt: skip


@dataclass
class RuntimeChoice:
    runtime: Runtime
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)  # best timed pass over the calibration texts
    max_abs_delta: dict[str, float] = field(default_factory=dict)  # vs torch, same texts
    rejected: dict[str, str] = field(default_factory=dict)  # runtime -> why it was not a candidate
    texts: int = 0
    calibrated: str | None = None  # when (ISO 8601); None: decided without calibrating
    file: str | None = None  # the cached choice

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["runtime"] = self.runtime.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RuntimeChoice":
        return cls(**{**data, "runtime": Runtime(data["runtime"])})


def static_choice(profile: ResolvedProfile, device_kind: str) -> RuntimeChoice | None:
    """torch without calibrating when it is the only runtime that can run the profile."""
    if device_kind != "cpu":
        return RuntimeChoice(Runtime.torch, f"device {device_kind}: the exported runtimes run on the CPU")
    if profile.output != OutputType.dense:
        return RuntimeChoice(Runtime.torch, f"output {profile.output.value}: the exported runtimes are dense only")
    if profile.dtype != Dtype.float32:
        return RuntimeChoice(Runtime.torch, f"dtype {profile.dtype.value}: the ONNX export is float32")
    return None


def runtime_cache_root(cache_root: Path) -> Path:
    value = os.environ.get(RUNTIME_CACHE_ENV)
    return Path(value).expanduser().resolve() if value else Path(cache_root)


def _version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def choice_identity(
    model: ModelConfig, profile: ResolvedProfile, weights: str, threads: int, batch_size: int
) -> dict[str, Any]:
    """What the choice depends on: a change of any of these calibrates again."""
    return {
        "format": CHOICE_FORMAT,
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine": platform.machine(),
        "threads": threads,
        "batch_size": batch_size,
        "model_id": model.model_id,
        "model_revision": model.revision,
        "weights": weights,
        "profile": profile.embedding_identity(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("torch", "transformers", "tokenizers", "onnxruntime", "openvino")},
    }


def choice_file(root: Path, model: ModelConfig, identity: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return Path(root) / "runtime_choice" / f"{model.short_name}-{key}.json"


def load_choice(path: Path, identity: dict[str, Any]) -> RuntimeChoice | None:
    """The cached choice, or None (missing, unreadable or another identity: calibrate again)."""
    try:
        data = json.loads(path.read_text())
        if data.get("identity") != identity:
            return None
        choice = RuntimeChoice.from_dict(data["choice"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    choice.file = str(path)
    return choice


def save_choice(path: Path, choice: RuntimeChoice, identity: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    choice.file = str(path)
    atomic_write_json(path, {"identity": identity, "choice": choice.as_dict()})


def calibration_texts() -> list[str]:
    """Real prose of many lengths: each module's doc, and its first paragraph (short, like a query)."""
    texts: list[str] = []
    for name in _TEXT_MODULES:
        doc = inspect.getdoc(importlib.import_module(name)) or ""
        if doc.strip():
            texts.append(doc)
            first = doc.split("\n\n", 1)[0].strip()
            if first != doc:
                texts.append(first)
    if not texts:  # python -OO strips docstrings: the export's probe texts, repeated
        from sie_evals.lib.engines.export import PROBE_TEXTS

        texts = PROBE_TEXTS * 8
    return texts


def decide(
    seconds: dict[Runtime, float], deltas: dict[Runtime, float], rejected: dict[Runtime, str], tolerance: float
) -> tuple[Runtime, str]:
    """The fastest runtime among torch and those within `tolerance` of torch; why, in words."""
    passing = {r: s for r, s in seconds.items() if r == Runtime.torch or deltas.get(r, np.inf) <= tolerance}
    best = min(passing, key=passing.__getitem__)
    timings = ", ".join(f"{r.value} {s:.3f}s" for r, s in passing.items())
    why = "; ".join(f"{r.value}: {w}" for r, w in rejected.items())
    if best != Runtime.torch:
        reason = f"the fastest exact runtime ({timings})"
    elif len(passing) == 1 and why:
        reason = "torch, the fallback: no exported runtime can be used"
    else:
        reason = f"torch is the fastest ({timings})"
    return best, reason + (f"; not candidates: {why}" if why else "")


def calibrate(
    build: Callable[[Runtime], Callable[[list[str]], np.ndarray]],
    texts: list[str],
    warmup: int,
    tolerance: float,
    candidates: tuple[Runtime, ...] = CANDIDATES,
) -> tuple[RuntimeChoice, dict[Runtime, Callable]]:
    """Time every runtime `build` can make on `texts`; `build(runtime)` returns its embed function or
    raises (ImportError: not installed; any other error: it cannot run this model). Returns the choice
    and the embed functions built (the engine keeps the chosen one's model)."""
    fns: dict[Runtime, Callable] = {}
    rejected: dict[Runtime, str] = {}
    for runtime in candidates:
        try:
            fns[runtime] = build(runtime)
        except ImportError as err:
            if runtime == Runtime.torch:
                raise
            rejected[runtime] = f"{RUNTIME_MODULES[runtime]} is not installed ({err})"
        except Exception as err:  # an export or a runtime that cannot load this model
            if runtime == Runtime.torch:
                raise
            rejected[runtime] = f"cannot run this model: {type(err).__name__}: {err}"
    for fn in fns.values():  # first-call costs (allocations, kernel selection) are not the runtime's speed
        fn(texts[:warmup])
    seconds: dict[Runtime, float] = {}
    vectors: dict[Runtime, np.ndarray] = {}
    for _ in range(TIMED_ROUNDS):
        for runtime, fn in fns.items():
            start = time.perf_counter()
            vectors[runtime] = fn(texts)
            seconds[runtime] = min(seconds.get(runtime, np.inf), time.perf_counter() - start)
    reference = vectors[Runtime.torch]
    deltas = {r: float(np.abs(v - reference).max()) for r, v in vectors.items() if r != Runtime.torch}
    for runtime, delta in deltas.items():
        if not delta <= tolerance:
            rejected[runtime] = f"fails the parity gate: max |delta| {delta:.2e} vs torch > {tolerance:g}"
    runtime, reason = decide(seconds, deltas, rejected, tolerance)
    choice = RuntimeChoice(
        runtime=runtime,
        reason=reason,
        seconds={r.value: round(s, 4) for r, s in seconds.items()},
        max_abs_delta={r.value: d for r, d in deltas.items()},
        rejected={r.value: w for r, w in rejected.items()},
        texts=len(texts),
        calibrated=now_iso(),
    )
    return choice, fns
