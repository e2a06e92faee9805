"""Late interaction vs its MUVERA approximation on SciFact (all-MiniLM-L6-v2 token vectors), plus the
cost of each output type's search.

Embeds SciFact's test queries and corpus once with the `multivector` profile (through the embedding
cache), then:
- exact MaxSim retrieval metrics (the `multivector` profile) and MUVERA FDE dot-product metrics (the
  `muvera` profile) with the same pytrec_eval metrics as every other eval;
- per query, the Spearman correlation between FDE dot products and exact MaxSim scores over the whole
  corpus (mean, median, min), and over each query's exact top 100;
- recall@10 of MUVERA's top 10 against exact MaxSim's top 10 (the ANN sense of recall);
- search seconds (process CPU and wall) of exact MaxSim vs FDE dot-product search, in this process.

    HF_HUB_OFFLINE=1 SIE_EVALS_DATA_DIR=../shared/data python benchmarks/bench_outputs.py --threads 2 \
        [--limit-queries 50 --corpus-size 1000] [-o results.json]
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from sie_evals.lib.config.model_config import find_model_config
from sie_evals.lib.core import paths
from sie_evals.lib.engines import EmbedKind, create_engine
from sie_evals.lib.engines.cache import EmbeddingCache
from sie_evals.lib.engines.muvera import muvera_fde
from sie_evals.lib.harness.evaluation import DataOptions, load_task
from sie_evals.lib.quality.maxsim import maxsim_matrix
from sie_evals.lib.quality.metrics import retrieval_scores
from sie_evals.lib.quality.output_search import dot_top_k
from sie_evals.lib.quality.search import to_run


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-queries", type=int)
    ap.add_argument("--corpus-size", type=int)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = find_model_config("all-MiniLM-L6-v2")
    mv_profile, fde_profile = config.resolve_profile("multivector"), config.resolve_profile("muvera")
    spec, data = load_task("beir/SciFact", DataOptions(limit_queries=args.limit_queries, corpus_size=args.corpus_size))
    cache = EmbeddingCache(paths.cache_dir())
    engine = create_engine("local", config, mv_profile, threads=args.threads)
    with engine:
        (q, d), embed_wall, embed_cpu = timed(
            lambda: (
                cache.embed(engine, data.query_texts, EmbedKind.query),
                cache.embed(engine, data.corpus_texts, EmbedKind.document),
            )
        )
    k = max(spec.rules.k_values)
    exact, maxsim_wall, maxsim_cpu = timed(lambda: maxsim_matrix(q, d))
    settings = fde_profile.muvera
    (fq, fd), fde_wall, fde_cpu = timed(lambda: (muvera_fde(q, settings, True), muvera_fde(d, settings, False)))
    approx, dot_wall, dot_cpu = timed(lambda: fq @ fd.T)

    def metrics_of(scores: np.ndarray) -> dict[str, float]:
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        run = to_run(data.query_ids, data.corpus_ids, np.take_along_axis(scores, top, 1), top)
        metrics, _ = retrieval_scores(
            data.qrels, run, spec.rules.k_values, spec.rules.ignore_identical_ids, spec.rules.skip_first_result
        )
        return {m: metrics[m] for m in ("ndcg_at_10", "map_at_10", "recall_at_10", "recall_at_100")}

    rho_all = np.array([spearmanr(approx[i], exact[i])[0] for i in range(len(exact))])
    top100 = np.argsort(-exact, axis=1)[:, :100]
    rho_top = np.array([spearmanr(approx[i, t], exact[i, t])[0] for i, t in enumerate(top100)])
    exact10 = np.argsort(-exact, axis=1)[:, :10]
    fde10 = dot_top_k(fq, fd, 10)[1]
    recall10 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact10, fde10, strict=True)])
    result = {
        "dataset": data.content_hash[:12],
        "variant": data.variant,
        "queries": len(data.query_ids),
        "documents": len(data.corpus_ids),
        "muvera": settings.model_dump() | {"dims": settings.dims},
        "maxsim_metrics": metrics_of(exact),
        "muvera_metrics": metrics_of(approx),
        "spearman_full_corpus": {
            "mean": float(rho_all.mean()),
            "median": float(np.median(rho_all)),
            "min": float(rho_all.min()),
        },
        "spearman_top100_exact": {"mean": float(rho_top.mean()), "median": float(np.median(rho_top))},
        "recall_at_10_vs_exact_maxsim": float(recall10),
        "tokens": {"query_mean": float(q.lengths().mean()), "document_mean": float(d.lengths().mean())},
        "seconds": {
            "embed_wall": round(embed_wall, 1),
            "embed_cpu": round(embed_cpu, 1),
            "maxsim_wall": round(maxsim_wall, 2),
            "maxsim_cpu": round(maxsim_cpu, 2),
            "fde_encode_wall": round(fde_wall, 2),
            "fde_encode_cpu": round(fde_cpu, 2),
            "fde_dot_wall": round(dot_wall, 3),
            "fde_dot_cpu": round(dot_cpu, 3),
        },
        "maxsim_over_fde_search_cpu_ratio": round(maxsim_cpu / max(dot_cpu, 1e-9), 1),
        "threads": args.threads,
        "load_avg": os.getloadavg(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
