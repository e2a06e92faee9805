"""Finesse scoring speed vs finesse-benchmark 0.18.9's own `score` code, on a leaderboard-size file.

25 samples x lengths 4..32, dim 768, seeded synthetic embeddings (prefix means of random chunks plus noise,
so TD/BU are non-trivial). Scores the same data with `sie_evals.finesse.scoring.aggregate` and with
finesse_benchmark.cli._calculate_rss_scores (what `finesse score` runs), checks the numbers are identical,
and prints the speed ratio. finesse-benchmark must be importable from the Python that runs the reference:

    V=~/.cache/sie-evals/finesse-ref-venv && python -m venv $V
    echo "$PWD/.venv/lib/python3.11/site-packages" > $V/lib/python3.11/site-packages/main.pth
    $V/bin/pip install --no-deps finesse-benchmark==0.18.9 tiktoken py-cpuinfo
    $V/bin/python benchmarks/bench_finesse_score.py

(the .pth gives the scratch venv this repo's torch 2.13 CPU; --no-deps keeps the package's torch pin out.)
Both sides run with the same torch thread count (--threads, default 1: this VM's 2 cores are shared, and
torch's thread pool spins badly under contention)."""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sie_evals.finesse import scoring


def make_data(samples: int, lengths: range, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    ours, theirs = [], {}
    for length in lengths:
        items, raw = [], []
        for _ in range(samples):
            c = rng.standard_normal((length, dim)).astype(np.float32)
            c /= np.linalg.norm(c, axis=1, keepdims=True)
            s = np.cumsum(c, axis=0) / np.arange(1, length + 1)[:, None] + 0.05 * rng.standard_normal((length, dim))
            s = (s / np.linalg.norm(s, axis=1, keepdims=True)).astype(np.float32)
            times = [float(x) for x in rng.uniform(1, 5, length)]
            items.append(scoring.Sample(c, s, times, None))
            raw.append(
                {
                    "chunk_embeddings": list(torch.from_numpy(c)),
                    "synthesis_embeddings": list(torch.from_numpy(s)),
                    "chunk_times": None,
                    "synth_times": times,
                }
            )
        ours.append((length, items))
        theirs[length] = {"sample_results": raw, "num_synth_steps": length}
    return ours, theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=25)
    ap.add_argument("--min-length", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of ours (median); the reference runs twice")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from finesse_benchmark.cli import _calculate_rss_scores
        from finesse_benchmark.scoring import __file__ as ref_file
    except ImportError as err:
        sys.exit(f"finesse-benchmark 0.18.9 is not importable here ({err}); see this script's docstring")
    import importlib.metadata as md

    version = md.version("finesse-benchmark")
    lengths = range(args.min_length, args.max_length + 1)
    ours, theirs = make_data(args.samples, lengths, args.dim, args.seed)
    n = args.samples * len(lengths)
    print(
        f"{n} samples (lengths {lengths.start}-{lengths.stop - 1} x {args.samples}), dim {args.dim}, fp32, "
        f"torch {torch.__version__}, {args.threads} thread(s); reference finesse-benchmark {version} ({ref_file})"
    )

    scoring.aggregate(ours[:2], "native_mode", "q1q3", "sum")  # warm-up (imports, allocator)
    ref_times, our_times = [], []
    for _ in range(2):
        t = time.perf_counter()
        ref = _calculate_rss_scores(theirs, "native_mode", eval_mode="q1q3")
        ref_times.append(time.perf_counter() - t)
    for _ in range(args.repeats):
        t = time.perf_counter()
        agg = scoring.aggregate(ours, "native_mode", "q1q3", "sum")
        our_times.append(time.perf_counter() - t)

    mismatches = 0
    for length in lengths:
        want = ref["length_scores"][length]
        got = agg.length_scores[length].as_dict()
        for key in ("rss_scores", "raw_td", "raw_bu", "total_latency_scores", "synthesis_latency_scores"):
            mismatches += sum(a != b for a, b in zip(want[key], got[key], strict=True))
    ref_avg = round(float(np.mean(ref["all_individual_scores"])), 6)
    same = mismatches == 0 and ref_avg == agg.average_rss
    ref_t, our_t = min(ref_times), statistics.median(our_times)
    print(f"finesse-benchmark {version}: {ref_t:.3f} s (best of {len(ref_times)})")
    print(f"sie_evals.finesse:        {our_t:.3f} s (median of {len(our_times)})")
    print(f"speed-up: {ref_t / our_t:.1f}x")
    print(f"average_rss: reference {ref_avg}, ours {agg.average_rss}; per-sample values differing: {mismatches}")
    if not same:
        sys.exit("MISMATCH: the two implementations disagree")
    print("identical numbers (TD, BU, RSS, latencies: bit for bit)")


if __name__ == "__main__":
    main()
