"""Per-step costs of a sharded eval on this machine, the inputs of the fleet model (lib/scale/fleet.py,
docs/scale.md):

- embedding: all-MiniLM-L6-v2, default profile, 2 threads, docs/s and tokens/s for short texts (SciFact
  test queries) and SciFact-length documents (title + abstract), after one warm-up batch;
- a shard's vectors through the embedding cache: writing 100,000 x 384 vectors (one shard at the default
  shard_size) as the cache's 2,048-row chunks, and reading them back into the memory map the merge and the
  search use (merge cost per million vectors);
- exact search (lib/quality/search.exact_top_k, k = 1000) per 1e9 query x document pairs at 384 dims;
- Dagster: a run of 1 and of 4 chained trivial steps on a temporary SQLite instance, in-process and
  multiprocess executors: per-step cost = (4-step run - 1-step run) / 3, run cost = 1-step run - one step;
- pools: the simulation test's fake sharded job (5 sleeping shard steps, `pool="gpu"`) on the multiprocess
  executor (max_concurrent 6, no queue limits) under a `gpu` pool limit of 2 with `granularity: run` (the
  template's) and `op`: how many shard steps ran at once.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_scale_costs.py [--docs 100000] [--search-docs 200000]
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


@dg.op
def trivial(x: int | None = None) -> int:
    return (x or 0) + 1


@dg.job(executor_def=dg.in_process_executor)
def one_in_process():
    trivial()


@dg.job(executor_def=dg.in_process_executor)
def four_in_process():
    trivial.alias("d")(trivial.alias("c")(trivial.alias("b")(trivial.alias("a")())))


@dg.job(executor_def=dg.multiprocess_executor)
def one_multiprocess():
    trivial()


@dg.job(executor_def=dg.multiprocess_executor)
def four_multiprocess():
    trivial.alias("d")(trivial.alias("c")(trivial.alias("b")(trivial.alias("a")())))


def dagster_costs(repeats: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, one, four in (
        ("in_process", one_in_process, four_in_process),
        ("multiprocess", one_multiprocess, four_multiprocess),
    ):
        walls: dict[str, list[float]] = {"one": [], "four": []}
        for _ in range(repeats):
            for label, job in (("one", one), ("four", four)):
                with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test(temp_dir=tmp) as instance:
                    start = time.perf_counter()
                    assert dg.execute_job(dg.reconstructable(job), instance=instance).success
                    walls[label].append(time.perf_counter() - start)
        one_s, four_s = min(walls["one"]), min(walls["four"])
        step = (four_s - one_s) / 3
        out[name] = {"run_1_step_s": one_s, "run_4_steps_s": four_s, "step_s": step, "run_s": one_s - step}
    return out


def pool_check() -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(REPO))
    from sie_evals.lib.scale.schedule import max_overlap
    from sie_evals_tests import test_scale_simulation as sim

    out = {}
    for granularity in ("run", "op"):
        concurrency = sim._template_concurrency()
        concurrency["pools"] = {**concurrency["pools"], "granularity": granularity, "default_limit": 2}
        with (
            tempfile.TemporaryDirectory() as tmp,
            dg.instance_for_test(temp_dir=tmp, overrides={"concurrency": concurrency}) as instance,
        ):
            run_config = {"execution": {"config": {"max_concurrent": 6}}}
            result = dg.execute_job(dg.reconstructable(sim.fake_sharded_eval), instance=instance, run_config=run_config)
            spans = sim._spans(instance, result.run_id)
        gpu = [v for k, v in spans.items() if k.startswith("embed_shard")]
        wall = max(b for _, b in spans.values()) - min(a for a, _ in spans.values())
        out[f"granularity {granularity}, gpu pool 2"] = {"max_gpu_steps_at_once": max_overlap(gpu), "wall_s": wall}
    return out


def embedding_costs() -> dict[str, dict[str, float]]:
    from sie_evals.lib.config.model_config import find_model_config
    from sie_evals.lib.engines import EmbedKind
    from sie_evals.lib.engines.local import LocalEngine
    from sie_evals.lib.tasks import load_retrieval_data, resolve_task

    data_root = Path(os.environ.get("SIE_EVALS_DATA_DIR", REPO.parent / "shared" / "data"))
    data = load_retrieval_data(resolve_task("beir/SciFact"), "test", data_root)
    model = find_model_config("sentence-transformers/all-MiniLM-L6-v2", REPO / "model_configs")
    engine = LocalEngine(model, model.resolve_profile("default"), threads=2)
    start = time.perf_counter()
    engine.start()
    load_s = time.perf_counter() - start
    tok = getattr(engine, "_tokenizer", None)  # the loaded tokenizer, to count tokens per text
    out: dict[str, dict[str, float]] = {"model_load": {"seconds": load_s}}
    for label, texts, kind in (
        ("short (SciFact queries)", data.query_texts[:256], EmbedKind.query),
        ("SciFact documents", data.corpus_texts[:128], EmbedKind.document),
    ):
        engine.embed(texts[:32], kind)  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        engine.embed(texts, kind)
        wall = time.perf_counter() - start
        row = {
            "texts": len(texts),
            "seconds": wall,
            "cpu_s": time.process_time() - cpu,
            "docs_per_s": len(texts) / wall,
        }
        if tok is not None:
            tokens = sum(min(len(tok(t)["input_ids"]), 256) for t in texts)
            row.update(tokens_per_doc=tokens / len(texts), tokens_per_s=tokens / wall)
        out[label] = row
    engine.stop()
    return out


def cache_costs(n_docs: int, where: Path) -> dict[str, float]:
    from bench_search_scale import doc_texts, fill_cache, make_corpus, synthetic_engine

    from sie_evals.lib.engines import EmbedKind
    from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache

    tmp = Path(tempfile.mkdtemp(dir=where))
    try:
        vectors = tmp / "vectors.npy"
        make_corpus(vectors, n_docs)
        write_s = fill_cache(vectors, tmp / "cache")
        start = time.perf_counter()
        cache = EmbeddingCache(tmp / "cache", memmap_min_rows=1)
        docs = cache.embed(synthetic_engine(vectors), doc_texts(n_docs), EmbedKind.document, CacheStats())
        read_s = time.perf_counter() - start
        mb = docs.nbytes / 1e6
        del docs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "vectors": n_docs,
        "mb": mb,
        "write_s": write_s,
        "read_s": read_s,
        "store_mb_s": 2 * mb / (write_s + read_s),
        "merge_s_per_mvec": read_s * 1e6 / n_docs,
    }


def search_costs(n_docs: int, n_queries: int = 1000) -> dict[str, float]:
    import numpy as np

    from sie_evals.lib.quality.search import exact_top_k

    rng = np.random.default_rng(0)
    docs = rng.standard_normal((n_docs, 384), dtype=np.float32)
    queries = rng.standard_normal((n_queries, 384), dtype=np.float32)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        exact_top_k(queries, docs, 1000)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"queries": n_queries, "docs": n_docs, "seconds": best, "s_per_gqd": best / (n_queries * n_docs / 1e9)}


def _rounded(v):
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return round(v, 4) if isinstance(v, float) else v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000, help="vectors in the shard written/read through the cache")
    ap.add_argument("--search-docs", type=int, default=200_000)
    ap.add_argument("--dagster-repeats", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--only", default="embedding,cache,search,dagster,pools")
    args = ap.parse_args()
    only = set(args.only.split(","))
    result: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_start": os.getloadavg()[0],
    }
    if "embedding" in only:
        result["embedding"] = embedding_costs()
    if "cache" in only:
        result["cache"] = cache_costs(args.docs, args.dir)
    if "search" in only:
        result["search"] = search_costs(args.search_docs)
    if "dagster" in only:
        result["dagster"] = dagster_costs(args.dagster_repeats)
    if "pools" in only:
        result["pools"] = pool_check()
    result["load_end"] = os.getloadavg()[0]
    print(json.dumps(_rounded(result), indent=2))


if __name__ == "__main__":
    main()
