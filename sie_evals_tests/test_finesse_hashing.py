"""Finesse hashes: legacy ones against finesse-benchmark 0.18.9's outputs, ours for collision-freedom and HMAC."""

import json

import pytest

from sie_evals.finesse import hashing as hs
from sie_evals_tests.conftest import SHARED

ORACLE = json.loads((SHARED / "oracles" / "finesse" / "hash_cases.json").read_text())


@pytest.mark.parametrize("case", ORACLE["content_hash_cases"], ids=lambda c: c["name"])
def test_legacy_content_hash(case):
    data = json.loads(case["input_json"])  # what checksum sees: a JSON reload (string keys)
    assert hs.legacy_canonical_string(data) == case["package_canonical_string"]
    assert hs.legacy_content_hash(data) == case["package_content_hash"]


def test_legacy_content_hash_int_keys_like_score_time():
    case = next(c for c in ORACLE["content_hash_cases"] if c["name"] == "int_keys_like_score_time")
    data = {"length_scores": {4: {"rss_scores": [1.5, 2.0]}, 10: {"rss_scores": [3.0]}}, "content_hash": ""}
    assert hs.legacy_content_hash(data) == case["package_content_hash"]


@pytest.mark.parametrize("case", ORACLE["model_hash_cases"], ids=lambda c: c["name"])
def test_legacy_model_hash(case, tmp_path):
    for rel, text in case["files"].items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert hs.legacy_model_hash(tmp_path) == case["package_model_hash"]


def test_our_content_hash_has_no_legacy_collisions():
    pairs = [
        ({"a": "1b:2"}, {"a": "1", "b": "2"}),  # no separator between lines
        ({"a.b": 1}, {"a": {"b": 1}}),  # dotted keys
        ({"a": 1, "e": {}}, {"a": 1}),  # empty dicts vanish
        ({"x": "1"}, {"x": 1}),  # str(value) makes types indistinguishable
    ]
    for left, right in pairs:
        assert hs.legacy_content_hash(left) == hs.legacy_content_hash(right)
        assert hs.content_hash(left) != hs.content_hash(right)


def test_content_hash_ignores_its_own_fields_and_key_order():
    base = {"b": [1.5, {"z": None}], "a": "x"}
    assert hs.content_hash(base) == hs.content_hash({"a": "x", "b": [1.5, {"z": None}], "content_hash": "y"})
    assert hs.content_hash(base) != hs.content_hash({**base, "a": "y"})


def test_signature_needs_the_key(monkeypatch):
    monkeypatch.setenv(hs.HMAC_KEY_ENV, "secret-1")
    sealed = hs.seal({"average_rss": 1.0})
    assert sealed["signature"] and sealed["hash_scheme"] == hs.HASH_SCHEME
    forged = {**sealed, "average_rss": 999.0}
    forged["content_hash"] = hs.content_hash(forged)  # anyone can do this
    assert hs.signature(forged, b"secret-1") != forged["signature"]
    monkeypatch.delenv(hs.HMAC_KEY_ENV)
    assert hs.seal({"average_rss": 1.0})["signature"] is None


def test_model_hash_covers_names_and_non_weight_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
    (a / "w1.safetensors").write_bytes(b"AB")
    (a / "w2.safetensors").write_bytes(b"C")
    (b / "w1.safetensors").write_bytes(b"A")
    (b / "w2.safetensors").write_bytes(b"BC")
    assert hs.legacy_model_hash(a) == hs.legacy_model_hash(b)  # the byte-split collision
    assert hs.model_hash(a, "r1") != hs.model_hash(b, "r1")
    before = hs.model_hash(a, "r1")
    assert hs.model_hash(a, "r2") != before
    (a / "tokenizer.json").write_text("{}")
    assert hs.model_hash(a, "r1") != before
    assert hs.legacy_model_hash(a) == hs.legacy_model_hash(b)  # legacy ignores the tokenizer
