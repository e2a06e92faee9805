"""Fixed-length workloads: texts of exactly N tokens (the model's own tokenizer, special tokens and the
profile's prefix included), cut from real corpus text, so tokens/s compares across engines and
tokenizers at a known sequence length."""

from collections.abc import Sequence
from typing import Any

from sie_evals.lib.core.errors import InputError


def fixed_token_texts(
    tokenizer: Any, source_texts: Sequence[str], n_tokens: int, count: int, prefix: str = ""
) -> list[str]:
    """Up to `count` texts that encode (prefix + text, with special tokens) to exactly n_tokens tokens.

    The corpus is read as one token stream; consecutive windows are decoded to text and re-encoded
    (decoding can merge or split tokens), shortened or lengthened by a token until the count is exact;
    a window that cannot be made exact is skipped."""
    overhead = len(tokenizer(prefix)["input_ids"])  # special tokens + prefix
    body = n_tokens - overhead
    if body < 1:
        raise InputError(f"--tokens {n_tokens}: the prefix and special tokens alone take {overhead} tokens")
    stream: list[int] = []
    for text in source_texts:
        stream.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if len(stream) >= body * count * 2:
            break
    out: list[str] = []
    pos = 0
    while len(out) < count and pos + body <= len(stream):
        take = body
        for _ in range(6):
            text = tokenizer.decode(stream[pos : pos + take], skip_special_tokens=True).strip()
            got = len(tokenizer(prefix + text)["input_ids"])
            if got == n_tokens:
                out.append(text)
                break
            take += n_tokens - got
            if take < 1 or pos + take > len(stream):
                break
        pos += body
    if not out:
        raise InputError(f"--tokens {n_tokens}: the corpus holds fewer than {n_tokens} tokens of text")
    return out
