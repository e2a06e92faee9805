"""Finesse scoring against finesse-benchmark 0.18.9's own outputs (shared/oracles/finesse/scoring_cases.json)."""

import json
import math

import numpy as np
import pytest
import torch

from sie_evals.finesse import scoring as sc
from sie_evals_tests.conftest import SHARED

ORACLE = json.loads((SHARED / "oracles" / "finesse" / "scoring_cases.json").read_text())
REL = 1e-6


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def _tensor(rows, dtype: str) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).to(getattr(torch, dtype))


@pytest.mark.parametrize("case", ORACLE["single_sample_cases"], ids=lambda c: c["name"])
@pytest.mark.parametrize("gap", ["q1q3", "q2q2"])
def test_single_sample_td_bu_and_both_formulas(case, gap):
    c = _tensor(case["chunk_embeddings"], case["dtype"])
    s = _tensor(case["synthesis_embeddings"], case["dtype"])
    want = case["results"][gap]
    td, bu = sc.td_bu(c, s, gap)
    assert close(td, want["TD_contextual_coherence"]), (td, want)
    assert close(bu, want["BU_bottom_up_coherence"]), (bu, want)
    assert close(sc.final_score(td, bu, sc.FinalFormula.sum), want["package_rss_scaled_0.18.9"])
    legacy = want["derived_legacy_pre0.16_500x((TD+BU)/2-|TD-BU|)"]
    assert close(sc.final_score(td, bu, sc.FinalFormula.balanced), legacy)


def test_fp16_is_scored_in_fp16():
    """The package computes the cosine in the stored dtype; doing it in fp32 would move the score."""
    case = next(c for c in ORACLE["single_sample_cases"] if c["dtype"] == "float16")
    want = case["results"]["q1q3"]["TD_contextual_coherence"]
    td16, _ = sc.td_bu(
        _tensor(case["chunk_embeddings"], "float16"), _tensor(case["synthesis_embeddings"], "float16"), "q1q3"
    )
    td32, _ = sc.td_bu(
        _tensor(case["chunk_embeddings"], "float16").float(),
        _tensor(case["synthesis_embeddings"], "float16").float(),
        "q1q3",
    )
    assert close(td16, want)
    assert not close(td32, want)


def _samples(per_length, mode):
    out = []
    for length, items in per_length.items():
        samples = [
            sc.Sample(
                chunks=np.asarray(x["chunk_embeddings"], dtype=np.float32),
                synth=np.asarray(x["synthesis_embeddings"], dtype=np.float32),
                synth_times=x["synth_times"],
                chunk_times=x["chunk_times"] if mode == "merger_mode" else None,
            )
            for x in items
        ]
        out.append((int(length), samples))
    return out


@pytest.mark.parametrize("mode", ["merger_mode", "native_mode"])
def test_length_aggregation(mode):
    agg_case = ORACLE["length_aggregation"]
    want = agg_case["outputs_q1q3"][mode]
    agg = sc.aggregate(_samples(agg_case["inputs_per_length"], mode), mode, "q1q3", "sum")
    assert sorted(agg.length_scores) == sorted(int(k) for k in want["length_scores"])
    for length, expected in want["length_scores"].items():
        got = agg.length_scores[int(length)].as_dict()
        for key, values in expected.items():
            assert len(got[key]) == len(values), key
            assert all(close(a, b) for a, b in zip(got[key], values, strict=True)), (length, key, got[key], values)
    assert close(agg.average_rss, want["average_rss_(round(mean(all per-sample scaled),6))"])
    assert close(agg.average_total_latency, want["average_total_latency"])
    assert close(agg.average_synthesis_latency, want["average_synthesis_latency"])


@pytest.mark.parametrize("case", ORACLE["length_aggregation"]["latency_cases"], ids=lambda c: c["mode"])
def test_latency_cases(case):
    total, synth = sc.sample_latency(case["mode"], case["chunk_times"], case["synth_times"])
    assert close(total, case["package"]["total_latency"])
    assert close(synth, case["package"]["synthesis_latency"])


def test_batched_equals_one_by_one():
    """Batching (and batch splitting) must not change a single bit."""
    rng = np.random.default_rng(5)
    samples = [
        sc.Sample(rng.standard_normal((9, 64)).astype(np.float32), rng.standard_normal((9, 64)).astype(np.float32))
        for _ in range(7)
    ]
    batched = sc.score_length(samples, "native_mode", "q1q3", "sum")
    single = [sc.td_bu(s.chunks, s.synth, "q1q3") for s in samples]
    assert batched.raw_td == [t for t, _ in single]
    assert batched.raw_bu == [u for _, u in single]


def test_length_stats_spread():
    stats = sc.length_stats([1.0, 2.0, 3.0, 4.0])
    assert stats["n"] == 4 and stats["mean"] == 2.5
    assert stats["std"] == pytest.approx(1.290994, abs=1e-6)
    # t(0.975, 3) = 3.182446; half width = 3.182446 * 1.290994 / 2
    assert stats["ci95_low"] == pytest.approx(2.5 - 2.054252, abs=1e-5)
    assert sc.length_stats([])["mean"] is None
    assert sc.length_stats([5.0])["std"] is None


def test_mismatched_shapes_rejected():
    with pytest.raises(ValueError, match="same shape"):
        sc.score_length(
            [sc.Sample(np.zeros((4, 8), np.float32), np.zeros((5, 8), np.float32))], "native_mode", "q1q3", "sum"
        )


def test_legacy_pt_rescored_and_verified(tmp_path):
    """A finesse-benchmark-style .pt (read with weights_only=True) re-scores to the package's numbers, and its
    legacy results JSON verifies; an edited score does not."""
    from sie_evals.finesse import hashing as hs
    from sie_evals.finesse.io import read_embeddings
    from sie_evals.finesse.results import score_embeddings, verify

    agg_case = ORACLE["length_aggregation"]
    want = agg_case["outputs_q1q3"]["native_mode"]
    metadata = {"package_versions": {"finesse-benchmark": "0.18.9"}, "scoring_method": "rss"}
    config = {"mode": "native_mode", "formula": "q1q3", "metric": "rss"}
    length_results = {
        int(length): {
            "sample_results": [
                {
                    "chunk_embeddings": list(torch.tensor(x["chunk_embeddings"])),
                    "synthesis_embeddings": list(torch.tensor(x["synthesis_embeddings"])),
                    "chunk_times": None,
                    "synth_times": x["synth_times"],
                }
                for x in items
            ],
            "num_synth_steps": int(length),
        }
        for length, items in agg_case["inputs_per_length"].items()
    }
    pt = tmp_path / "embeddings_native_mode_rss_x.pt"
    torch.save({"config": config, "metadata": metadata, "raw_results": {"length_results": length_results}}, pt)
    emb = read_embeddings(pt)
    assert emb.legacy
    ours = score_embeddings(emb)
    assert close(ours["average_rss"], want["average_rss_(round(mean(all per-sample scaled),6))"])
    legacy = {"config": config, "average_rss": ours["average_rss"], "length_scores": want["length_scores"]}
    legacy.update({"metadata": metadata, "model_hash": None, "content_hash": ""})
    legacy["content_hash"] = hs.legacy_content_hash(legacy)
    assert verify(legacy, pt).ok
    edited = {
        **legacy,
        "length_scores": {**want["length_scores"], "4": {**want["length_scores"]["4"], "rss_scores": [1.0, 2.0, 3.0]}},
    }
    edited["content_hash"] = ""
    edited["content_hash"] = hs.legacy_content_hash(edited)  # the legacy hash is unkeyed: anyone can redo it
    report = verify(edited, pt)
    assert not report.ok and any("length_scores.4.rss_scores" in p for p in report.problems)
