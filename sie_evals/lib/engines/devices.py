"""Device specs of the local engine: cpu, auto, mps, cuda (every visible GPU), cuda:N, or a
comma-separated list. Each resolved device gets one data-parallel worker."""

import re

from sie_evals.lib.config.model_config import DEVICE_PATTERN
from sie_evals.lib.core.errors import InputError

DEVICE_HELP = "cpu, auto, mps, cuda (all GPUs), cuda:N, or a comma-separated list such as cuda:0,cuda:1"


def resolve_devices(spec: str, what: str = "--device") -> list[str]:
    """Concrete torch devices for `spec`; InputError (exit 2) for an unknown spec or a device that is
    not there, so a run never silently falls back to another device."""
    spec = spec.strip().lower()
    if not re.match(DEVICE_PATTERN, spec):
        raise InputError(f"{what}: unknown device {spec!r}; use {DEVICE_HELP}")
    import torch

    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if spec == "auto":
        if cuda_count:
            return [f"cuda:{i}" for i in range(cuda_count)]
        return ["mps"] if mps else ["cpu"]
    devices: list[str] = []
    for device in spec.split(","):
        if device.startswith("cuda"):
            if not cuda_count:
                raise InputError(
                    f"{what}: device {device!r} was requested but no CUDA GPU is available here "
                    f"(torch {torch.__version__}, built with CUDA {torch.version.cuda or 'none'}); "
                    "use --device cpu or --device auto"
                )
            if device == "cuda":
                devices += [f"cuda:{i}" for i in range(cuda_count)]
                continue
            index = int(device.split(":", 1)[1])
            if index >= cuda_count:
                raise InputError(f"{what}: device {device!r} does not exist ({cuda_count} CUDA GPU(s) visible)")
        elif device == "mps" and not mps:
            raise InputError(f"{what}: device 'mps' was requested but Apple MPS is not available here")
        devices.append(device)
    return devices


def device_type(devices: list[str]) -> str:
    """cpu, cuda or mps: what the vectors' numerics depend on (not how many workers computed them)."""
    kinds = sorted({d.split(":", 1)[0] for d in devices})
    return ",".join(kinds)
