"""Finesse SRS scoring speed vs finesse-benchmark 0.18.9's own `score` code (`_calculate_srs_scores` +
`_calculate_pbi`), on seeded synthetic embeddings shaped like a real SRS run.

Default: lengths 4..8, 5 samples, group_amount 25 (the author's study used 25), dim 768, fp32. Probe prefix
embeddings are random unit vectors; positives lean towards the probe more than negatives, so scores are
non-trivial. Both sides score the same tensors; the script exits non-zero unless every per-position score,
average_srs and average_pbi are identical. Run it with the scratch venv that `bench_finesse_score.py`
documents (finesse-benchmark 0.18.9 installed with --no-deps, this repo's torch through a .pth):

    $V/bin/python benchmarks/bench_finesse_srs.py
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sie_evals.finesse import scoring
from sie_evals.finesse.io import SrsProbeEmbeddings


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_data(samples: int, lengths: range, groups: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    ours, theirs = [], {}
    for length in lengths:
        mine, raw = [], []
        for _ in range(samples):
            sample, sample_raw = {}, {}
            for p in range(2, length):
                positions = length - p + 1
                probe = _unit(rng.standard_normal(dim))
                pos = _unit(0.4 * probe + rng.standard_normal((positions, groups, dim)) / np.sqrt(dim) * 8)
                neg = _unit(0.3 * probe + rng.standard_normal((positions, groups, dim)) / np.sqrt(dim) * 8)
                sample[p] = SrsProbeEmbeddings(torch.from_numpy(probe), torch.from_numpy(pos), torch.from_numpy(neg))
                sample_raw[str(p)] = {
                    "probe_embedding": torch.from_numpy(probe),
                    "probe_pos_embeddings": {
                        str(k): {
                            "positive_embeddings": list(torch.from_numpy(pos[k])),
                            "negative_embeddings": list(torch.from_numpy(neg[k])),
                        }
                        for k in range(positions)
                    },
                }
            mine.append(sample)
            raw.append(sample_raw)
        ours.append((length, mine))
        theirs[length] = {"sample_results": raw, "num_synth_steps": length}
    return ours, theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--min-length", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=8)
    ap.add_argument("--groups", type=int, default=25)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--formula", default="q1q3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from finesse_benchmark.cli import _calculate_pbi, _calculate_srs_scores
    except ImportError as err:
        sys.exit(f"finesse-benchmark 0.18.9 is not importable here ({err}); see this script's docstring")
    import importlib.metadata as md

    version = md.version("finesse-benchmark")
    lengths = range(args.min_length, args.max_length + 1)
    ours, theirs = make_data(args.samples, lengths, args.groups, args.dim, args.seed)
    print(
        f"SRS: lengths {lengths.start}-{lengths.stop - 1} x {args.samples} samples, group_amount {args.groups}, "
        f"dim {args.dim}, {args.formula}, torch {torch.__version__}, {args.threads} thread(s); "
        f"reference finesse-benchmark {version}"
    )
    scoring.aggregate_srs(ours[:1], args.formula)  # warm-up
    ref_times, our_times = [], []
    for _ in range(2):
        t = time.perf_counter()
        ref = _calculate_srs_scores(theirs, eval_mode=args.formula)
        ref_pbi = _calculate_pbi(ref["length_scores"])
        ref_times.append(time.perf_counter() - t)
    for _ in range(args.repeats):
        t = time.perf_counter()
        agg = scoring.aggregate_srs(ours, args.formula)
        our_times.append(time.perf_counter() - t)
    mismatches = 0
    for length in lengths:
        for want, got in zip(ref["length_scores"][length]["sample_results"], agg.length_scores[length], strict=True):
            mismatches += sum(a != b for p in want for a, b in zip(want[p], got[p], strict=True))
    ref_avg = round(float(np.mean(ref["all_individual_scores"])), 6)
    same = mismatches == 0 and ref_avg == agg.average_srs and ref_pbi == agg.average_pbi
    ref_t, our_t = min(ref_times), statistics.median(our_times)
    print(f"finesse-benchmark {version}: {ref_t:.3f} s (best of {len(ref_times)})")
    print(f"sie_evals.finesse:        {our_t:.3f} s (median of {len(our_times)})")
    print(f"speed-up: {ref_t / our_t:.1f}x")
    print(
        f"average_srs: reference {ref_avg}, ours {agg.average_srs}; average_pbi: reference {ref_pbi}, ours "
        f"{agg.average_pbi}; per-position scores differing: {mismatches}"
    )
    if not same:
        sys.exit("MISMATCH: the two implementations disagree")
    print("identical numbers (every per-position score, average_srs, average_pbi)")


if __name__ == "__main__":
    main()
