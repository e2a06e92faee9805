"""The local engine's model replicas: a padded batch of token tensors in, pooled (normalised) float32
vectors out, under torch, ONNX Runtime or OpenVINO; and the data-parallel loop that feeds several."""

import os
import threading
from pathlib import Path

import numpy as np

from sie_evals.lib.config.model_config import OutputType, ResolvedProfile
from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines.pooling import pool


def data_parallel(workers: list["Worker"], n_batches: int, run) -> None:
    """One thread per worker pulls the next batch index from a shared counter until none are left."""
    from concurrent.futures import ThreadPoolExecutor

    counter = iter(range(n_batches))
    take = threading.Lock()

    def drain(worker: "Worker") -> None:
        while True:
            with take:
                b = next(counter, None)
            if b is None:
                return
            run(worker, b)

    with ThreadPoolExecutor(len(workers), thread_name_prefix="sie-evals-local") as pool_:
        for future in [pool_.submit(drain, w) for w in workers]:
            future.result()  # re-raises a worker's error


class Worker:
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


class TorchWorker(Worker):
    def __init__(self, source: str, kwargs: dict, device: str, profile: ResolvedProfile):
        import torch
        from transformers import AutoModel

        super().__init__(profile)
        self.device = torch.device(device)
        model_class = AutoModel
        if profile.output != OutputType.dense:
            from sie_evals.lib.engines.local_outputs import local_model_class

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


class OnnxWorker(Worker):
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


class OpenVinoWorker(Worker):
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
    def streams(cls, onnx_path: Path, threads: int | None, profile: ResolvedProfile) -> list["OpenVinoWorker"]:
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
