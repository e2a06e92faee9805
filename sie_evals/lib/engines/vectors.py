"""Output types beyond one dense vector per text, and how each is scored.

- `SparseVectors`: a float32 CSR matrix (texts x vocabulary). SPLADE: the masked-LM logits of every
  token, `log(1 + relu(x))`, max-pooled over the non-padding tokens (sentence-transformers'
  `SparseEncoder` with `SpladePooling(max, relu)`).
- `MultiVectors`: ragged token vectors, `values` (total tokens x dims) and `offsets` (texts + 1): the
  last hidden state of every non-padding token (special tokens included), L2-normalised per token
  when the profile normalises.
- `MuveraVectors`: a MUVERA profile's FDEs with the token vectors that rescore them (engines/muvera.py).

Everything here is plain arrays: the embedding cache stores outputs as `.npy`/`.npz` without pickle
(engines/serialization.py).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sie_evals.lib.config.model_config import OutputType, ResolvedProfile


@dataclass(frozen=True)
class SparseVectors:
    matrix: sp.csr_matrix  # (texts, vocabulary) float32, canonical (sorted indices, no explicit zeros)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def nnz_per_row(self) -> np.ndarray:
        return np.diff(self.matrix.indptr)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.matrix.indptr[i], self.matrix.indptr[i + 1]
        return self.matrix.indices[a:b], self.matrix.data[a:b]


@dataclass(frozen=True)
class MultiVectors:
    values: np.ndarray  # (total tokens, dims) float32
    offsets: np.ndarray  # (texts + 1,) int64; text i owns values[offsets[i]:offsets[i + 1]]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), int(self.values.shape[1])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def item(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def from_list(cls, items: Sequence[np.ndarray], dims: int | None = None) -> "MultiVectors":
        lengths = [len(x) for x in items]
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(lengths)
        width = dims if dims is not None else (items[0].shape[1] if items else 0)
        values = np.concatenate(items, axis=0) if items else np.zeros((0, width), dtype=np.float32)
        return cls(np.ascontiguousarray(values, dtype=np.float32), offsets)


@dataclass(frozen=True)
class MuveraVectors:
    """A MUVERA profile's output: the FDEs searched for candidates and the token vectors that rescore
    the top `rescore_k` candidates with exact MaxSim (quality/output_search.py)."""

    fde: np.ndarray  # (texts, R x 2^k x projection_dim) float32
    tokens: MultiVectors
    rescore_k: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.fde.shape

    def __len__(self) -> int:
        return len(self.fde)


Output = np.ndarray | SparseVectors | MultiVectors | MuveraVectors


def output_type_of(out: Output) -> OutputType:
    if isinstance(out, SparseVectors):
        return OutputType.sparse
    if isinstance(out, MultiVectors):
        return OutputType.multivector
    return OutputType.dense


def similarity(profile: ResolvedProfile) -> str:
    """How retrieval scores this profile: cosine (dense, as MTEB), dot (sparse, MUVERA FDE), maxsim."""
    if profile.muvera is not None:
        return "dot"
    return {OutputType.dense: "cosine", OutputType.sparse: "dot", OutputType.multivector: "maxsim"}[profile.output]


def concat(parts: Sequence[Output]) -> Output:
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    if isinstance(parts[0], SparseVectors):
        return SparseVectors(sp.vstack([p.matrix for p in parts], format="csr", dtype=np.float32))
    if isinstance(parts[0], MultiVectors):
        offsets = [np.zeros(1, dtype=np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        return MultiVectors(np.concatenate([p.values for p in parts], axis=0), np.concatenate(offsets))
    return np.concatenate(parts, axis=0)


def item_cosines(a: Output, b: Output) -> np.ndarray:
    """Per-item cosine of two sparse outputs, or the mean per-token cosine of two multivector outputs
    (same tokens expected: a different token count is cosine 0 for that item). MUVERA: its tokens."""
    a = a.tokens if isinstance(a, MuveraVectors) else a
    b = b.tokens if isinstance(b, MuveraVectors) else b
    if isinstance(a, SparseVectors) and isinstance(b, SparseVectors):
        if a.shape != b.shape:
            raise ValueError(f"parity needs sparse outputs of one shape, got {a.shape} and {b.shape}")
        num = np.asarray(a.matrix.multiply(b.matrix).sum(axis=1)).ravel().astype(np.float64)
        na = np.sqrt(np.asarray(a.matrix.multiply(a.matrix).sum(axis=1)).ravel())
        nb = np.sqrt(np.asarray(b.matrix.multiply(b.matrix).sum(axis=1)).ravel())
        den = na * nb
        return np.clip(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0), -1.0, 1.0)
    if isinstance(a, MultiVectors) and isinstance(b, MultiVectors):
        cos = np.zeros(len(a))
        for i in range(len(a)):
            x, y = a.item(i).astype(np.float64), b.item(i).astype(np.float64)
            if x.shape != y.shape:
                continue
            den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            cos[i] = float(np.mean(np.where(den > 0, (x * y).sum(axis=1) / np.where(den > 0, den, 1.0), 0.0)))
        return np.clip(cos, -1.0, 1.0)
    raise ValueError(f"parity between {output_type_of(a).value} and {output_type_of(b).value} outputs")
