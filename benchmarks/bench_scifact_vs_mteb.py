"""Cold SciFact quality eval: sie-evals vs MTEB's own `mteb.evaluate`, same process, same model,
data and thread count. Prints both wall times, the ratio (goal <= 0.70 for the default profile) and
both ndcg@10, and whether every profile's ten main metrics equal the first one's to 5 decimals.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_scifact_vs_mteb.py [--threads 2] [--profile default,torch]
        [--limit-queries N]

`--profile` picks the model-config profile(s) sie-evals runs (default `default`: `runtime: auto`, the
fastest runtime on this machine whose vectors are within 1e-5 of torch's; `torch` is the default profile
with runtime torch, `openvino`/`onnx` the exported runtimes by name). MTEB runs between the first and the
second profile. What happens once per machine (auto's calibration, an ONNX export) is cached: the
benchmark makes sure it exists before timing (and prints how long it took, when it had to be made),
as every later run finds it.

Both wall time and this process's CPU time are printed: on a shared VM with CPU steal, CPU time is
the steadier measure, so the ratio is given for both.

"Cold" means an empty embedding cache for sie-evals (a fresh temp dir) and no MTEB result cache;
model load time is included for both. MTEB gets the same local SciFact files injected as its task
dataset (it would otherwise download them).
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SIE_EVALS_DATA_DIR", REPO.parent / "shared" / "data"))


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    score = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, score


TEN_METRICS = (
    "ndcg_at_1", "ndcg_at_10", "ndcg_at_100", "map_at_10", "map_at_100",
    "recall_at_10", "recall_at_100", "recall_at_1000", "precision_at_10", "mrr_at_10",
)  # fmt: skip


def resolve_profile(profile_name: str):
    """A config profile by name; `torch` is the default profile with runtime torch."""
    from sie_evals.lib.config.model_config import Runtime, find_model_config

    config = find_model_config("sentence-transformers/all-MiniLM-L6-v2")
    if profile_name == "torch":
        return config, config.resolve_profile("default").model_copy(update={"runtime": Runtime.torch})
    return config, config.resolve_profile(profile_name)


def prepare(profile_name: str, threads: int, batch_size: int) -> tuple[float, str]:
    """Seconds spent on what is made once (auto's calibration and export, a profile's ONNX export; about
    a second when cached: model load), and the runtime the profile runs."""
    from sie_evals.lib.engines.local import LocalEngine

    config, profile = resolve_profile(profile_name)
    start = time.perf_counter()
    engine = LocalEngine(config, profile, threads=threads, batch_size=batch_size)
    runtime = engine.runtime
    if runtime.value != "torch":
        engine.start()  # makes the export when missing
        engine.stop()
    choice = engine.runtime_choice()
    why = f" ({choice.reason}; calibrated {choice.calibrated}, {choice.file})" if choice else ""
    return time.perf_counter() - start, f"{runtime.value}{why}"


def run_ours(data, threads: int, batch_size: int, profile_name: str, device: str | None = None) -> dict:
    from sie_evals.lib.engines.cache import EmbeddingCache
    from sie_evals.lib.harness.evaluation import EngineOptions, evaluate_source
    from sie_evals.lib.tasks import resolve_task

    config, profile = resolve_profile(profile_name)
    with tempfile.TemporaryDirectory() as cold:
        result = evaluate_source(
            config,
            profile,
            resolve_task("beir/SciFact"),
            data,
            "local",
            EngineOptions(batch_size=batch_size, threads=threads, device=device),
            EmbeddingCache(Path(cold)),
        )
    return result.metrics


def run_mteb(data, threads: int, batch_size: int, device: str = "cpu") -> float:
    import mteb
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from sie_evals.lib.config.model_config import find_model_config
    from sie_evals.lib.config.weights import resolve_weights

    torch.set_num_threads(threads)
    task = mteb.get_task("SciFact")
    # MTEB's corpus rows carry title and text separately; it joins them itself.
    import json

    docs = {}
    with open(DATA / "scifact" / "corpus.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            docs[row["_id"]] = row
    wanted = set(data.corpus_ids)
    corpus = Dataset.from_list(
        [{"id": d, "title": docs[d]["title"], "text": docs[d]["text"]} for d in data.corpus_ids if d in wanted]
    )
    queries = Dataset.from_list([{"id": q, "text": t} for q, t in zip(data.query_ids, data.query_texts, strict=True)])
    task.dataset = {
        "default": {"test": {"corpus": corpus, "queries": queries, "relevant_docs": data.qrels, "top_ranked": None}}
    }
    task.data_loaded = True
    model = SentenceTransformer(
        resolve_weights(find_model_config("sentence-transformers/all-MiniLM-L6-v2")), device=device
    )
    with tempfile.TemporaryDirectory() as out:
        res = mteb.evaluate(
            model,
            task,
            cache=None,
            prediction_folder=out,
            encode_kwargs={"batch_size": batch_size},
            show_progress_bar=False,
        )
    return res.task_results[0].scores["test"][0]["ndcg_at_10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit-queries", type=int, default=None, help="a slice, for a quick look")
    parser.add_argument(
        "--profile", default="default", help="sie-evals profile(s) to time, comma-separated (e.g. default,torch)"
    )
    parser.add_argument("--device", default=None, help="device for both sides (e.g. cuda; default cpu)")
    args = parser.parse_args()

    import torch

    from sie_evals.lib.core.run_conditions import hardware
    from sie_evals.lib.tasks import load_retrieval_data, resolve_task

    torch.set_num_threads(args.threads)
    data = load_retrieval_data(resolve_task("beir/SciFact"), "test", DATA)
    if args.limit_queries:
        data = data.take_subset(args.limit_queries)
    hw = hardware()
    print(
        f"machine: {hw['cpu']} x{hw['cpu_count']}, load {hw['load_avg_1m']}; threads {args.threads}; "
        f"batch {args.batch_size}; profiles {args.profile}; {data.counts}"
    )
    profiles = [p.strip() for p in args.profile.split(",") if p.strip()]
    for profile in profiles:
        made, runtime = prepare(profile, args.threads, args.batch_size)
        print(f"profile {profile}: prepared (calibration/export when not cached) in {made:.1f}s; runtime {runtime}")
    # MTEB runs between the first and the second profile, so a load drift hits both sides alike
    ours: dict[str, tuple[float, float]] = {}
    metrics: dict[str, dict] = {}
    mteb_wall = mteb_cpu = None
    for i, profile in enumerate(profiles):
        wall, cpu, metrics[profile] = timed(run_ours, data, args.threads, args.batch_size, profile, args.device)
        ours[profile] = (wall, cpu)
        print(
            f"sie-evals -p {profile} cold eval: wall {wall:.1f}s  cpu {cpu:.1f}s  "
            f"ndcg@10 {metrics[profile]['ndcg_at_10']:.5f}; load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        if i == 0:
            mteb_wall, mteb_cpu, mteb_ndcg = timed(run_mteb, data, args.threads, args.batch_size, args.device or "cpu")
            print(
                f"mteb.evaluate: wall {mteb_wall:.1f}s  cpu {mteb_cpu:.1f}s  ndcg@10 {mteb_ndcg:.5f}; "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    for profile, (wall, cpu) in ours.items():
        print(
            f"ratio sie-evals -p {profile} / mteb: wall {wall / mteb_wall:.3f}, cpu {cpu / mteb_cpu:.3f} (goal <= 0.70)"
        )
    first = profiles[0]
    for profile in profiles[1:]:
        differ = [m for m in TEN_METRICS if round(metrics[profile][m], 5) != round(metrics[first][m], 5)]
        print(f"{profile} vs {first}: ten metrics equal to 5 decimals: {not differ} {differ or ''}")
    print({p: {m: round(metrics[p][m], 5) for m in TEN_METRICS} for p in profiles})


if __name__ == "__main__":
    main()
