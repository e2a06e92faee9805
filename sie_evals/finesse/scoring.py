"""Finesse RSS scoring, bit-compatible with finesse-benchmark 0.18.9 (spec §6-7), vectorised.

What 0.18.9 computes per sample (L chunk embeddings c_j, L synthesis embeddings s_i = merge of chunks 0..i):
- T[i][j] = cos(s_i, c_j), torch cosine_similarity (eps 1e-8) in the *stored* dtype (fp16 stays fp16).
- TD = float32 mean over steps i = 1..L-2 of gap(T[i][:i+1], T[i][i+1:]); 0.0 when there is no such step.
- BU = float32 mean over anchors a = 1..L-1 (the last anchor included) of gap(T[a..L-1][a], T[0..a-1][a]),
  i.e. cos(c_a, s_j) for j >= a against j < a (U = T transposed; the products are commutative, so one matrix).
- gap: q1q3 = Q.25(memory) - Q.75(noise); q2q2 = median - median; quantiles torch-style (linear, float32).
- Per-sample score: `sum` = 500*(TD+BU) (0.18.9, leaderboard-compatible) or `balanced` =
  500*((TD+BU)/2 - |TD-BU|) (the formula the package's README documents; 0.18.9 no longer computes it).

The package loops over rows in Python; here every sample of a length is one batch: the similarity matrix is
computed with the same torch elementwise ops (so the same bits), quantiles come from one masked sort per
tier, and the interpolation uses torch.quantile's own formula. Results equal the package's to the last bit
on the oracle cases (see sie_evals_tests/test_finesse_scoring.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch

COSINE_EPS = 1e-8
# Max elements of the (B, L, L, D) product tensor per batch: bounds memory, keeps the batch cache-friendly.
_BATCH_ELEMENTS = 1 << 22


class Gap(StrEnum):
    q1q3 = "q1q3"
    q2q2 = "q2q2"


class FinalFormula(StrEnum):
    sum = "sum"  # 500*(TD+BU): what finesse-benchmark >= 0.16.0 computes (leaderboard-compatible)
    balanced = "balanced"  # 500*((TD+BU)/2 - |TD-BU|): the documented formula, penalises TD/BU imbalance


class Mode(StrEnum):
    merger_mode = "merger_mode"
    native_mode = "native_mode"
    byok_mode = "byok_mode"


_QUANTILES = {Gap.q1q3: (0.25, 0.75), Gap.q2q2: (0.5, 0.5)}


def final_score(td: float, bu: float, formula: FinalFormula) -> float:
    """The per-sample score, scaled by 500 and rounded to 6 places as 0.18.9 stores it."""
    if formula == FinalFormula.sum:
        return round((td + bu) * 500, 6)
    return round(((td + bu) / 2 - abs(td - bu)) * 500, 6)


def sample_latency(
    mode: Mode | str, chunk_times: Sequence[float] | None, synth_times: Sequence[float]
) -> tuple[float, float]:
    """(total, synthesis) latency in ms of one sample (spec §7; 0.18.9 `calculate_sample_latency` + caller).

    merger: total = sum(chunk_times) + last synthesis time, synthesis = last synthesis time.
    native/byok: both are the last synthesis time (one encode of the whole concatenation)."""
    if not synth_times:
        return 0.0, 0.0
    mode = Mode(mode)
    last = float(synth_times[-1])
    if mode == Mode.merger_mode:
        caching = sum(chunk_times) if chunk_times else 0.0
        return caching + last, last
    return last, last


def _quantile_sorted(sorted_vals: torch.Tensor, counts: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(linear) of the first `counts[...]` entries of each sorted row (float32).

    rank = q*(n-1) in float32, then lerp(v[floor], v[ceil], rank - floor) with torch's lerp formula.
    The weights are 0, .25, .5 or .75, so every product is exact and fused/unfused lerp agree."""
    qt = torch.tensor(q, dtype=torch.float32)
    ranks = qt * (counts - 1).to(torch.float32)
    lo = ranks.to(torch.long)
    hi = torch.ceil(ranks).to(torch.long)
    w = ranks - lo.to(torch.float32)
    v_lo = torch.gather(sorted_vals, -1, lo.unsqueeze(-1)).squeeze(-1)
    v_hi = torch.gather(sorted_vals, -1, hi.unsqueeze(-1)).squeeze(-1)
    diff = v_hi - v_lo
    return torch.where(w.abs() < 0.5, v_lo + w * diff, v_hi - diff * (1 - w))


def _tier_gaps(sim: torch.Tensor, memory: torch.Tensor, gap: Gap) -> torch.Tensor:
    """gap(memory values, noise values) per row. sim: (B, R, K) float32; memory: (R, K) bool."""
    q_mem, q_noise = _QUANTILES[gap]
    inf = torch.tensor(float("inf"), dtype=torch.float32)
    mem_sorted = torch.where(memory, sim, inf).sort(dim=-1).values
    noise_sorted = torch.where(~memory, sim, inf).sort(dim=-1).values
    n_mem = memory.sum(-1).expand(sim.shape[0], -1)
    n_noise = (~memory).sum(-1).expand(sim.shape[0], -1)
    return _quantile_sorted(mem_sorted, n_mem, q_mem) - _quantile_sorted(noise_sorted, n_noise, q_noise)


def _normalised(x: torch.Tensor) -> torch.Tensor:
    # cosine_similarity divides each vector by max(||v||, eps) before the dot product (ATen Distance.cpp).
    norm = torch.linalg.vector_norm(x, 2, dim=-1, keepdim=True).clamp_min(COSINE_EPS)
    return x / norm


def similarity_matrix(chunks: torch.Tensor, synth: torch.Tensor) -> torch.Tensor:
    """T[b, i, j] = cos(synth[b, i], chunks[b, j]) exactly as F.cosine_similarity computes it, as float32."""
    a = _normalised(synth)
    c = _normalised(chunks)
    return (a.unsqueeze(-2) * c.unsqueeze(-3)).sum(-1).to(torch.float32)


def td_bu_batch(chunks: torch.Tensor, synth: torch.Tensor, gap: Gap | str) -> tuple[torch.Tensor, torch.Tensor]:
    """TD and BU (float32, shape (B,)) for B samples of the same length. chunks, synth: (B, L, D)."""
    gap = Gap(gap)
    if chunks.shape != synth.shape or chunks.ndim != 3:
        raise ValueError(f"chunk and synthesis embeddings must both be (B, L, D), got {chunks.shape} and {synth.shape}")
    b, n, _ = chunks.shape
    if n < 2:
        zeros = torch.zeros(b, dtype=torch.float32)
        return zeros, zeros.clone()
    sim = similarity_matrix(chunks, synth)  # (B, N, N): [step i, chunk j]
    j = torch.arange(n)
    if n > 2:
        rows = torch.arange(1, n - 1)
        td = _tier_gaps(sim[:, 1 : n - 1, :], j.unsqueeze(0) <= rows.unsqueeze(1), gap).mean(dim=-1)
    else:
        td = torch.zeros(b, dtype=torch.float32)
    anchors = torch.arange(1, n)
    bu_sim = sim.transpose(1, 2)[:, 1:, :]  # [anchor a, step j] = cos(c_a, s_j)
    bu = _tier_gaps(bu_sim.contiguous(), j.unsqueeze(0) >= anchors.unsqueeze(1), gap).mean(dim=-1)
    return td, bu


def td_bu(chunks: Any, synth: Any, gap: Gap | str) -> tuple[float, float]:
    """TD and BU of one sample (arrays or tensors of shape (L, D)) as Python floats, like 0.18.9's `.item()`."""
    c = torch.as_tensor(np.asarray(chunks)) if not isinstance(chunks, torch.Tensor) else chunks
    s = torch.as_tensor(np.asarray(synth)) if not isinstance(synth, torch.Tensor) else synth
    if c.shape[0] < 2 or s.shape[0] == 0:
        return 0.0, 0.0
    td, bu = td_bu_batch(c.unsqueeze(0), s.unsqueeze(0), gap)
    return float(td[0].item()), float(bu[0].item())


@dataclass
class Sample:
    """One probe's embeddings and timings (ms). chunk_times is None outside merger mode."""

    chunks: np.ndarray | torch.Tensor  # (L, D)
    synth: np.ndarray | torch.Tensor  # (L, D)
    synth_times: list[float] = field(default_factory=list)
    chunk_times: list[float] | None = None


@dataclass
class LengthScores:
    rss_scores: list[float]
    total_latency_scores: list[float]
    synthesis_latency_scores: list[float]
    raw_td: list[float]
    raw_bu: list[float]

    def as_dict(self) -> dict[str, list[float]]:
        return {
            "rss_scores": self.rss_scores,
            "total_latency_scores": self.total_latency_scores,
            "synthesis_latency_scores": self.synthesis_latency_scores,
            "raw_td": self.raw_td,
            "raw_bu": self.raw_bu,
        }


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _batched_td_bu(samples: Sequence[Sample], gap: Gap) -> list[tuple[float, float]]:
    """TD/BU per sample; samples of equal shape and dtype are scored together in memory-bounded batches."""
    out: list[tuple[float, float] | None] = [None] * len(samples)
    groups: dict[tuple, list[int]] = {}
    for k, s in enumerate(samples):
        c, y = _as_tensor(s.chunks), _as_tensor(s.synth)
        if c.ndim != 2 or y.ndim != 2 or c.shape[0] < 2 or y.shape[0] == 0:
            out[k] = (0.0, 0.0)  # 0.18.9: fewer than 2 chunks (or none) score 0
            continue
        if c.shape != y.shape or c.dtype != y.dtype:
            raise ValueError(
                f"sample {k}: chunk embeddings {tuple(c.shape)}/{c.dtype} and synthesis embeddings "
                f"{tuple(y.shape)}/{y.dtype} must have the same shape and dtype"
            )
        groups.setdefault((tuple(c.shape), c.dtype), []).append(k)
    for (shape, _), idx in groups.items():
        n, d = shape
        per_batch = max(1, _BATCH_ELEMENTS // (n * n * d))
        for start in range(0, len(idx), per_batch):
            part = idx[start : start + per_batch]
            c = torch.stack([_as_tensor(samples[k].chunks) for k in part])
            y = torch.stack([_as_tensor(samples[k].synth) for k in part])
            td, bu = td_bu_batch(c, y, gap)
            for k, t, u in zip(part, td.tolist(), bu.tolist(), strict=True):
                out[k] = (t, u)
    return [o if o is not None else (0.0, 0.0) for o in out]


def score_length(
    samples: Sequence[Sample], mode: Mode | str, gap: Gap | str, formula: FinalFormula | str
) -> LengthScores:
    gap, formula = Gap(gap), FinalFormula(formula)
    tdbu = _batched_td_bu(samples, gap)
    latencies = [sample_latency(mode, s.chunk_times, s.synth_times) for s in samples]
    return LengthScores(
        rss_scores=[final_score(t, u, formula) for t, u in tdbu],
        total_latency_scores=[round(t, 6) for t, _ in latencies],
        synthesis_latency_scores=[round(s, 6) for _, s in latencies],
        raw_td=[t for t, _ in tdbu],
        raw_bu=[u for _, u in tdbu],
    )


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 6) if values else 0.0


def length_stats(scores: list[float]) -> dict[str, float | int | None]:
    """Spread of the per-sample scores of one length: n, mean, std (ddof 1) and a 95% t interval."""
    n = len(scores)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95_low": None, "ci95_high": None}
    mean = float(np.mean(scores))
    if n < 2:
        return {"n": 1, "mean": round(mean, 6), "std": None, "ci95_low": None, "ci95_high": None}
    from scipy.special import stdtrit  # Student t quantile; lighter to import than scipy.stats

    std = float(np.std(scores, ddof=1))
    half = float(stdtrit(n - 1, 0.975)) * std / math.sqrt(n)
    return {
        "n": n,
        "mean": round(mean, 6),
        "std": round(std, 6),
        "ci95_low": round(mean - half, 6),
        "ci95_high": round(mean + half, 6),
    }


@dataclass
class Aggregate:
    length_scores: dict[int, LengthScores]
    average_rss: float
    average_total_latency: float
    average_synthesis_latency: float
    per_length: dict[int, dict[str, float | int | None]]

    @property
    def mean_of_length_means(self) -> float | None:
        means = [s["mean"] for s in self.per_length.values() if s["mean"] is not None]
        return round(float(np.mean(means)), 6) if means else None


def aggregate(
    lengths: Iterable[tuple[int, Sequence[Sample]]], mode: Mode | str, gap: Gap | str, formula: FinalFormula | str
) -> Aggregate:
    """Score every length; averages are flat means over all samples (every sample weighs the same, as in 0.18.9)."""
    length_scores: dict[int, LengthScores] = {}
    for length, samples in lengths:
        length_scores[int(length)] = score_length(samples, mode, gap, formula)
    all_rss = [x for s in length_scores.values() for x in s.rss_scores]
    all_total = [x for s in length_scores.values() for x in s.total_latency_scores]
    all_synth = [x for s in length_scores.values() for x in s.synthesis_latency_scores]
    return Aggregate(
        length_scores=length_scores,
        average_rss=_mean(all_rss),
        average_total_latency=_mean(all_total),
        average_synthesis_latency=_mean(all_synth),
        per_length={length: length_stats(s.rss_scores) for length, s in length_scores.items()},
    )


# ------------------------------------------------------------------------------------------------ SRS (spec §8)
def srs_gaps(probe: Any, positives: Any, negatives: Any, gap: Gap | str) -> list[float]:
    """0.18.9's `calculate_srs_score` for every insertion position at once, x1000 and rounded to 6 places.

    probe (D,); positives / negatives (positions, groups, D). Per position: cos(probe, each group member) with
    F.cosine_similarity in the stored dtype, then Q.25(pos) - Q.75(neg) (q1q3) or median - median (q2q2) with
    torch.quantile on float32, `.item()`, *1000, round(.., 6) — the package's operations, row-batched."""
    gap = Gap(gap)
    probe_t, pos_t, neg_t = (
        _as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x for x in (probe, positives, negatives)
    )
    if pos_t.shape[1] == 0 or neg_t.shape[1] == 0:
        return [0.0] * int(pos_t.shape[0])  # 0.18.9: empty groups raise ValueError, scored 0.0
    q_pos, q_neg = _QUANTILES[gap]
    sims_pos = torch.nn.functional.cosine_similarity(probe_t[None, None, :], pos_t, dim=-1)
    sims_neg = torch.nn.functional.cosine_similarity(probe_t[None, None, :], neg_t, dim=-1)
    values = torch.quantile(sims_pos.float(), q_pos, dim=-1) - torch.quantile(sims_neg.float(), q_neg, dim=-1)
    return [round(v * 1000, 6) for v in values.tolist()]


@dataclass
class SrsAggregate:
    length_scores: dict[int, list[dict[str, list[float]]]]  # L -> per sample {str(p): [score per position]}
    average_srs: float
    average_pbi: float
    per_length: dict[int, dict[str, float | int | None]]


def position_bias_index(length_scores: dict[int, list[dict[str, list[float]]]]) -> float:
    """0.18.9's average_pbi: per L and probe length p <= L//2, np.std (ddof 0) of all scores pooled over samples
    and positions (when more than one), then the rounded mean of those."""
    stds: list[float] = []
    for length, samples in length_scores.items():
        pooled: dict[int, list[float]] = {}
        for sample in samples:
            for p_key, scores in sample.items():
                if int(p_key) <= int(length) // 2:
                    pooled.setdefault(int(p_key), []).extend(scores)
        stds.extend(float(np.std(v)) for v in pooled.values() if len(v) > 1)
    return round(float(np.mean(stds)), 6) if stds else 0.0


def aggregate_srs(lengths: Iterable[tuple[int, Sequence[dict[int, Any]]]], gap: Gap | str) -> SrsAggregate:
    """Score every length's samples; average_srs is the flat mean over every (sample, p, position) score."""
    length_scores: dict[int, list[dict[str, list[float]]]] = {}
    for length, samples in lengths:
        rows = []
        for sample in samples:
            rows.append({str(p): srs_gaps(e.probe, e.positives, e.negatives, gap) for p, e in sample.items()})
        length_scores[int(length)] = rows
    flat_by_length = {
        length: [x for sample in rows for scores in sample.values() for x in scores]
        for length, rows in length_scores.items()
    }
    everything = [x for v in flat_by_length.values() for x in v]
    return SrsAggregate(
        length_scores=length_scores,
        average_srs=_mean(everything),
        average_pbi=position_bias_index(length_scores),
        per_length={length: length_stats(v) for length, v in flat_by_length.items()},
    )
