"""The embedding cache's file format, without pickle: dense outputs as `.npy`, sparse, multivector and
MUVERA outputs as `.npz` of plain arrays. Loading verifies what it reads (a damaged file is a
ValueError, never a vector)."""

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines.validation import check_multivector, check_sparse
from sie_evals.lib.engines.vectors import MultiVectors, MuveraVectors, Output, SparseVectors


def dump(out: Output) -> bytes:
    """Dense: `.npy` bytes (as before output types existed); sparse/multivector: `.npz` of plain arrays."""
    buf = io.BytesIO()
    dump_to(buf, out)
    return buf.getvalue()


def dump_to(file: Any, out: Output) -> None:
    """`dump` written straight to a path or binary file: a memory-mapped corpus matrix streams from its
    pages instead of being copied into one bytes object."""
    if isinstance(out, SparseVectors):
        m = out.matrix
        np.savez(
            file,
            sparse_indptr=m.indptr.astype(np.int64),
            sparse_indices=m.indices.astype(np.int64),
            sparse_values=m.data.astype(np.float32),
            sparse_dims=np.asarray([m.shape[1]], dtype=np.int64),
        )
    elif isinstance(out, MultiVectors):
        np.savez(file, multivector_offsets=out.offsets.astype(np.int64), multivector_values=out.values)
    elif isinstance(out, MuveraVectors):
        np.savez(
            file,
            muvera_fde=np.ascontiguousarray(out.fde, dtype=np.float32),
            muvera_rescore_k=np.asarray([out.rescore_k], dtype=np.int64),
            multivector_offsets=out.tokens.offsets.astype(np.int64),
            multivector_values=out.tokens.values,
        )
    else:
        np.save(file, np.ascontiguousarray(out, dtype=np.float32), allow_pickle=False)


def load(raw: bytes, rows: int | None = None) -> Output:
    """Inverse of `dump`, verified: wrong dtype, rank, row count (when given), offsets or indices raise
    ValueError."""
    if not raw.startswith(b"PK"):  # .npy
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
        if arr.dtype != np.float32 or arr.ndim != 2 or (rows is not None and arr.shape[0] != rows):
            raise ValueError(f"unexpected array {arr.dtype} {arr.shape}, expected {rows} float32 rows")
        if not np.isfinite(arr).all():
            raise ValueError("non-finite values")
        return arr
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"not a valid .npz: {err}") from None
    try:
        if "sparse_indptr" in arrays:
            dims = int(arrays["sparse_dims"][0])
            indptr, indices, values = arrays["sparse_indptr"], arrays["sparse_indices"], arrays["sparse_values"]
            rows = len(indptr) - 1 if rows is None else rows
            if len(indptr) != rows + 1 or values.dtype != np.float32 or len(indices) != len(values):
                raise ValueError("sparse arrays do not match the expected rows")
            out: Output = SparseVectors(sp.csr_matrix((values, indices, indptr), shape=(rows, dims), dtype=np.float32))
            check_sparse(out, "cache")
            return out
        out = MultiVectors(arrays["multivector_values"], arrays["multivector_offsets"])
        fde = arrays.get("muvera_fde")
        rescore_k = int(arrays["muvera_rescore_k"][0]) if fde is not None else 0
    except (KeyError, IndexError) as err:
        raise ValueError(f"missing array {err}") from None
    except EngineError as err:
        raise ValueError(str(err)) from None
    if rows is not None and len(out) != rows:
        raise ValueError(f"{len(out)} multivector rows, expected {rows}")
    try:
        check_multivector(out, "cache")
    except EngineError as err:
        raise ValueError(str(err)) from None
    if fde is None:
        return out
    if fde.dtype != np.float32 or fde.ndim != 2 or len(fde) != len(out) or not np.isfinite(fde).all():
        raise ValueError(f"MUVERA encodings {fde.dtype} {fde.shape} do not match {len(out)} float32 rows")
    if rescore_k < 1:
        raise ValueError(f"MUVERA rescore_k {rescore_k} is not positive")
    return MuveraVectors(fde, out, rescore_k)


def load_file(path: Path, rows: int | None = None) -> Output:
    """`load` of a file written by `dump_to`. A dense `.npy` is memory-mapped read-only (a corpus matrix
    of millions of rows is paged in as searched, never read whole), verified like `load` chunk by chunk."""
    with open(path, "rb") as fh:
        if fh.read(2) == b"PK":
            return load(Path(path).read_bytes(), rows)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"not a valid .npy: {err}") from None
    if arr.dtype != np.float32 or arr.ndim != 2 or (rows is not None and arr.shape[0] != rows):
        raise ValueError(f"unexpected array {arr.dtype} {arr.shape}, expected {rows} float32 rows")
    for start in range(0, arr.shape[0], 65_536):
        if not np.isfinite(arr[start : start + 65_536]).all():
            raise ValueError("non-finite values")
    return arr
