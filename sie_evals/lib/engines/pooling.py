"""Pooling of token vectors into one vector per text, shared by the local engine and the ONNX export check."""

from sie_evals.lib.config.model_config import Pooling


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
