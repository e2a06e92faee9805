"""How Hugging Face text-embeddings-inference (`text-embeddings-router`) is started for one model.

TEI is a Rust binary: it is not on PyPI, npm or apt, so the harness does not provision it. It is used
when `text-embeddings-router` is on PATH (or a server is given with --tei-url). Written against TEI's
documented API (/health, /info, POST /embed); it could not be run on the machines this was built on.
"""

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from sie_evals.lib.config.model_config import ModelConfig, Pooling, ResolvedProfile
from sie_evals.lib.core.errors import InputError, SetupError
from sie_evals.lib.servers.managed import ServerCommand

EXECUTABLE = "text-embeddings-router"
HOW_TO_GET = (
    f"{EXECUTABLE} (Hugging Face text-embeddings-inference) is not on PATH. It is not on PyPI/npm/apt: "
    "build it with `cargo install --path router -F candle` (CPU; `-F mkl` on x86) from "
    "https://github.com/huggingface/text-embeddings-inference, or run its Docker image "
    "(ghcr.io/huggingface/text-embeddings-inference:cpu-<version>) and pass --tei-url http://127.0.0.1:<port>"
)
POOLING = {Pooling.mean: "mean", Pooling.cls: "cls", Pooling.last: "last-token"}


def find_executable() -> str:
    exe = shutil.which(EXECUTABLE)
    if exe is None:
        raise SetupError(f"tei: {HOW_TO_GET}")
    return exe


def available() -> bool:
    return shutil.which(EXECUTABLE) is not None


def ready_rule(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as resp:
            if resp.status != 200:
                return False
        with urllib.request.urlopen(f"{base_url}/info", timeout=5) as resp:
            return isinstance(json.loads(resp.read()), dict)
    except urllib.error.HTTPError:
        return False


def command(
    model: ModelConfig, profile: ResolvedProfile, weights_path: str, batch_size: int, run_dir: Path
) -> ServerCommand:
    if profile.dtype.value not in ("float32", "float16"):
        raise InputError(f"tei: profile {profile.name!r} dtype {profile.dtype.value}: TEI has float32|float16")
    exe = find_executable()

    def argv(port: int) -> list[str]:
        return [
            exe,
            "--model-id",
            weights_path,
            "--hostname",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            profile.dtype.value,
            "--pooling",
            POOLING[profile.pooling],
            "--max-client-batch-size",
            str(max(batch_size, 32)),
            "--huggingface-hub-cache",
            str(run_dir / "hf"),
        ]

    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(run_dir / "hf")}
    return ServerCommand(name="tei", argv=argv, ready=ready_rule, env=env, cwd=run_dir)
