"""How infinity-emb 0.0.78 (`infinity_emb v2`) is started for one model.

The model is served from the model config's local weights folder under the model id as its name.
No warm-up at start (it times batches for ~30 s on a small CPU); telemetry is off. Ready means:
GET /health answers 200 and GET /models lists the model.
"""

import json
import urllib.error
import urllib.request
from pathlib import Path

from sie_evals.lib.config.model_config import ModelConfig, Pooling, ResolvedProfile
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.servers import install
from sie_evals.lib.servers.managed import ServerCommand

POOLING = {Pooling.mean: "mean", Pooling.cls: "cls"}
DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def ready_rule(model_id: str):
    def ready(base_url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5) as resp:
                if resp.status != 200:
                    return False
            with urllib.request.urlopen(f"{base_url}/models", timeout=5) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError:
            return False
        data = body.get("data", []) if isinstance(body, dict) else []
        return any(isinstance(m, dict) and m.get("id") == model_id for m in data)

    return ready


def command(
    model: ModelConfig,
    profile: ResolvedProfile,
    weights_path: str,
    device: str,
    batch_size: int,
    run_dir: Path,
    threads: int | None = None,
) -> ServerCommand:
    if profile.pooling not in POOLING:
        raise InputError(f"infinity: profile {profile.name!r} pools by {profile.pooling.value}; infinity has mean|cls")
    if not profile.normalize:
        raise InputError(f"infinity: profile {profile.name!r} has normalize: false; infinity always L2-normalises")
    exe = install.executable("infinity")
    env = {
        **install.isolated_env("infinity", run_dir),
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "INFINITY_HOME": str(run_dir / "infinity"),
    }
    if threads:  # torch's intra-op pool reads these at start: pins the server's threads like --threads does for local
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)

    def argv(port: int) -> list[str]:
        return [
            str(exe),
            "v2",
            "--model-id",
            weights_path,
            "--served-model-name",
            model.model_id,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            device,
            "--engine",
            "torch",
            "--dtype",
            DTYPES[profile.dtype.value],
            "--pooling-method",
            POOLING[profile.pooling],
            "--batch-size",
            str(batch_size),
            "--no-model-warmup",
            "--no-vector-disk-cache",
        ]

    return ServerCommand(name="infinity", argv=argv, ready=ready_rule(model.model_id), env=env, cwd=run_dir)
