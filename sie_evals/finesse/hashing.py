"""Integrity of Finesse results: our content hash, HMAC signature and model hash, plus finesse-benchmark
0.18.9's legacy hashes (compatibility mode for results that package wrote).

Ours:
- content hash: sha256 of canonical JSON (sorted keys, no whitespace, UTF-8, NaN rejected) of the results
  without `content_hash` and `signature`. JSON keeps structure, so none of the legacy flattening collisions
  (`{"a.b":1}` vs `{"a":{"b":1}}`, missing separators, vanishing empty dicts, repr of numpy scalars).
- signature: HMAC-SHA256 over the same bytes with the key in $FINESSE_HMAC_KEY. Anyone can recompute a plain
  hash after editing a score; only the key holder can re-sign.
- model hash: sha256 over canonical JSON of the revision and, for every file (weights, config, tokenizer,
  code), its relative path, size and sha256. Moving bytes between files or editing a tokenizer changes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from sie_evals.lib.core.digests import file_sha256
from sie_evals.lib.core.errors import InputError

HASH_SCHEME = "sie-evals-finesse/1"
MODEL_HASH_SCHEME = "sie-evals-finesse-model/1"
HMAC_KEY_ENV = "FINESSE_HMAC_KEY"
UNSIGNED_FIELDS = ("content_hash", "signature")


# ----------------------------------------------------------------------------------------------- ours
def canonical_json(obj: Any) -> bytes:
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as err:  # NaN/inf have no JSON form: refuse rather than hash something ambiguous
        raise InputError(f"results cannot be hashed: {err}") from None
    return text.encode("utf-8")


def _payload(results: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in results.items() if k not in UNSIGNED_FIELDS})


def content_hash(results: dict[str, Any]) -> str:
    return hashlib.sha256(_payload(results)).hexdigest()


def hmac_key() -> bytes | None:
    """The signing key from the environment (never from a file, never written out)."""
    key = os.environ.get(HMAC_KEY_ENV)
    return key.encode("utf-8") if key else None


def signature(results: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, _payload(results), hashlib.sha256).hexdigest()


def seal(results: dict[str, Any]) -> dict[str, Any]:
    """Add hash_scheme, content_hash and (when a key is set) signature."""
    out = {k: v for k, v in results.items() if k not in UNSIGNED_FIELDS}
    out["hash_scheme"] = HASH_SCHEME
    out["content_hash"] = content_hash(out)
    key = hmac_key()
    out["signature"] = signature(out, key) if key else None
    return out


def model_files(path: Path) -> list[list[Any]]:
    """[relative path, size, sha256] of every file under `path` (hidden files and caches skipped)."""
    path = Path(path)
    if path.is_file():
        return [[path.name, path.stat().st_size, file_sha256(path)]]
    if not path.is_dir():
        raise InputError(f"model path {path} is neither a file nor a folder")
    rows = []
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if not f.is_file() or any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        rows.append([rel.as_posix(), f.stat().st_size, file_sha256(f)])
    return rows


def model_hash(path: Path, revision: str | None) -> str:
    doc = {"scheme": MODEL_HASH_SCHEME, "revision": revision, "files": model_files(path)}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def identity_hash(identity: str) -> str:
    """A model that is only reachable through an API (byok) is identified by its name and endpoint."""
    return hashlib.sha256(canonical_json({"scheme": MODEL_HASH_SCHEME, "identity": identity})).hexdigest()


# -------------------------------------------------------------------------------------------- legacy
def _legacy_flatten(obj: Any, parent_key: Any = "", sep: str = ".") -> list[str]:
    # A verbatim port of finesse_benchmark.utils._flatten_dict, quirks included (falsy parent keys restart
    # the path, lists are str()'d, empty dicts vanish).
    if isinstance(obj, dict):
        items: list[str] = []
        for k, v in obj.items():
            new_key = f"{parent_key}{sep}{k}" if parent_key else k
            items.extend(_legacy_flatten(v, new_key, sep))
        return items
    return [f"{parent_key}:{obj!s}"]


def legacy_canonical_string(data: dict[str, Any]) -> str:
    lines = _legacy_flatten(data)
    lines.sort()
    return "".join(lines)


def legacy_content_hash(data: dict[str, Any]) -> str:
    """finesse-benchmark 0.18.9 `get_content_hash` (callers blank `content_hash` to '' first)."""
    return hashlib.sha256(legacy_canonical_string(data).encode("utf-8")).hexdigest()


LEGACY_WEIGHT_SUFFIXES = (".bin", ".safetensors", ".model", ".onnx", ".pt")


def legacy_model_hash(path: Path) -> str:
    """finesse-benchmark 0.18.9 `get_model_hash` for a local file or folder (no hub download here):
    the bytes of weight files only, in sorted(os.walk) order, no names or separators."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    if not path.is_dir():
        raise InputError(f"model path {path} does not exist (legacy model hashes need a local copy)")
    for root, _dirs, files in sorted(os.walk(path)):
        for name in sorted(files):
            if name.endswith(LEGACY_WEIGHT_SUFFIXES):
                with open(os.path.join(root, name), "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()
