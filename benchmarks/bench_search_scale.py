"""Search and scoring against corpus size: synthetic unit vectors, memory-mapped from disk, through the real
exact search (`lib/quality/search.exact_top_k`, chunked), run building (`to_run`, top k only) and MTEB-exact
scoring (`lib/quality/metrics.retrieval_scores`, pytrec_eval). Prints time and peak RSS per size, and the
peak RSS beyond the memory-mapped vectors (page cache of the mapped file is shared/evictable and not counted
by the kernel as anonymous memory; ru_maxrss counts resident mapped pages too, so we also print RssAnon).

    nice -n 10 .venv/bin/python benchmarks/bench_search_scale.py --sizes 100000,500000,1000000 [--dir /tmp]

Each size runs in its own subprocess (a fresh peak RSS). The vector file is deleted after each size.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIMS, QUERIES, K = 384, 1000, 1000


def make_corpus(path: Path, n: int, seed: int = 0, chunk: int = 200_000) -> None:
    import numpy as np

    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIMS))
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), DIMS), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        arr[start : start + len(block)] = block
    arr.flush()
    del arr


def child(path: Path) -> dict:
    import numpy as np

    from sie_evals.lib.quality.metrics import retrieval_scores
    from sie_evals.lib.quality.search import exact_top_k, to_run

    docs = np.load(path, mmap_mode="r")
    n = docs.shape[0]
    rng = np.random.default_rng(1)
    relevant = rng.choice(n, size=QUERIES, replace=False)
    queries = np.asarray(docs[np.sort(relevant)]) + 0.05 * rng.standard_normal((QUERIES, DIMS), dtype=np.float32)
    relevant = np.sort(relevant)
    doc_ids = [f"d{i}" for i in range(n)]
    query_ids = [f"q{i}" for i in range(QUERIES)]
    qrels = {q: {doc_ids[j]: 1} for q, j in zip(query_ids, relevant, strict=True)}
    t0 = time.perf_counter()
    scores, indices = exact_top_k(queries, docs, K)
    t1 = time.perf_counter()
    run = to_run(query_ids, doc_ids, scores, indices)
    metrics, _ = retrieval_scores(qrels, run, (1, 10, 100, 1000))
    t2 = time.perf_counter()
    status = Path("/proc/self/status").read_text()
    hwm = {
        k: int(v.split()[0])
        for k, v in (line.split(":", 1) for line in status.splitlines())
        if k in ("VmHWM", "RssAnon", "RssFile")
    }
    return {
        "docs": n,
        "search_s": round(t1 - t0, 2),
        "run_and_score_s": round(t2 - t1, 2),
        "ndcg_at_10": metrics["ndcg_at_10"],
        "peak_rss_mb": round(hwm["VmHWM"] / 1024),
        "rss_anon_mb": round(hwm["RssAnon"] / 1024),
        "rss_file_mb": round(hwm["RssFile"] / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,500000,1000000,2000000,5000000")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child))))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        path = Path(args.dir) / f"sie-evals-bench-{n}.npy"
        try:
            t = time.perf_counter()
            make_corpus(path, n)
            gen = time.perf_counter() - t
            out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["generate_s"] = round(gen, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
        finally:
            path.unlink(missing_ok=True)
    base = rows[0]
    print("\n| docs | search s | run+score s | s per 1M docs | peak RSS MB | anon RSS MB | mapped file RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        per_m = (r["search_s"] + r["run_and_score_s"]) / (r["docs"] / 1e6)
        print(
            f"| {r['docs']:,} | {r['search_s']} | {r['run_and_score_s']} | {per_m:.1f} | {r['peak_rss_mb']} | "
            f"{r['rss_anon_mb']} | {r['rss_file_mb']} |"
        )
    print(
        f"\ntime ratio largest/smallest: {(rows[-1]['search_s'] / base['search_s']):.2f} for "
        f"{rows[-1]['docs'] / base['docs']:.0f}x the documents"
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
