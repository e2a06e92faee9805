"""The workloads and figures of docs/scale.md: measured step costs of the 2-vCPU development machine,
GPU throughput ASSUMPTIONS for MiniLM-, base- and 7B-class models on an H100/H200 (no GPU was measured
here), the BEIR retrieval tasks, MSMARCO on 8 GPUs and the nightly 20 models x 40 tasks matrix."""

from dataclasses import replace

from sie_evals.lib.scale.fleet import Cell, Fleet, ModelClass, Settings, StepCosts, Task, hours, predict

# benchmarks/bench_scale_costs.py on the 2-vCPU VM at load 6.5-11 (RESULTS.md "Scale model: per-step costs"):
# a multiprocess step 4.4-4.6 s, an in-process run's own cost 1.0 s, 100k x 384 vectors written through the
# embedding cache and read back at 90 MB/s together (read alone 6.5 s per million), exact search 24.5 s per
# 1e9 query x document pairs (RESULTS.md "Exact search at matmul speed": 6.5-10 on a quieter machine); run
# building + scoring ~3 s per 1,000 queries (RESULTS.md "Exact search and scoring vs corpus size").
MEASURED_2VCPU = StepCosts(
    step_start_s=4.5,
    run_start_s=1.0,
    store_mb_s=90.0,
    merge_s_per_mvec=6.5,
    search_s_per_gqd=24.5,
    score_s_per_kq=3.0,
)
# all-MiniLM-L6-v2, default profile, 2 threads on this machine: 1,511 tokens/s on SciFact documents (239
# tokens each), 2,106 on its queries; model load 3.2 s.
MINILM_HERE = ModelClass("MiniLM on this 2-vCPU machine", 1_500.0, 384, 3.2, "measured here")
THIS_MACHINE = Fleet(gpus=1, cpu_workers=1, cpu_speedup=1.0, storage_mb_s=90.0)  # one embedding process

# H100 SXM / H200: 989 TFLOPS dense BF16 (NVIDIA's H100 and H200 datasheets: H200 has the H100's compute
# with more and faster memory). A forward pass costs ~2 x parameters FLOPs per token. ASSUMED utilisation:
# 25% for a 7B model (prefill-like, compute-bound; NVIDIA's TensorRT-LLM performance overview gives Mistral-7B
# on one H100 2,405 output tok/s at 2,048 input / 128 output tokens per request, i.e. ~38,000 prompt tokens/s,
# quoted in github.com/NVIDIA/TensorRT-LLM/issues/1570: the figure below is ~half of that, on purpose) and 5%
# for encoder models of 22-110M parameters (kernel-launch and memory bound at these sizes).
_PEAK_FLOPS = 989e12


def _tokens_per_s(params: float, utilisation: float) -> float:
    return utilisation * _PEAK_FLOPS / (2 * params)


MINILM = ModelClass(
    "MiniLM-class (22.7M, 384 dims)",
    _tokens_per_s(22.7e6, 0.05),
    384,
    2.0,
    "assumption: 5% of H100 BF16 peak at 2 x 22.7M FLOPs/token (~1.1M tokens/s); load measured here",
)
BASE = ModelClass(
    "base-class (110M, 768 dims)",
    _tokens_per_s(110e6, 0.05),
    768,
    3.0,
    "assumption: 5% of H100 BF16 peak at 2 x 110M FLOPs/token (~225k tokens/s)",
)
LLM_7B = ModelClass(
    "7B-class (7.1B, 4096 dims)",
    _tokens_per_s(7.1e9, 0.25),
    4096,
    20.0,
    "assumption: 25% of H100 BF16 peak at 2 x 7.1B FLOPs/token (~17k tokens/s; TRT-LLM prefill ~38k); "
    "14 GB of weights loaded per step in ~20 s",
)

# BEIR (Thakur et al. 2021, table 1): corpus, test queries (MSMARCO: dev), average document words; tokens are
# taken as 1.3 x words (WordPiece on English prose), queries as 12 tokens.
_BEIR = {
    "MSMARCO": (8_841_823, 6_980, 56.0),
    "TREC-COVID": (171_332, 50, 160.8),
    "NFCorpus": (3_633, 323, 232.3),
    "NQ": (2_681_468, 3_452, 78.9),
    "HotpotQA": (5_233_329, 7_405, 46.3),
    "FiQA2018": (57_638, 648, 132.3),
    "ArguAna": (8_674, 1_406, 166.8),
    "Touche2020": (382_545, 49, 292.4),
    "CQADupStack": (457_199, 13_145, 129.1),
    "QuoraRetrieval": (522_931, 10_000, 11.4),
    "DBPedia": (4_635_922, 400, 49.7),
    "SCIDOCS": (25_657, 1_000, 176.2),
    "FEVER": (5_416_568, 6_666, 84.8),
    "ClimateFEVER": (5_416_593, 1_535, 84.8),
    "SciFact": (5_183, 300, 213.6),
}
BEIR = [Task(name, docs, queries, 1.3 * words) for name, (docs, queries, words) in _BEIR.items()]
MSMARCO = BEIR[0]
# The other 25 tasks of a 40-task nightly: classification, STS, pair classification, clustering; ASSUMED
# 20,000 texts of 30 tokens each (Banking77: 13,083 texts; TwitterURLCorpus: 103,068), nothing to search.
OTHER = [Task(f"non-retrieval-{i + 1}", 20_000, 0, 30.0) for i in range(25)]
NIGHTLY_TASKS = BEIR + OTHER
# 20 models: 8 MiniLM-class, 8 base-class, 4 7B-class (an assumed mix).
NIGHTLY_MODELS = [MINILM] * 8 + [BASE] * 8 + [LLM_7B] * 4

# 8 GPU workers; 8 CPU workers of 16 vCPUs each (exact search ASSUMED to scale linearly from 2 vCPUs: 8x);
# an object store ASSUMED to sustain 1 GB/s in aggregate.
FLEET_8_GPUS = Fleet(gpus=8, cpu_workers=8, cpu_speedup=8.0, storage_mb_s=1000.0)


def msmarco_cells(model: ModelClass = MINILM) -> list[Cell]:
    return [Cell(model, MSMARCO)]


def nightly_cells() -> list[Cell]:
    """Model-major, as a backfill of the matrix queues them (largest tasks first within a model)."""
    tasks = sorted(NIGHTLY_TASKS, key=lambda t: -t.docs)
    return [Cell(m, t) for m in NIGHTLY_MODELS for t in tasks]


TUNED = Settings(gpu_pool_limit=8, pool_granularity="op", max_concurrent_runs=32)


def _scenarios() -> list[tuple[str, str, list[Cell], Fleet, Settings]]:
    cells = nightly_cells()
    tuned = "gpu pool 8 per step (`granularity: op`), 32 runs"
    one_gpu = replace(FLEET_8_GPUS, gpus=1)
    return [
        *(
            ("MSMARCO, " + m.name, "template, shard_size 100k", msmarco_cells(m), FLEET_8_GPUS, Settings())
            for m in (MINILM, BASE, LLM_7B)
        ),
        (
            "MSMARCO, " + LLM_7B.name,
            "shard_size 1M",
            msmarco_cells(LLM_7B),
            FLEET_8_GPUS,
            Settings(shard_size=1_000_000),
        ),
        ("MSMARCO, " + LLM_7B.name, "template, 1 GPU worker", msmarco_cells(LLM_7B), one_gpu, Settings()),
        ("MSMARCO, " + MINILM_HERE.name, "template", msmarco_cells(MINILM_HERE), THIS_MACHINE, Settings()),
        (
            "nightly 20 x 40, nothing cached",
            "template (gpu pool 1, `granularity: run`, 4 runs)",
            cells,
            FLEET_8_GPUS,
            Settings(),
        ),
        ("nightly 20 x 40, nothing cached", tuned, cells, FLEET_8_GPUS, TUNED),
        ("nightly 20 x 40, all cached", "template", [replace(c, cached=True) for c in cells], FLEET_8_GPUS, Settings()),
        ("nightly 20 x 40, all cached", tuned, [replace(c, cached=True) for c in cells], FLEET_8_GPUS, TUNED),
        (
            "nightly 20 x 40, one new 7B model",
            tuned,
            [replace(c, cached=i // len(NIGHTLY_TASKS) != 16) for i, c in enumerate(cells)],  # model 16: a 7B
            FLEET_8_GPUS,
            TUNED,
        ),
    ]


def fleet_text(fleet: Fleet) -> str:
    return "this machine" if fleet == THIS_MACHINE else f"{fleet.gpus} GPU, {fleet.cpu_workers} CPU workers"


def scenario_rows(costs: StepCosts = MEASURED_2VCPU) -> list[str]:
    """The table rows of docs/scale.md (test_scale_simulation checks the page holds them)."""
    rows = []
    for name, settings_text, cells, fleet, settings in _scenarios():
        p = predict(cells, fleet, settings, costs)
        b = p.bounds
        rows.append(
            f"| {name} | {fleet_text(fleet)} | {settings_text} | {hours(p.wall_s)} | {p.bottleneck} | "
            f"{hours(b['gpu'])} / {hours(b['cpu'])} / {hours(b['storage'])} | {p.storage_bytes / 1e12:.2f} TB |"
        )
    return rows
