"""What turns probe texts into vectors: sie-evals' engines (native / base embedder), an OpenAI-compatible
endpoint (byok), and sequence mergers (the shipped mean-pooling baseline and HF sequence-merger checkpoints)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from sie_evals.finesse.config import Advanced, ByokEmbedder, EmbedderSelector, MergerSelector
from sie_evals.finesse.hashing import identity_hash, model_hash
from sie_evals.finesse.probes.sampling import ModelChunker
from sie_evals.lib.config.model_config import ModelConfig, ResolvedProfile, find_model_config, parse_model_config
from sie_evals.lib.core.errors import ConfigError, EngineError, InputError, UnknownNameError
from sie_evals.lib.core.sources import DEFAULT_SOURCE
from sie_evals.lib.core.urls import redact_url
from sie_evals.lib.engines import EmbedKind, Engine, create_engine
from sie_evals.lib.engines.validation import validate_embeddings


def resolve_model(sel: EmbedderSelector, advanced: Advanced) -> tuple[ModelConfig, ResolvedProfile]:
    """The selector as a model config + profile; selector fields override the profile's."""
    try:
        config = find_model_config(sel.name)
    except UnknownNameError:
        p = Path(sel.name).expanduser()
        if p.suffix in (".yaml", ".yml") and p.is_file():
            from sie_evals.lib.config.model_config import load_model_config

            config = load_model_config(p)
        else:
            weights = {"path": str(p.resolve())} if p.is_dir() else {"hf_id": sel.name}
            data = {"model_id": sel.name, "revision": sel.revision, "weights": weights, "profiles": {"default": {}}}
            config = parse_model_config(data, Path(f"<finesse embedder {sel.name}>"))
    profile = config.resolve_profile(sel.profile)
    update: dict[str, Any] = {"batch_size": advanced.batch_size}
    if sel.pool_type:
        update["pooling"] = sel.pool_type
    if sel.prefix is not None:
        update["document_prefix"] = sel.prefix
    if sel.max_context_length:
        update["max_seq_length"] = sel.max_context_length
    return config, ResolvedProfile.model_validate({**profile.model_dump(), **update})


class EngineEmbedder:
    """The default source's engine (`local`) as a Finesse embedder; texts are documents (document prefix)."""

    def __init__(self, sel: EmbedderSelector, advanced: Advanced, progress: bool = False):
        self.config, self.profile = resolve_model(sel, advanced)
        self.engine: Engine = create_engine(
            DEFAULT_SOURCE, self.config, self.profile, progress=progress, threads=advanced.threads
        )
        self.max_context_length = self.profile.max_seq_length

    def __enter__(self) -> EngineEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.stop()

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.engine.embed(texts, EmbedKind.document)

    def count_tokens(self, text: str) -> int:
        """Tokens the model would see for `text`: prefix and special tokens included, no truncation."""
        tok = self.engine.tokenizer()  # type: ignore[attr-defined]
        return len(tok(self.profile.document_prefix + text, truncation=False)["input_ids"])

    def chunker(self) -> ModelChunker:
        """0.18.9's count_tokens/chunk_text with this model's own tokenizer (sampler finesse-0.18.9)."""
        return ModelChunker(self.engine.tokenizer())  # type: ignore[attr-defined]

    def identity(self) -> dict[str, Any]:
        from sie_evals.lib.config.weights import resolve_weights

        info = self.engine.info().as_dict()
        source = resolve_weights(self.config)
        folder = Path(source)
        digest = model_hash(folder, self.config.revision) if folder.exists() else None
        return {
            **info,
            "profile": self.profile.model_dump(mode="json"),
            "model_hash": digest,
            "model_hash_note": None if digest else f"weights not local ({source}); no model hash",
        }


class ByokClient:
    """OpenAI-compatible embeddings over HTTP (stdlib only). The key comes from the environment, never a file."""

    def __init__(self, cfg: ByokEmbedder, count_tokenizer: Any):
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + cfg.endpoint
        self.max_context_length = cfg.max_context_length
        self._tok = count_tokenizer
        self._key: str | None = None
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise InputError(
                    f"byok_embedder.api_key_env: environment variable {cfg.api_key_env} is not set "
                    "(it must hold the API key)"
                )
            self._key = key

    def __enter__(self) -> ByokClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _request(self, texts: list[str]) -> np.ndarray:
        body = json.dumps({"model": self.cfg.name, "input": texts, "encoding_format": "float"}).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace")
            raise EngineError(f"byok: {redact_url(self.url)} answered HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise EngineError(f"byok: cannot reach {redact_url(self.url)}: {getattr(err, 'reason', err)}") from None
        try:
            reply = json.loads(raw)
            items = reply["data"]
            if not isinstance(items, list):
                raise TypeError("'data' is not a list")
            if all(isinstance(x, dict) and "index" in x for x in items):
                items = sorted(items, key=lambda x: x["index"])
            vectors = [x["embedding"] for x in items]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise EngineError(
                f"byok: malformed reply from {redact_url(self.url)} ({type(err).__name__}: {err}): {raw[:200]!r}"
            ) from None
        return validate_embeddings(vectors, len(texts), f"byok ({redact_url(self.url)})")

    def embed(self, texts: list[str]) -> np.ndarray:
        texts = [self.cfg.prefix + t for t in texts]
        parts = [self._request(texts[i : i + self.cfg.batch_size]) for i in range(0, len(texts), self.cfg.batch_size)]
        return np.concatenate(parts)

    def count_tokens(self, text: str) -> int:
        return len(self._tok(self.cfg.prefix + text, truncation=False)["input_ids"])

    def chunker(self) -> ModelChunker:
        return ModelChunker(self._tok)

    def identity(self) -> dict[str, Any]:
        ident = f"byok:{self.cfg.provider}:{self.cfg.name}@{redact_url(self.url)}"
        return {"engine": "byok", "identity": ident, "model_hash": identity_hash(ident)}


class MeanMerger:
    """finesse-benchmark's NullSynthesizer: mean over the sequence, then L2 normalisation."""

    name = "mean"

    def merge(self, seq: np.ndarray) -> np.ndarray:
        v = seq.astype(np.float32).mean(axis=0)
        n = float(np.linalg.norm(v))
        return v / max(n, 1e-12)

    def merge_batch(self, seqs: np.ndarray) -> np.ndarray:
        """(B, S, D) -> (B, D)."""
        v = seqs.astype(np.float32).mean(axis=1)
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

    def identity(self) -> dict[str, Any]:
        return {"merger": "mean", "model_hash": identity_hash("merger:mean")}


class HFSequenceMerger:
    """A Hugging Face sequence-merger checkpoint (spec §5): `model(embeddings[None])`, pooled, L2-normalised.

    These checkpoints ship their own modelling code, so loading needs `trust_remote_code: true` in the config.
    Hub downloads are not possible on machines without internet: give a local folder there."""

    def __init__(self, sel: MergerSelector):
        import torch
        from transformers import AutoModel

        if not sel.trust_remote_code:
            raise ConfigError(
                f"models.merger: checkpoint {sel.name!r} runs its own modelling code; set trust_remote_code: true "
                "to allow it (or use name: mean for the built-in baseline)"
            )
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        if not Path(sel.name).expanduser().is_dir() and offline:
            raise ConfigError(
                f"models.merger: {sel.name!r} is not a local folder and HF_HUB_OFFLINE=1, so it cannot be downloaded; "
                "download the checkpoint elsewhere and give its folder"
            )
        try:
            self.model = AutoModel.from_pretrained(
                str(Path(sel.name).expanduser()) if Path(sel.name).expanduser().is_dir() else sel.name,
                trust_remote_code=True,
                revision=sel.revision,
                dtype=torch.float32,
            ).eval()
        except (OSError, ValueError) as err:
            raise EngineError(f"models.merger: cannot load sequence merger {sel.name!r}: {err}") from None
        self.sel = sel
        self.name = sel.name

    def merge(self, seq: np.ndarray) -> np.ndarray:
        return self.merge_batch(np.asarray(seq)[None])[0]

    def merge_batch(self, seqs: np.ndarray) -> np.ndarray:
        """(B, S, D) -> (B, D): one forward pass over equal-length sequences (SRS batches them as 0.18.9 does)."""
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(seqs, dtype=np.float32)))
            if self.sel.pool_type == "pooler":
                pooled = out.pooler_output
            else:
                hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out
                pooled = {"cls": hidden[:, 0], "mean": hidden.mean(dim=1), "last": hidden[:, -1]}[self.sel.pool_type]
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)
        return pooled.numpy()

    def identity(self) -> dict[str, Any]:
        folder = Path(self.sel.name).expanduser()
        digest = model_hash(folder, self.sel.revision) if folder.is_dir() else None
        return {"merger": self.sel.name, "revision": self.sel.revision, "model_hash": digest}


def make_merger(sel: MergerSelector) -> MeanMerger | HFSequenceMerger:
    return MeanMerger() if sel.name == "mean" else HFSequenceMerger(sel)
