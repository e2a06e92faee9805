"""The `local` engine: in-process transformers + torch (or its ONNX export under ONNX Runtime or
OpenVINO), the default that runs on a fresh machine.

Matches sentence-transformers' encode for the same model: tokenize with truncation to
`max_seq_length`, run the encoder, pool (mean over the attention mask, CLS, or last token),
L2-normalise. Batches are formed after sorting by token length so little compute goes to padding.
"""

import importlib
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from sie_evals.lib.config.model_config import ModelConfig, OutputType, ResolvedProfile, Runtime
from sie_evals.lib.config.weights import resolve_weights, weights_id
from sie_evals.lib.core.errors import ConfigError, EngineError
from sie_evals.lib.core.versions import package_version
from sie_evals.lib.engines.base import EmbedKind, Engine, EngineInfo
from sie_evals.lib.engines.devices import device_type, resolve_devices
from sie_evals.lib.engines.export import OPSET
from sie_evals.lib.engines.local_workers import OnnxWorker, OpenVinoWorker, TorchWorker, Worker, data_parallel
from sie_evals.lib.engines.runtime_choice import (
    RUNTIME_MODULES,
    RuntimeChoice,
    calibrate,
    calibration_texts,
    choice_file,
    choice_identity,
    load_choice,
    runtime_cache_root,
    save_choice,
    static_choice,
)

log = logging.getLogger(__name__)


class LocalEngine(Engine):
    """In-process engine. `profile.runtime` picks what runs the forward pass (torch, or the cached
    ONNX export under ONNX Runtime or OpenVINO); `device` (or the profile's) where. Several devices
    embed one call data-parallel: the same length-sorted batches as on one device, handed to one
    worker per device, so the vectors are identical to a one-device run."""

    name = "local"
    supported_outputs = frozenset(OutputType)

    def __init__(
        self,
        model: ModelConfig,
        profile: ResolvedProfile,
        threads: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        device: str | None = None,
        export_cache: Path | None = None,
    ):
        super().__init__(model, profile)
        self.threads = threads
        self.batch_size = batch_size or profile.batch_size
        self.progress = progress
        self.device_spec = device or profile.device
        self.devices = resolve_devices(self.device_spec, "--device" if device else f"profile {profile.name!r} device")
        if profile.runtime not in (Runtime.torch, Runtime.auto) and device_type(self.devices) != "cpu":
            raise ConfigError(
                f"{model.path}: profile {profile.name!r}: runtime {profile.runtime.value} runs on the CPU here; "
                f"device {self.device_spec!r} needs runtime torch"
            )
        self.export_cache = Path(export_cache) if export_cache else None
        self.export_dir: Path | None = None
        self._tokenizer = None
        self._workers: list[Worker] = []
        # One model instance runs one batch at a time (HF fast tokenizers are not safe to share across
        # threads); concurrent callers queue here, as they would at a single-worker server.
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._choice: RuntimeChoice | None = None  # runtime auto: what it resolved to, and why
        self._choice_lock = threading.Lock()
        self._calibrated: list[Worker] | None = None  # the chosen runtime's workers, built while calibrating

    @property
    def runtime(self) -> Runtime:
        """The runtime that runs the forward pass: the profile's, or what `auto` chose."""
        choice = self.runtime_choice()
        return choice.runtime if choice else self.profile.runtime

    def runtime_choice(self) -> RuntimeChoice | None:
        """`auto`'s choice (calibrating on first use per machine, model and runtime versions); None otherwise."""
        if self.profile.runtime != Runtime.auto:
            return None
        with self._choice_lock:
            if self._choice is None:
                self._choice = self._choose_runtime()
            return self._choice

    def _software(self) -> str:
        runtime = self.runtime
        if runtime == Runtime.torch:
            version = f"transformers {package_version('transformers')}; torch {package_version('torch')}"
            kind = device_type(self.devices)
            # CPU keys stay as they were; other devices' numerics differ slightly, so they key apart.
            return version if kind == "cpu" else f"{version}; device {kind}"
        torch, transformers = package_version("torch"), package_version("transformers")
        exported = f"ONNX export (torch {torch}, transformers {transformers}, opset {OPSET})"
        if runtime == Runtime.onnx:
            return f"onnxruntime {package_version('onnxruntime')}; {exported}"
        return f"openvino {package_version('openvino')} (fp32 precision hint); {exported}"

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine=self.name,
            version=self._software(),
            model_id=self.model.model_id,
            model_revision=self.model.revision,
            weights=weights_id(self.model),
            extra={
                "threads": self.threads,
                "batch_size": self.batch_size,
                "dtype": self.profile.dtype.value,
                "runtime": self.runtime.value,
                **({"runtime_choice": self._choice.as_dict()} if self.runtime_choice() else {}),
                "device": self.device_spec,
                "devices": self.devices,
                # model replicas (one per device) or, for openvino, CPU streams running batches in parallel
                **({"workers": len(self._workers)} if self._workers else {}),
                **({"export": str(self.export_dir)} if self.export_dir else {}),
            },
        )

    def _source(self) -> tuple[str, dict]:
        source = resolve_weights(self.model)
        return source, {"revision": self.model.revision} if self.model.weights.hf_id and self.model.revision else {}

    def _load_tokenizer(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        if not self.progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        if self._tokenizer is not None:
            return
        from transformers import AutoTokenizer

        source, kwargs = self._source()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except OSError as err:
            raise EngineError(f"local: cannot load the tokenizer from {source}: {err}") from None

    def _start(self) -> None:
        self._load_tokenizer()
        runtime = self.runtime  # auto: calibrated (or read from its cache) here at the latest
        workers, self._calibrated = self._calibrated, None
        self._workers = workers or self._build_workers(runtime)

    def _build_workers(self, runtime: Runtime) -> list[Worker]:
        source, kwargs = self._source()
        if runtime == Runtime.torch:
            return [TorchWorker(source, kwargs, device, self.profile) for device in self.devices]
        if self.profile.output != OutputType.dense:
            raise ConfigError(
                f"profile {self.profile.name!r}: runtime {runtime.value} exports dense outputs only; "
                f"output {self.profile.output.value} runs with runtime torch"
            )
        from sie_evals.lib.core import paths
        from sie_evals.lib.engines.export import ONNX_FILE, ensure_onnx_export

        module = RUNTIME_MODULES[runtime]
        try:  # before any export work
            importlib.import_module(module)
        except ImportError as err:
            if self.profile.runtime == Runtime.auto:
                raise  # auto runs another runtime and says why
            raise ConfigError(
                f"{self.model.path}: profile {self.profile.name!r}: runtime {runtime.value} needs {module}, "
                f"which is not installed ({err}); pip install {module}, or use runtime torch"
            ) from None
        root = self.export_cache or paths.cache_dir()
        if self.profile.runtime == Runtime.auto:
            root = runtime_cache_root(root)
        self.export_dir = ensure_onnx_export(
            self.model, self.profile.model_copy(update={"runtime": runtime}), source, weights_id(self.model), root
        )
        onnx_path = self.export_dir / ONNX_FILE
        if runtime == Runtime.openvino:
            return OpenVinoWorker.streams(onnx_path, self.threads, self.profile)
        threads = max(1, self.threads // len(self.devices)) if self.threads else None
        return [OnnxWorker(onnx_path, threads, self.profile) for _ in self.devices]

    def _choose_runtime(self) -> RuntimeChoice:
        """`auto`: the cached choice for this machine, model and runtime versions, or a calibration."""
        from sie_evals.lib.core import paths
        from sie_evals.lib.engines.export import EXPORT_TOLERANCE

        fixed = static_choice(self.profile, device_type(self.devices))
        if fixed:
            return fixed
        threads = self.threads or len(os.sched_getaffinity(0))
        identity = choice_identity(self.model, self.profile, weights_id(self.model), threads, self.batch_size)
        path = choice_file(runtime_cache_root(self.export_cache or paths.cache_dir()), self.model, identity)
        cached = load_choice(path, identity)
        if cached:
            log.info("runtime auto: %s (cached in %s: %s)", cached.runtime.value, path, cached.reason)
            return cached
        self._load_tokenizer()
        built: dict[Runtime, list[Worker]] = {}

        def build(runtime: Runtime):
            built[runtime] = workers = self._build_workers(runtime)
            return lambda texts: self._embed_with(workers, texts, count=False)

        start = time.perf_counter()
        choice, _ = calibrate(build, calibration_texts(), self.batch_size, EXPORT_TOLERANCE)
        self._calibrated = built[choice.runtime]
        if choice.runtime != Runtime.openvino and choice.runtime != Runtime.onnx:
            self.export_dir = None
        save_choice(path, choice, identity)
        say = log.warning if choice.rejected else log.info
        say(
            "runtime auto for %s profile %r: %s (%s; calibrated in %.1fs on %d texts, saved in %s)",
            self.model.model_id,
            self.profile.name,
            choice.runtime.value,
            choice.reason,
            time.perf_counter() - start,
            choice.texts,
            path,
        )
        return choice

    @property
    def _model(self):
        """The torch model of the first worker (sparse and multivector outputs run on one device)."""
        return self._workers[0].model

    def _stop(self) -> None:
        self._workers = []
        self._tokenizer = None

    def _embed_prepared(self, texts: list[str], kind: EmbedKind) -> np.ndarray:
        with self._lock:
            return self._embed_locked(texts)

    def tokenizer(self):
        self.start()
        return self._tokenizer

    def _embed_locked(self, texts: list[str]) -> np.ndarray:
        if self.profile.output != OutputType.dense:
            from sie_evals.lib.engines.local_outputs import encode_local

            return encode_local(self, texts)
        return self._embed_with(self._workers, texts)

    def _embed_with(self, workers: list[Worker], texts: list[str], count: bool = True) -> np.ndarray:
        """Dense vectors of `texts` by `workers`: tokenized once, length-sorted batches, in input order."""
        from tqdm.auto import tqdm

        tok = self._tokenizer
        encoded = tok(texts, truncation=True, max_length=self.profile.max_seq_length, padding=False)
        ids = encoded["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))  # longest first: OOM shows early
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        results: list[np.ndarray | None] = [None] * len(batches)
        bar = tqdm(
            total=len(texts),
            desc="embed (local)",
            unit="text",
            disable=not count or not self.progress or os.environ.get("CI") == "true",
        )

        def run(worker: Worker, b: int) -> None:
            idx = batches[b]
            features = {k: [encoded[k][i] for i in idx] for k in encoded}
            results[b] = worker.embed(tok.pad(features, padding=True, return_tensors="pt"))
            if count:
                with self._count_lock:
                    self.forward_calls += 1
                    bar.update(len(idx))

        if len(workers) == 1:
            for b in range(len(batches)):
                run(workers[0], b)
        else:
            data_parallel(workers, len(batches), run)
        bar.close()
        out = np.empty((len(texts), results[0].shape[1]), dtype=np.float32)
        for idx, vecs in zip(batches, results, strict=True):
            out[idx] = vecs
        return out
