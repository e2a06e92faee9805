"""Report fields of a non-dense profile: output type, similarity, and what its vectors look like."""

from typing import Any

import numpy as np

from sie_evals.lib.config.model_config import OutputType, ResolvedProfile
from sie_evals.lib.engines.vectors import MultiVectors, MuveraVectors, Output, SparseVectors, similarity


def describe(profile: ResolvedProfile, vectors: dict[Any, Output]) -> dict[str, Any]:
    """Report fields of a non-dense profile: output type, similarity, and per kind the sparse nnz per
    text or the tokens per text (mean, p50, max)."""
    if profile.output == OutputType.dense:
        return {}
    out: dict[str, Any] = {"output": profile.output.value, "similarity": similarity(profile)}
    if profile.muvera is not None:
        out["muvera"] = {**profile.muvera.model_dump(), "dims": profile.muvera.dims}
    for kind, v in vectors.items():
        v = v.tokens if isinstance(v, MuveraVectors) else v
        counts = (
            v.nnz_per_row() if isinstance(v, SparseVectors) else v.lengths() if isinstance(v, MultiVectors) else None
        )
        if counts is not None and len(counts):
            name = "nnz_per_text" if isinstance(v, SparseVectors) else "tokens_per_text"
            out[f"{kind}_{name}"] = {
                "mean": round(float(counts.mean()), 2),
                "p50": float(np.median(counts)),
                "max": int(counts.max()),
            }
    return out


def perf_fields(profile: ResolvedProfile, sizes: list[np.ndarray]) -> dict[str, Any]:
    """Perf report fields of a non-dense profile: output type and nnz (sparse) or tokens (multivector)
    per text over every text sent."""
    if profile.output == OutputType.dense:
        return {}
    out: dict[str, Any] = {"output": profile.output.value, "muvera": profile.muvera is not None}
    if sizes:
        counts = np.concatenate(sizes)
        name = "nnz_per_text" if profile.output == OutputType.sparse else "tokens_per_text"
        out[name] = {"mean": round(float(counts.mean()), 2), "p50": float(np.median(counts)), "max": int(counts.max())}
    return out
