"""ONNX export of a model's encoder, made once and cached outside the repo.

The export runs the model with eager attention (no fused SDPA kernel whose padding handling differs),
so padded batches give the same vectors as torch. It is written to a private temp folder, checked
against torch on a probe batch (pooled vectors within EXPORT_TOLERANCE), and only then renamed into
place: a failed or interrupted export leaves nothing behind. The folder also holds the tokenizer and
config, so any ONNX consumer (ONNX Runtime, OpenVINO, fastembed) can load it offline.

Cache key: model id, revision and weights, the profile fields that change vectors, and the torch,
transformers and opset versions the export was made with.
"""

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from sie_evals.lib.config.model_config import Dtype, ModelConfig, ResolvedProfile
from sie_evals.lib.core.atomic import atomic_write_json
from sie_evals.lib.core.digests import file_sha256
from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.core.versions import package_version
from sie_evals.lib.engines.pooling import pool

EXPORT_FORMAT = 3  # 3: tokenizer_config carries the profile's max_seq_length (fastembed truncates by it)
OPSET = 17
EXPORT_TOLERANCE = 1e-5  # max |delta| of pooled vectors vs torch on the probe batch
ONNX_FILE = "model.onnx"
META_FILE = "export.json"
# A probe with very different lengths: padding and truncation both matter.
PROBE_TEXTS = [
    "short",
    "A query about protein folding and its role in disease?",
    "Background: " + "cells divide and differentiate under many signals. " * 40,
]


def export_identity(model: ModelConfig, profile: ResolvedProfile, weights: str) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "model_id": model.model_id,
        "model_revision": model.revision,
        "weights": weights,
        "profile": profile.embedding_identity(),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "opset": OPSET,
    }


def export_folder(cache_root: Path, model: ModelConfig, profile: ResolvedProfile, weights: str) -> Path:
    identity = export_identity(model, profile, weights)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_root) / "exports" / f"{model.short_name}-{key}"


def _valid(folder: Path) -> bool:
    try:
        meta = json.loads((folder / META_FILE).read_text())
        return meta.get("sha256") == file_sha256(folder / ONNX_FILE)
    except (OSError, ValueError, AttributeError):
        return False


def ensure_onnx_export(
    model: ModelConfig, profile: ResolvedProfile, source: str, weights: str, cache_root: Path
) -> Path:
    """The folder of a verified ONNX export of `model` (exporting it first if needed). ConfigError
    (exit 2) naming the config and profile when it cannot be exported; nothing is left behind then."""
    if profile.dtype != Dtype.float32:
        raise ConfigError(
            f"{model.path}: profile {profile.name!r}: runtime {profile.runtime.value} runs the float32 ONNX "
            f"export; dtype {profile.dtype.value} is not supported with it (use runtime torch)"
        )
    folder = export_folder(cache_root, model, profile, weights)
    if _valid(folder):
        return folder
    if folder.exists():  # corrupt or partial: never trusted
        shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        max_delta = _export(model, profile, source, tmp)
        atomic_write_json(
            tmp / META_FILE,
            {
                **export_identity(model, profile, weights),
                "sha256": file_sha256(tmp / ONNX_FILE),
                "probe_max_abs_delta": max_delta,
            },
        )
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _valid(folder):  # another process finished first: use theirs when it checks out
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(
            f"{model.path}: profile {profile.name!r}: exporting {model.model_id} to ONNX for runtime "
            f"{profile.runtime.value} failed: {type(err).__name__}: {err}"
        ) from None
    return folder


def _export(model: ModelConfig, profile: ResolvedProfile, source: str, out: Path) -> float:
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    kwargs = {"revision": model.revision} if model.weights.hf_id and model.revision else {}
    tok = AutoTokenizer.from_pretrained(source, **kwargs)
    encoder = AutoModel.from_pretrained(source, attn_implementation="eager", dtype=torch.float32, **kwargs).eval()
    names = list(tok.model_input_names)

    class LastHidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

    traced = tok(PROBE_TEXTS[:2], truncation=True, max_length=profile.max_seq_length, padding=True, return_tensors="pt")
    probe = tok(PROBE_TEXTS, truncation=True, max_length=profile.max_seq_length, padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow: the probe check decides
        # Before exporting: tracing leaves transformers' model in a state that computes wrong outputs.
        expected = pool(encoder(**probe).last_hidden_state, probe["attention_mask"], profile.pooling)
        torch.onnx.export(
            LastHidden(encoder),
            tuple(traced[n] for n in names),
            str(out / ONNX_FILE),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    tok.save_pretrained(out)
    # Consumers that truncate by tokenizer_config.json (fastembed: the smaller of model_max_length and
    # max_length) must cut where the profile does.
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config.update(model_max_length=profile.max_seq_length, max_length=profile.max_seq_length)
    config_path.write_text(json.dumps(tok_config, indent=2))
    AutoConfig.from_pretrained(source, **kwargs).save_pretrained(out)
    # Verify on a batch of another shape than the one traced: a shape baked into the graph shows here.
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    feed = {n: probe[n].numpy() for n in names}
    got = pool(torch.from_numpy(session.run(None, feed)[0]), probe["attention_mask"], profile.pooling)
    delta = float(np.abs(got.numpy() - expected.numpy()).max())
    if not delta <= EXPORT_TOLERANCE:
        raise ValueError(f"the export differs from torch by {delta:.2e} (max abs) on the probe batch")
    return delta
