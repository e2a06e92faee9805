"""How the real SIE server (`sie-server serve`, 0.10.1) is started for one model.

Each run gets a private models dir holding one YAML whose `weights_path` is the model config's local
weights folder, so nothing is fetched from the hub (`--no-hf-fallback`, HF_HUB_OFFLINE). Telemetry is
off, and the IPC socket, data dir and HF_HOME are per instance (two servers on one machine would
otherwise share a socket). Ready means: the model reports state `loaded` in GET /v1/models. /readyz
alone is not enough: it answers 200 even when preloading failed and the model will never load.
"""

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from sie_evals.lib.config.model_config import ModelConfig, OutputType, Pooling, ResolvedProfile
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.servers import install
from sie_evals.lib.servers.managed import ServerCommand, ServerStartError

# Pooling names of SIE's sentence-transformer adapter for our profile's pooling modes.
POOLING = {Pooling.mean: "mean", Pooling.cls: "cls", Pooling.last: "last"}


# SIE's SPLADE adapter (masked-LM checkpoints; SDPA attention on CPU). Written from SIE's documented
# catalog layout; this machine has no SIE install that serves it, so the sparse route is untested here.
SPLADE_ADAPTER = "sie_server.adapters.splade_flash.adapter:SPLADEFlashAdapter"


def model_yaml(model: ModelConfig, profile: ResolvedProfile, weights_path: str, dims: int) -> dict[str, Any]:
    """SIE's per-model config (the shape of its shipped catalog YAMLs), from our model config. `dims`
    is the dense width, or the vocabulary for a sparse profile."""
    if profile.output == OutputType.multivector:
        raise InputError(
            f"sie: profile {profile.name!r} needs multivector output, but the SIE server the harness starts "
            f"serves {model.model_id} with sentence-transformers' dense adapter (SIE's multivector adapters "
            "are for ColBERT checkpoints); use --sie-url with a server whose model declares multivector"
        )
    if profile.output == OutputType.sparse:
        return {
            "sie_id": model.model_id,
            "weights_path": weights_path,
            "inputs": {"text": True, "image": False, "audio": False, "video": False},
            "tasks": {
                "encode": {"dense": None, "sparse": {"dim": dims}, "multivector": None},
                "score": None,
                "extract": None,
            },
            "max_sequence_length": profile.max_seq_length,
            "profiles": {
                "default": {
                    "max_batch_tokens": 16384,
                    "compute_precision": None if profile.dtype.value == "float32" else profile.dtype.value,
                    "adapter_path": SPLADE_ADAPTER,
                    "adapter_options": {"loadtime": {}, "runtime": {"output_types": ["sparse"]}},
                }
            },
        }
    return {
        "sie_id": model.model_id,
        "weights_path": weights_path,
        "inputs": {"text": True, "image": False, "audio": False, "video": False},
        "tasks": {
            "encode": {"dense": {"dim": dims}, "sparse": None, "multivector": None},
            "score": None,
            "extract": None,
        },
        "max_sequence_length": profile.max_seq_length,
        "profiles": {
            "default": {
                "max_batch_tokens": 16384,
                "compute_precision": None if profile.dtype.value == "float32" else profile.dtype.value,
                "adapter_path": "sie_server.adapters.sentence_transformer:SentenceTransformerDenseAdapter",
                "adapter_options": {
                    "loadtime": {"trust_remote_code": False},
                    "runtime": {"pooling": POOLING[profile.pooling], "normalize": profile.normalize},
                },
            }
        },
    }


def write_models_dir(folder: Path, model: ModelConfig, profile: ResolvedProfile, weights_path: str, dims: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (model.model_id.replace("/", "__") + ".yaml")
    path.write_text(yaml.safe_dump(model_yaml(model, profile, weights_path, dims), sort_keys=False))
    return folder


def model_state(base_url: str, model_id: str, timeout: float = 5.0) -> tuple[str | None, Any]:
    """The model's (state, last_error) in GET /v1/models; state None when the server does not list it.
    States in 0.10.1: available, loading, loaded, unloading, failed."""
    with urllib.request.urlopen(f"{base_url}/v1/models", timeout=timeout) as resp:
        body = json.loads(resp.read())
    models = body.get("models", body.get("data", body)) if isinstance(body, dict) else body
    for m in models if isinstance(models, list) else []:
        if isinstance(m, dict) and model_id in (m.get("id"), m.get("name"), m.get("sie_id"), m.get("model")):
            state = m.get("state") or m.get("status")
            return (str(state) if state is not None else None), m.get("last_error")
    return None, None


def ready_rule(model_id: str, settle_checks: int = 3):
    """Ready when the model is `loaded`. `failed`, or still only `available` (not loading) on several
    checks after /readyz went 200 (preload gave up and would lazy-load on request), is a failure."""
    idle = {"checks": 0}

    def ready(base_url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as resp:
                if resp.status != 200:
                    return False
        except urllib.error.HTTPError:
            return False
        state, last_error = model_state(base_url, model_id)
        if state == "loaded":
            return True
        if state == "failed":
            raise ServerStartError(f"model {model_id} is in state 'failed' in GET /v1/models: {last_error}")
        if state is None:
            raise ServerStartError(f"GET /v1/models does not list {model_id}")
        idle["checks"] = idle["checks"] + 1 if state == "available" else 0
        if idle["checks"] >= settle_checks:
            raise ServerStartError(
                f"server is ready but model {model_id} was not loaded by --preload (state {state!r}, "
                f"last error {last_error})"
            )
        return False

    return ready


def command(
    model: ModelConfig,
    profile: ResolvedProfile,
    weights_path: str,
    dims: int,
    device: str,
    threads: int | None,
    run_dir: Path,
) -> ServerCommand:
    """`run_dir` is private to this instance; keep its path short (a unix socket path must stay
    under ~100 bytes), e.g. tempfile.mkdtemp()."""
    exe = install.executable("sie")
    models_dir = write_models_dir(run_dir / "models", model, profile, weights_path, dims)
    env = {
        **install.isolated_env("sie", run_dir),
        "SIE_TELEMETRY_DISABLED": "1",
        "SIE_IPC_SOCKET_PATH": str(run_dir / "ipc.sock"),
        "SIE_DATA_DIR": str(run_dir / "data"),
    }
    if threads:
        env["SIE_TORCH_NUM_THREADS"] = str(threads)

    def argv(port: int) -> list[str]:
        return [
            str(exe),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            device,
            "--models-dir",
            str(models_dir),
            "-m",
            model.model_id,
            "--preload",
            model.model_id,
            "--no-hf-fallback",
        ]

    return ServerCommand(name="sie", argv=argv, ready=ready_rule(model.model_id), env=env, cwd=run_dir)
