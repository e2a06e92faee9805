"""MUVERA's fixed-dimensional encoding (FDE): one dense vector per multivector output.

Dhulipala et al. 2024, the reference `fixed_dimensional_encoding`: per repetition, SimHash with
`num_simhash_projections` Gaussian hyperplanes puts each token in one of 2^k buckets; tokens are
projected to `projection_dim` with a count sketch (AMS; identity when it equals the token width); a
query's bucket is the SUM of its projected tokens, a document's the MEAN, and a document's empty bucket
takes the token nearest to it in Hamming distance. FDE dot products approximate MaxSim. As in the
paper, retrieval searches the FDEs for candidates and rescores the top `rescore_k` with exact MaxSim
against the token vectors: `MuveraVectors` keeps both (the FDE is computed from the cached token
vectors, so the cache stores the tokens once for every MUVERA setting).
"""

import functools

import numpy as np
import scipy.sparse as sp

from sie_evals.lib.config.model_config import MuveraSettings, ResolvedProfile
from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines.vectors import MultiVectors, MuveraVectors, Output, output_type_of


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
