"""What an engine returned, checked before anything is scored (a bad reply is an EngineError, never a
metric), and the usage check that runs before anything loads: an output the engine cannot produce (which
outputs a task type can score is the task type's rule: lib/quality/task_types.py check_profile)."""

from typing import Any

import numpy as np

from sie_evals.lib.config.model_config import OutputType, ResolvedProfile
from sie_evals.lib.core.errors import EngineError, InputError
from sie_evals.lib.engines.vectors import MultiVectors, Output, SparseVectors, output_type_of


def check_engine_supports(engine: str, supported: frozenset[OutputType], profile: ResolvedProfile) -> None:
    """An output the engine cannot produce is a usage error, raised before anything loads."""
    if profile.output not in supported:
        names = ", ".join(sorted(o.value for o in supported))
        raise InputError(
            f"source {engine!r} cannot produce {profile.output.value} output (profile {profile.name!r}); "
            f"it produces: {names}"
        )


def validate_embeddings(vectors: Any, expected_rows: int, engine: str) -> np.ndarray:
    """Reject wrong counts, wrong rank and non-finite values: a bad reply must never be scored."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise EngineError(f"{engine}: expected a 2-D array of embeddings, got shape {arr.shape}")
    if arr.shape[0] != expected_rows:
        raise EngineError(f"{engine}: asked for {expected_rows} embeddings, got {arr.shape[0]}")
    if arr.shape[1] == 0:
        raise EngineError(f"{engine}: embeddings have zero dimensions")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise EngineError(f"{engine}: {int(bad.sum())} embedding(s) contain NaN or inf (first row {int(bad.argmax())})")
    return np.ascontiguousarray(arr)


def validate_output(raw: Any, rows: int, engine: str, profile: ResolvedProfile) -> Output:
    """What an engine returned, checked against the profile's output type (a bad reply is never scored)."""
    if profile.output == OutputType.dense:
        return validate_embeddings(raw, rows, engine)
    got = output_type_of(raw) if isinstance(raw, SparseVectors | MultiVectors) else OutputType.dense
    if got != profile.output:
        raise EngineError(f"{engine}: profile {profile.name!r} expects {profile.output.value} output, got {got.value}")
    if len(raw) != rows:
        raise EngineError(f"{engine}: asked for {rows} {got.value} outputs, got {len(raw)}")
    if isinstance(raw, SparseVectors):
        check_sparse(raw, engine)
    else:
        check_multivector(raw, engine)
    return raw


def check_sparse(sv: SparseVectors, engine: str) -> None:
    m = sv.matrix
    if m.dtype != np.float32 or not np.isfinite(m.data).all():
        raise EngineError(f"{engine}: sparse values must be finite float32")
    if m.nnz and (m.indices.min() < 0 or m.indices.max() >= m.shape[1]):
        raise EngineError(f"{engine}: sparse index outside the vocabulary of {m.shape[1]}")


def check_multivector(mv: MultiVectors, engine: str) -> None:
    if mv.values.dtype != np.float32 or mv.values.ndim != 2 or mv.values.shape[1] == 0:
        raise EngineError(f"{engine}: multivector values must be a float32 (tokens, dims) array, got {mv.values.shape}")
    if mv.offsets[0] != 0 or mv.offsets[-1] != len(mv.values) or (np.diff(mv.offsets) <= 0).any():
        raise EngineError(f"{engine}: multivector offsets are inconsistent (every text needs at least one token)")
    if not np.isfinite(mv.values).all():
        raise EngineError(f"{engine}: multivector values contain NaN or inf")
