"""Sparse (SPLADE) and multivector outputs of the local engine's torch model."""

from typing import Any, Protocol

import numpy as np

from sie_evals.lib.config.model_config import OutputType, ResolvedProfile
from sie_evals.lib.engines.sie_wire import sparse_from_items
from sie_evals.lib.engines.vectors import MultiVectors, Output

SPLADE_LOGITS_BUDGET = 32 * 1024 * 1024


class LocalModel(Protocol):
    """What encode_local needs of the local engine (engines/local.py), named here so that this module
    does not import it."""

    name: str
    profile: ResolvedProfile
    batch_size: int
    forward_calls: int
    _tokenizer: Any

    @property
    def _model(self) -> Any: ...


def local_model_class(profile: ResolvedProfile):
    from transformers import AutoModel, AutoModelForMaskedLM

    return AutoModelForMaskedLM if profile.output == OutputType.sparse else AutoModel


def encode_local(engine: "LocalModel", texts: list[str]) -> Output:
    """Sparse or multivector outputs of the local engine's loaded model (longest texts first, like dense)."""
    import torch

    tok, model, profile = engine._tokenizer, engine._model, engine.profile
    encoded = tok(texts, truncation=True, max_length=profile.max_seq_length, padding=False)
    ids = encoded["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    results: list[Any] = [None] * len(texts)
    vocab = int(model.config.vocab_size)
    start = 0
    with torch.inference_mode():
        while start < len(order):
            size = engine.batch_size
            if profile.output == OutputType.sparse:  # bound the (batch, tokens, vocabulary) logits
                size = max(1, min(size, SPLADE_LOGITS_BUDGET // (len(ids[order[start]]) * vocab)))
            idx = order[start : start + size]
            start += len(idx)
            batch = tok.pad({k: [encoded[k][i] for i in idx] for k in encoded}, padding=True, return_tensors="pt")
            if model.device.type != "cpu":
                batch = {k: v.to(model.device) for k, v in batch.items()}
            mask = batch["attention_mask"]
            out = model(**batch)
            engine.forward_calls += 1
            if profile.output == OutputType.sparse:
                # log1p and relu are monotone, so they commute with the max (bit for bit): pool the masked
                # logits first and transform (batch x vocabulary) values instead of every token's.
                masked = out.logits.mul_(mask.unsqueeze(-1).to(out.logits.dtype))
                pooled = torch.log1p(torch.relu(masked.amax(dim=1))).float().cpu().numpy()
                for row, i in enumerate(idx):
                    nz = np.flatnonzero(pooled[row])
                    results[i] = (nz, pooled[row, nz])
            else:
                hidden = out.last_hidden_state
                if profile.normalize:
                    hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
                hidden = hidden.float().cpu().numpy()
                lengths = mask.sum(dim=1).tolist()
                for row, i in enumerate(idx):
                    results[i] = hidden[row, : lengths[row]]
    if profile.output == OutputType.sparse:
        return sparse_from_items(results, vocab, engine.name)
    return MultiVectors.from_list(results)
