"""Exact dense search and end-to-end scoring against the bare matrix product, in one process.

Random unit vectors (queries and documents, seeded), 384 dims, top 1,000. Times, over the same vectors:
  bare matmul     torch `q @ d.T` in 50,000-document chunks, nothing else (what a user would write; the
                  reference of the issue's goal)
  product alone   the search's own product with no selection: DEFAULT_DOC_CHUNK (16,384) documents a
                  block, documents x queries, into one reused buffer (how much of the search is product)
  old search      the previous `exact_top_k` (torch.topk per chunk, merged with cat/topk/gather)
  search          the project's `exact_top_k` (lib/quality/search.py: threshold filter, buffers reused)
  run             `to_run` of the search's (scores, indices)
  metrics         `retrieval_scores` (pytrec_eval, MTEB-exact) with synthetic qrels (1-3 relevant per query)
and prints a table with each time and its ratio to the bare matmul, plus end to end (search + run + metrics)
over the search, the top-10 agreement of old and new search, and whether their metrics are equal.
The machine is shared and noisy: bare matmul and search alternate `--repeats` times and the fastest of each
is compared (the least-disturbed run of each); every single time is printed too.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_search.py [--docs 1000000] [--threads 2]
"""

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sie_evals.lib.quality.metrics import retrieval_scores
from sie_evals.lib.quality.search import DEFAULT_DOC_CHUNK, exact_top_k, to_run

BARE_CHUNK = 50_000
K_VALUES = (1, 3, 5, 10, 20, 100, 1000)


def bare_matmul(q: torch.Tensor, docs: np.ndarray) -> float:
    """Checksum of the chunked products, so nothing is optimised away."""
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(docs), BARE_CHUNK):
            total += float((q @ torch.from_numpy(docs[start : start + BARE_CHUNK]).T)[:, 0].sum())
    return total


def product_alone(q: torch.Tensor, docs: np.ndarray) -> float:
    """The search's products (same blocks, orientation and reused buffer), nothing selected."""
    out = torch.empty(len(q) * DEFAULT_DOC_CHUNK)
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(docs), DEFAULT_DOC_CHUNK):
            d = torch.from_numpy(docs[start : start + DEFAULT_DOC_CHUNK])
            total += float(torch.mm(d, q.T, out=out[: len(d) * len(q)].view(len(d), len(q)))[0].sum())
    return total


def old_exact_top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The search this replaced (commit 5382546): torch.topk per 50,000 documents, cat + topk + gather."""

    def unit(x):
        return torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), dim=1)

    q = unit(queries)
    best_s = torch.empty((len(q), 0))
    best_i = torch.empty((len(q), 0), dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, len(docs), BARE_CHUNK):
            s, i = torch.topk(q @ unit(docs[start : start + BARE_CHUNK]).T, k, dim=1)
            best_s, best_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + start], 1)
            if best_s.shape[1] > k:
                best_s, pos = torch.topk(best_s, k, dim=1)
                best_i = torch.gather(best_i, 1, pos)
    return best_s.numpy(), best_i.numpy()


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dims", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="alternating bare matmul / search runs")
    ap.add_argument("--no-old", action="store_true", help="skip the previous search (slowest)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    docs = rng.standard_normal((args.docs, args.dims), dtype=np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = rng.standard_normal((args.queries, args.dims), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    doc_ids = [f"d{i}" for i in range(args.docs)]
    query_ids = [f"q{i}" for i in range(args.queries)]
    qrels = {q: {f"d{j}": 1 for j in rng.choice(args.docs, rng.integers(1, 4), replace=False)} for q in query_ids}

    print(
        f"{args.queries} queries x {args.docs:,} docs x {args.dims} dims, top {args.k}, {args.threads} threads; "
        f"{cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"torch {torch.__version__}",
        flush=True,
    )
    q = torch.from_numpy(queries)
    bare_matmul(q, docs[: min(args.docs, BARE_CHUNK)])  # warm up BLAS threads
    bares, searches, products = [], [], []
    for _ in range(args.repeats):
        bares.append(timed(bare_matmul, q, docs)[0])
        t, (scores, indices) = timed(exact_top_k, queries, docs, args.k)
        searches.append(t)
        products.append(timed(product_alone, q, docs)[0])
    bare, t_search = min(bares), min(searches)
    t_run, run = timed(to_run, query_ids, doc_ids, scores, indices)
    t_metrics, (metrics, _) = timed(retrieval_scores, qrels, run, K_VALUES)
    rows = [
        ("bare matmul (fastest)", bare),
        ("search (exact_top_k, fastest)", t_search),
        ("product alone (fastest)", min(products)),
    ]
    if not args.no_old:
        t_old, (old_s, old_i) = timed(old_exact_top_k, queries, docs, args.k)
        rows.append(("old search (torch topk merge)", t_old))
    rows += [("run building (to_run)", t_run), ("metrics (pytrec_eval + MRR)", t_metrics)]
    print(f"{'step':32} {'seconds':>8} {'x bare':>7}")
    for name, t in rows:
        print(f"{name:32} {t:8.2f} {t / bare:7.2f}")
    e2e = t_search + t_run + t_metrics
    print(f"{'end to end (search+run+metrics)':32} {e2e:8.2f} {e2e / bare:7.2f}  = {e2e / t_search:.2f} x search")
    runs = {"bare matmul": bares, "search": searches, "product alone": products}
    print("; ".join(f"{name} runs: {', '.join(f'{t:.2f}' for t in ts)} s" for name, ts in runs.items()))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.no_old:
        return
    old_metrics, _ = retrieval_scores(qrels, to_run(query_ids, doc_ids, old_s, old_i), K_VALUES)
    agree = np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(old_i, indices, strict=True)])
    print(f"top-10 agreement old vs new search: {agree:.4f}; metrics equal: {metrics == old_metrics}")
    print(f"ndcg@10 {metrics['ndcg_at_10']} (old {old_metrics['ndcg_at_10']})")


if __name__ == "__main__":
    main()
