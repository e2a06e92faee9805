"""Parity between two sources: per-item cosine of their vectors for the same input texts.

Two engines serving the same weights should agree to float precision (cosine ~1.0 per item); a
mean that is high while the minimum is low points at a few inputs handled differently (truncation,
special characters), which an aggregate quality metric would hide.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np


def per_item_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of row i of `a` with row i of `b` (same texts, same order). Sparse and multivector
    outputs: engines/vectors.py item_cosines."""
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        from sie_evals.lib.engines.vectors import item_cosines

        return item_cosines(a, b)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"parity needs two arrays of the same 2-D shape, got {a.shape} and {b.shape}")
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.clip(cos, -1.0, 1.0)


def summarize(cos: np.ndarray) -> dict[str, Any]:
    cos = np.asarray(cos, dtype=np.float64)
    if cos.size == 0:
        return {"n": 0, "mean_cosine": None, "min_cosine": None, "p01_cosine": None, "argmin": None}
    return {
        "n": int(cos.size),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "p01_cosine": float(np.percentile(cos, 1)),
        "argmin": int(cos.argmin()),
    }


def parity(reference: Mapping[Any, np.ndarray], other: Mapping[Any, np.ndarray]) -> dict[str, Any]:
    """Parity of `other` against `reference`, per kind of input (query/document) and over all items.
    Both map kind -> vectors for the same texts in the same order."""
    if set(reference) != set(other):
        raise ValueError(
            f"parity: different kinds of inputs {sorted(map(str, reference))} vs {sorted(map(str, other))}"
        )
    by_kind = {str(k): per_item_cosine(reference[k], other[k]) for k in reference}
    out = summarize(np.concatenate(list(by_kind.values()))) if by_kind else summarize(np.zeros(0))
    out.pop("argmin", None)
    out["by_kind"] = {k: summarize(c) for k, c in by_kind.items()}
    return out


def parity_against(results: list[Any], reference: str = "local") -> dict[str, dict[str, Any]]:
    """Parity of every other computed source against `reference` (a quality eval's SourceResults,
    which carry their vectors). Empty when the reference source is not among them."""
    by_source = {r.source: r for r in results if getattr(r, "vectors", None) is not None}
    ref = by_source.get(reference)
    if ref is None:
        return {}
    return {s: parity(ref.vectors, r.vectors) for s, r in by_source.items() if s != reference}
