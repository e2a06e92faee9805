"""The `fastembed` engine: qdrant's fastembed (ONNX Runtime, its own tokenizer and pooling code) run
in process on this project's verified ONNX export of the model, so it loads offline. fastembed's own
model catalogue downloads from the Hugging Face hub, which this engine never uses.

fastembed pools in numpy (mean over the attention mask, or CLS) and L2-normalises as the profile says;
other pooling modes are refused with a clear error. Install it with `pip install --no-deps fastembed
loguru mmh3 py_rust_stemmers` where its pinned huggingface-hub would replace the one transformers needs.
"""

import threading

import numpy as np

from sie_evals.lib.config.model_config import ModelConfig, Pooling, ResolvedProfile
from sie_evals.lib.config.weights import resolve_weights, weights_id
from sie_evals.lib.core.errors import ConfigError, InputError
from sie_evals.lib.core.versions import package_version
from sie_evals.lib.engines.base import EmbedKind, Engine, EngineInfo
from sie_evals.lib.engines.export import ONNX_FILE, OPSET, ensure_onnx_export

_REGISTER_LOCK = threading.Lock()


class FastEmbedEngine(Engine):
    name = "fastembed"

    def __init__(
        self,
        model: ModelConfig,
        profile: ResolvedProfile,
        threads: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ):
        super().__init__(model, profile)
        if profile.pooling not in (Pooling.mean, Pooling.cls):
            raise ConfigError(
                f"{model.path}: profile {profile.name!r}: fastembed pools by mean or cls only, "
                f"not {profile.pooling.value}"
            )
        self.threads = threads
        self.batch_size = batch_size or profile.batch_size
        self._model = None
        self._lock = threading.Lock()

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine=self.name,
            version=f"fastembed {package_version('fastembed')}; onnxruntime {package_version('onnxruntime')}; "
            f"ONNX export (torch {package_version('torch')}, transformers {package_version('transformers')}, "
            f"opset {OPSET})",
            model_id=self.model.model_id,
            model_revision=self.model.revision,
            weights=weights_id(self.model),
            extra={"threads": self.threads, "batch_size": self.batch_size, "runtime": "fastembed"},
        )

    def _start(self) -> None:
        try:
            from fastembed import TextEmbedding
            from fastembed.common.model_description import ModelSource, PoolingType
        except ImportError as err:
            raise InputError(
                f"source fastembed needs the fastembed package ({err}); install it with "
                "`pip install --no-deps fastembed loguru mmh3 py_rust_stemmers`"
            ) from None
        from sie_evals.lib.core import paths
        from sie_evals.lib.engines.http import weights_dims

        source = resolve_weights(self.model)
        folder = ensure_onnx_export(self.model, self.profile, source, weights_id(self.model), paths.cache_dir())
        dims = weights_dims(source)
        if dims is None:
            raise ConfigError(f"{self.model.path}: fastembed needs the embedding width; no config.json in {source}")
        name = f"sie-evals/{folder.name}"  # one registration per export (fastembed's registry is global)
        pooling = PoolingType.MEAN if self.profile.pooling == Pooling.mean else PoolingType.CLS
        with _REGISTER_LOCK:
            if not any(m["model"] == name for m in TextEmbedding.list_supported_models()):
                TextEmbedding.add_custom_model(
                    model=name,
                    pooling=pooling,
                    normalization=self.profile.normalize,
                    sources=ModelSource(hf=name),
                    dim=dims,
                    model_file=ONNX_FILE,
                )
        try:
            self._model = TextEmbedding(model_name=name, specific_model_path=str(folder), threads=self.threads)
        except Exception as err:  # fastembed raises plain ValueError/RuntimeError for a model it cannot load
            raise InputError(
                f"fastembed cannot load the ONNX export at {folder}: {type(err).__name__}: {err}"
            ) from None

    def _stop(self) -> None:
        self._model = None

    def _embed_prepared(self, texts: list[str], kind: EmbedKind) -> np.ndarray:
        with self._lock:
            return np.stack(list(self._model.embed(texts, batch_size=self.batch_size)))
