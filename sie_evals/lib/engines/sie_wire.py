"""SIE's wire format for sparse and multivector outputs (encode reply items), and sparse rows given as
(indices, values) pairs: parsed into checked vector types, a malformed reply is an EngineError."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from sie_evals.lib.config.model_config import OutputType
from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines.vectors import MultiVectors, Output, SparseVectors


def sparse_from_items(items: Sequence[tuple[Any, Any]], vocab: int, engine: str) -> SparseVectors:
    """Rows given as (indices, values) pairs, e.g. a server's reply. An index outside [0, vocab) names
    the item and the index; duplicate indices in one row are an error (their sum would be a guess)."""
    indptr = [0]
    all_idx: list[np.ndarray] = []
    all_val: list[np.ndarray] = []
    for i, (indices, values) in enumerate(items):
        try:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            val = np.asarray(values, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as err:
            raise EngineError(f"{engine}: sparse item {i}: indices/values are not numbers ({err})") from None
        if idx.shape != val.shape:
            raise EngineError(f"{engine}: sparse item {i}: {idx.size} indices but {val.size} values")
        bad = (idx < 0) | (idx >= vocab)
        if bad.any():
            raise EngineError(
                f"{engine}: sparse item {i}: index {int(idx[bad][0])} is outside the model's vocabulary "
                f"(size {vocab}); {int(bad.sum())} out-of-vocabulary index(es) in this item"
            )
        if len(np.unique(idx)) != len(idx):
            raise EngineError(f"{engine}: sparse item {i}: duplicate indices")
        if not np.isfinite(val).all():
            raise EngineError(f"{engine}: sparse item {i}: values contain NaN or inf")
        keep = val != 0
        order = np.argsort(idx[keep], kind="stable")
        all_idx.append(idx[keep][order])
        all_val.append(val[keep][order])
        indptr.append(indptr[-1] + int(keep.sum()))
    matrix = sp.csr_matrix(
        (
            np.concatenate(all_val) if all_val else np.zeros(0, np.float32),
            np.concatenate(all_idx) if all_idx else np.zeros(0, np.int64),
            np.asarray(indptr, dtype=np.int64),
        ),
        shape=(len(items), vocab),
        dtype=np.float32,
    )
    return SparseVectors(matrix)


def vocab_size(weights_dir: str) -> int | None:
    """The vocabulary of a checkpoint folder (config.json vocab_size): the width of its sparse vectors."""
    import json

    try:
        return int(json.loads((Path(weights_dir) / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def parse_sie_items(items: list[Any], output: OutputType, vocab: int | None, engine: str = "sie") -> Output:
    """SIE encode reply items (JSON): `sparse: {dims, dtype, indices, values}` or
    `multivector: {token_dims, num_tokens, dtype, values}` (values nested per token, or flat)."""
    key = output.value
    found = []
    for i, item in enumerate(items):
        block = item.get(key) if isinstance(item, dict) else None
        if not isinstance(block, dict) or "values" not in block:
            have = sorted(k for k in item if k in ("dense", "sparse", "multivector")) if isinstance(item, dict) else []
            raise EngineError(
                f"{engine}: encode reply item {i} has no {key} output (it has: {', '.join(have) or 'none'}); "
                f"the served model does not produce {key} vectors"
            )
        found.append(block)
    if output == OutputType.sparse:
        dims = {b.get("dims") for b in found} - {None}
        if vocab is None:
            if len(dims) != 1:
                raise EngineError(f"{engine}: sparse replies must state one vocabulary size (dims), got {dims}")
            vocab = int(dims.pop())
        elif dims and dims != {vocab}:
            raise EngineError(f"{engine}: sparse dims {sorted(dims)} differ from the model's vocabulary ({vocab})")
        return sparse_from_items([(b.get("indices"), b.get("values")) for b in found], vocab, engine)
    vectors = []
    for i, b in enumerate(found):
        try:
            values = np.asarray(b["values"], dtype=np.float32)
            tokens, dims = int(b.get("num_tokens", -1)), int(b.get("token_dims", -1))
        except (TypeError, ValueError) as err:
            raise EngineError(f"{engine}: multivector item {i}: values are not numbers ({err})") from None
        if values.ndim == 1 and tokens > 0 and dims > 0 and values.size == tokens * dims:
            values = values.reshape(tokens, dims)
        if values.ndim != 2 or values.shape[0] == 0 or (tokens > 0 and values.shape[0] != tokens):
            raise EngineError(f"{engine}: multivector item {i}: expected (num_tokens, token_dims), got {values.shape}")
        vectors.append(values)
    if len({v.shape[1] for v in vectors}) > 1:
        raise EngineError(f"{engine}: multivector items have different token dims")
    return MultiVectors.from_list(vectors)
