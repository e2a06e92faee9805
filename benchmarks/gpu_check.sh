#!/usr/bin/env bash
# GPU check of the local engine, for any machine with a CUDA GPU (one short run, ~5-10 minutes):
#   1. the local engine on cuda: fp32 parity with the CPU (max |delta|, min per-item cosine),
#   2. fp16 and bf16 drift against fp32 on the CPU (min cosine; what a reduced-precision profile costs),
#   3. with several GPUs: data-parallel vectors identical to one GPU,
#   4. docs/s per batch size on cuda (fp32 and fp16),
#   5. the cold SciFact bench ratio vs mteb.evaluate on the same GPU (benchmarks/bench_scifact_vs_mteb.py),
# and appends the results, with the machine (GPU, driver, CUDA), to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh            # from the repo root, after scripts/bootstrap.sh
# Env: PYTHON (default .venv/bin/python), SIE_EVALS_DATA_DIR (default ../shared/data), N_DOCS (default 512).
# Needs torch built with CUDA in that venv (the CPU wheel pinned for development machines has none).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export SIE_EVALS_DATA_DIR=${SIE_EVALS_DATA_DIR:-../shared/data} HF_HUB_OFFLINE=1 PYTHONPATH=${PYTHONPATH:-$PWD}
export N_DOCS=${N_DOCS:-512}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

"$PYTHON" - > "$OUT/check.md" <<'PY'
import json, os, time
import numpy as np
import torch
from sie_evals.lib.config.model_config import Dtype, find_model_config
from sie_evals.lib.core.run_conditions import gpu_details, hardware
from sie_evals.lib.engines import EmbedKind
from sie_evals.lib.engines.local import LocalEngine
from sie_evals.lib.quality.parity import per_item_cosine

if not torch.cuda.is_available():
    raise SystemExit(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (CUDA build {torch.version.cuda})")
config = find_model_config("sentence-transformers/all-MiniLM-L6-v2")
base = config.resolve_profile("default")
with open(os.path.join(os.environ["SIE_EVALS_DATA_DIR"], "scifact", "corpus.jsonl")) as fh:
    docs = [json.loads(line)["text"] for line, _ in zip(fh, range(int(os.environ["N_DOCS"])))]

def embed(device, dtype=Dtype.float32, batch=32):
    profile = base.model_copy(update={"dtype": dtype})
    with LocalEngine(config, profile, batch_size=batch, device=device) as engine:
        return engine.embed(docs, EmbedKind.document)

gpu = gpu_details()
print(f"### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {gpu['count']} x {gpu['devices'][0]['name']} "
      f"({gpu['devices'][0]['memory_gib']} GiB), driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}, "
      f"torch {torch.__version__}; host CPU {hardware()['cpu']} x{hardware()['cpu_count']}\n")
print(f"{len(docs)} SciFact documents, all-MiniLM-L6-v2, max_seq_length {base.max_seq_length}.\n")
cpu = embed("cpu")
print("| check | max abs delta vs CPU fp32 | min per-item cosine |\n|---|---|---|")
for name, dtype in (("cuda fp32", Dtype.float32), ("cuda fp16", Dtype.float16), ("cuda bf16", Dtype.bfloat16)):
    vec = embed("cuda:0", dtype)
    print(f"| {name} | {np.abs(vec - cpu).max():.2e} | {per_item_cosine(vec, cpu).min():.7f} |")
if gpu["count"] > 1:
    same = np.array_equal(embed("cuda"), embed("cuda:0"))
    print(f"| data-parallel over {gpu['count']} GPUs vs one GPU | identical: {same} | |")
print("\n| batch size | fp32 docs/s | fp16 docs/s |\n|---|---|---|")
for batch in (1, 8, 32, 128, 512):
    rates = []
    for dtype in (Dtype.float32, Dtype.float16):
        profile = base.model_copy(update={"dtype": dtype})
        with LocalEngine(config, profile, batch_size=batch, device="cuda:0") as engine:
            engine.embed(docs[:batch], EmbedKind.document)  # warm-up (kernels, allocator)
            torch.cuda.synchronize()
            start = time.perf_counter()
            engine.embed(docs, EmbedKind.document)
            torch.cuda.synchronize()
            rates.append(len(docs) / (time.perf_counter() - start))
    print(f"| {batch} | {rates[0]:.0f} | {rates[1]:.0f} |")
PY
cat "$OUT/check.md"
echo "bench: cold SciFact vs mteb.evaluate on cuda ..."
"$PYTHON" benchmarks/bench_scifact_vs_mteb.py --profile default --device cuda --batch-size 128 | tee "$OUT/bench.txt"
{
  echo
  echo "## GPU check (benchmarks/gpu_check.sh)"
  echo
  cat "$OUT/check.md"
  echo
  echo '```'
  cat "$OUT/bench.txt"
  echo '```'
} >> benchmarks/RESULTS.md
echo "appended to benchmarks/RESULTS.md"
