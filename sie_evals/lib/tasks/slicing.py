"""The one slicing rule: items ranked by the sha256 of a key string, so a slice depends on the items, not on
file order or process. Callers choose the key (an item id; or row number and text, where rows have no id)."""

import hashlib
from collections.abc import Sequence


def stable_rank(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def stable_sample(keys: Sequence[str], limit: int) -> list[int]:
    """Positions of the `limit` keys with the lowest hash, in their original order (ties, equal keys, by position)."""
    chosen = sorted(range(len(keys)), key=lambda i: stable_rank(keys[i]))[: max(limit, 0)]
    return sorted(chosen)
