"""What a result was measured under: hardware, software versions, load. Stored with every result."""

import importlib.metadata as md
import os
import platform
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import sie_evals

# onnxruntime and openvino: the local engine's `runtime: auto` may pick either (None when not installed)
_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "pytrec-eval-terrier",
    "dagster",
    "datasets",
    "onnxruntime",
    "openvino",
)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver must not break a CPU eval
        return []
    return []


@lru_cache(maxsize=1)
def _nvidia_driver() -> str | None:
    """The NVIDIA driver version (torch does not report it): NVML when installed, else nvidia-smi."""
    try:
        import pynvml  # nvidia-ml-py, optional

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # not installed, or no driver
        pass
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


@lru_cache(maxsize=1)
def gpu_details() -> dict[str, Any]:
    """GPU count, names, memory, driver and CUDA versions (count 0 without a usable GPU)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {"count": 0}
        devices = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "compute_capability": f"{props.major}.{props.minor}",
                }
            )
        return {
            "count": len(devices),
            "devices": devices,
            "driver": _nvidia_driver(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    except Exception:  # a broken driver must not break a CPU eval
        return {"count": 0}


def hardware() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "gpu": gpu_details(),
        "load_avg_1m": round(load[0], 2) if load[0] is not None else None,
    }


def software() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "sie_evals": sie_evals.__version__,
        **{name: _version(name) for name in _PACKAGES},
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
