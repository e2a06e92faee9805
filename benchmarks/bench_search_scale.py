"""Search and scoring against corpus size: synthetic unit vectors, memory-mapped from disk, through the real
embedding cache (`lib/engines/cache.EmbeddingCache`: written chunk by chunk, then assembled into a read-only
memory map as a real run's corpus is), the real exact search (`lib/quality/search.exact_top_k`, chunked), run
building (`to_run`, top k only) and MTEB-exact scoring (`lib/quality/metrics.retrieval_scores`, pytrec_eval).
Prints time and peak RSS per size, and the peak RSS beyond the memory-mapped vectors (page cache of the mapped
file is shared/evictable and not counted by the kernel as anonymous memory; VmHWM counts resident mapped pages
too, so we also sample RssAnon).

    nice -n 19 .venv/bin/python benchmarks/bench_search_scale.py --sizes 100000,500000,1000000 [--dir /tmp]

Per size, two subprocesses (each a fresh peak RSS): `direct` opens the generated `.npy` with np.load(mmap_mode="r")
(the reference), `cache` writes the same vectors into an embedding cache (a synthetic engine that returns rows of the
generated file, stored as the cache's 2,048-row chunks; not timed) and then times the cache assembling them into its
memory map, and searches that. A sampling thread records the peak of RssAnon (memory beyond mapped files) in each
child. The vector file and the cache are deleted after each size.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
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


class PeakAnon:
    """Peak RssAnon (kB) of this process, sampled every 20 ms: memory beyond the memory-mapped vectors."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def synthetic_engine(vectors_path: Path):
    """An Engine whose vector for the text `doc-<i>` is row i of the generated file (cache input, not a model)."""
    import numpy as np

    from sie_evals.lib.config.model_config import find_model_config
    from sie_evals.lib.engines import Engine, EngineInfo

    class FileRowsEngine(Engine):
        name = "file-rows"

        def info(self) -> EngineInfo:
            return EngineInfo("file-rows", "1", "synthetic-unit-vectors", None, str(vectors_path.name))

        def _embed_prepared(self, texts, kind=None):
            rows = np.load(vectors_path, mmap_mode="r")
            return np.asarray(rows[[int(t.rsplit("-", 1)[1]) for t in texts]])

    model = find_model_config(
        "sentence-transformers/all-MiniLM-L6-v2", Path(__file__).resolve().parents[1] / "model_configs"
    )
    return FileRowsEngine(model, model.resolve_profile("default"))


def doc_texts(n: int) -> list[str]:
    return [f"doc-{i}" for i in range(n)]


def fill_cache(path: Path, cache_dir: Path) -> float:
    import numpy as np

    from sie_evals.lib.engines import EmbedKind
    from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache

    n = np.load(path, mmap_mode="r").shape[0]
    t = time.perf_counter()
    stats = CacheStats()
    EmbeddingCache(cache_dir).embed(synthetic_engine(path), doc_texts(n), EmbedKind.document, stats)
    assert stats.misses == -(-n // 2048), stats
    return time.perf_counter() - t


def child(path: Path, cache_dir: Path | None) -> dict:
    import numpy as np

    from sie_evals.lib.quality.metrics import retrieval_scores
    from sie_evals.lib.quality.search import exact_top_k, to_run

    sampler = PeakAnon()
    t_assemble = time.perf_counter()
    if cache_dir is None:
        docs = np.load(path, mmap_mode="r")
    else:
        from sie_evals.lib.engines import EmbedKind
        from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache

        texts = doc_texts(np.load(path, mmap_mode="r").shape[0])
        stats = CacheStats()
        cache = EmbeddingCache(cache_dir, memmap_min_rows=1)  # memory-mapped at every size (runs: 200k rows up)
        docs = cache.embed(synthetic_engine(path), texts, EmbedKind.document, stats)
        del texts
        assert isinstance(docs, np.memmap) and stats.misses == 0, stats
        assert not list((cache_dir / "memmap").iterdir())  # unlinked once open
    assemble_s = time.perf_counter() - t_assemble
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
        "mode": "direct" if cache_dir is None else "cache",
        "assemble_s": round(assemble_s, 2),
        "search_s": round(t1 - t0, 2),
        "run_and_score_s": round(t2 - t1, 2),
        "ndcg_at_10": metrics["ndcg_at_10"],
        "peak_rss_mb": round(hwm["VmHWM"] / 1024),
        "rss_anon_mb": round(hwm["RssAnon"] / 1024),
        "rss_file_mb": round(hwm["RssFile"] / 1024),
        "peak_anon_mb": round(sampler.stop() / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,500000,1000000,2000000,5000000")
    parser.add_argument("--modes", default="direct,cache", help="direct (np.load mmap) and/or cache (assembled)")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child), Path(args.cache_dir) if args.cache_dir else None)))
        return
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        path = Path(args.dir) / f"sie-evals-bench-{n}.npy"
        cache_dir = Path(args.dir) / f"sie-evals-bench-cache-{n}"
        try:
            t = time.perf_counter()
            make_corpus(path, n)
            gen = time.perf_counter() - t
            for mode in args.modes.split(","):
                extra = []
                fill = None
                if mode == "cache":
                    fill = fill_cache(path, cache_dir)
                    extra = ["--cache-dir", str(cache_dir)]
                cmd = [sys.executable, __file__, "--child", str(path), *extra]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["generate_s"] = round(gen, 1)
                row["fill_cache_s"] = None if fill is None else round(fill, 1)
                row["load_avg_1m"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            path.unlink(missing_ok=True)
            shutil.rmtree(cache_dir, ignore_errors=True)
    print(
        "\n| docs | mode | assemble s | search s | run+score s | search s per 1M docs | peak RSS MB "
        "| peak anon RSS MB | mapped file RSS MB (end) | load 1m |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_m = r["search_s"] / (r["docs"] / 1e6)
        print(
            f"| {r['docs']:,} | {r['mode']} | {r['assemble_s']} | {r['search_s']} | {r['run_and_score_s']} | "
            f"{per_m:.1f} | {r['peak_rss_mb']} | {r['peak_anon_mb']} | {r['rss_file_mb']} | {r['load_avg_1m']} |"
        )
    import numpy as np

    for mode in sorted({r["mode"] for r in rows}):
        sel = [r for r in rows if r["mode"] == mode]
        if len(sel) < 2:
            continue
        x = np.array([r["docs"] for r in sel], dtype=float)
        y = np.array([r["assemble_s"] + r["search_s"] + r["run_and_score_s"] for r in sel])
        slope, intercept = np.polyfit(x, y, 1)
        r2 = 1 - ((y - (slope * x + intercept)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        print(
            f"{mode}: time = {slope * 1e6:.1f} s per 1M docs + {intercept:.1f} s, R^2 {r2:.4f}; "
            f"largest/smallest {y[-1] / y[0]:.1f}x for {x[-1] / x[0]:.0f}x the documents; "
            f"max peak anon RSS {max(r['peak_anon_mb'] for r in sel)} MB"
        )
    for n in sorted({r["docs"] for r in rows}):
        by = {r["mode"]: r for r in rows if r["docs"] == n}
        if {"direct", "cache"} <= set(by):
            ratio = by["cache"]["search_s"] / by["direct"]["search_s"]
            print(f"{n:,} docs: search over the cache's memory map / over np.load's: {ratio:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
