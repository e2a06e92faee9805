"""Finesse config, probe generation (native, merger, byok) and the model independence of chunk texts."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from ruamel.yaml import YAML

from sie_evals.finesse.config import TEMPLATE, leaderboard_template, parse_config
from sie_evals.finesse.io import read_embeddings
from sie_evals.finesse.probes.generate import generate
from sie_evals.finesse.probes.sampling import draw_probes, load_documents, load_tokenizer
from sie_evals.finesse.results import score_embeddings
from sie_evals.lib.core.errors import ConfigError, EngineError, InputError
from sie_evals_tests.conftest import MODEL_ID, SCIFACT

CORPUS = str(SCIFACT / "corpus.jsonl")


def tiny(mode="native_mode", lengths=(4, 4), samples=2, tps=16, **models):
    data = YAML(typ="safe", pure=True).load(TEMPLATE)
    data["mode"] = mode
    data["datasets"] = [{"local_files": [CORPUS]}]
    data["probe_config"].update(
        {
            "sequence_length": {"min": lengths[0], "max": lengths[1]},
            "samples_per_length": samples,
            "token_per_sample": tps,
        }
    )
    data["advanced"]["threads"] = 1
    data["models"].update(models)
    return data


def test_templates_validate_and_leaderboard_settings():
    parse_config(YAML(typ="safe", pure=True).load(TEMPLATE))
    lb = parse_config(YAML(typ="safe", pure=True).load(leaderboard_template()))
    assert lb.seed == 42 and lb.lengths() == list(range(4, 33))
    assert lb.probe_config.samples_per_length == 25 and lb.probe_config.token_per_sample == 256
    assert len(lb.datasets) == 32 and all(d.commit_hash for d in lb.datasets)
    assert lb.sampler == "finesse-0.18.9" and lb.probe_config.group_amount == 100  # the leaderboard's own draws
    assert parse_config(YAML(typ="safe", pure=True).load(TEMPLATE)).sampler == "sie-evals"  # default


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["probe_config"].update({"tokper_sample": 500}), "probe_config.tokper_sample"),
        (lambda d: d["probe_config"].update({"sequence_length": {"min": 9, "max": 5}}), "sequence_length"),
        (lambda d: d["probe_config"].update({"samples_per_length": 0}), "samples_per_length"),
        (lambda d: d["probe_config"].update({"token_per_sample": -1}), "token_per_sample"),
        (lambda d: d.update({"seed": None}), "seed"),
        (lambda d: d.update({"mode": "merger_mode"}), "models.merger"),
        (lambda d: d.update({"datasets": [{"path": "uonlp/CulturaX", "split": "train"}]}), "commit_hash"),
        (lambda d: d.update({"formula": "q1q4"}), "formula"),
    ],
)
def test_config_rejects(edit, field):
    data = tiny()
    edit(data)
    with pytest.raises(ConfigError, match=field.split(".")[-1]):
        parse_config(data, "bench.yaml")


def test_probes_are_seeded_and_deterministic():
    tok = load_tokenizer(MODEL_ID)
    docs = load_documents(parse_config(tiny()).datasets, None)
    a = draw_probes(docs, tok, [4, 5], 2, 16, seed=42)
    b = draw_probes(docs, tok, [4, 5], 2, 16, seed=42)
    c = draw_probes(docs, tok, [4, 5], 2, 16, seed=7)
    assert [p.texts for p in a[5]] == [p.texts for p in b[5]]
    assert [p.texts for p in a[5]] != [p.texts for p in c[5]]
    ids = [i for probes in a.values() for p in probes for i in p.doc_ids]
    assert len(ids) == len(set(ids)) == 18
    for p in a[4]:  # each chunk is the opening 16 reference tokens of its document, original casing kept
        assert [len(x) for x in tok.tokenizer(p.texts, add_special_tokens=False)["input_ids"]] == [16] * 4
    with pytest.raises(InputError, match="usable documents"):
        draw_probes(docs[:30], tok, [4, 5], 4, 16, seed=1)


def test_two_models_get_identical_chunk_texts(tmp_path):
    """Same config, two models (fp32 and bf16 profiles): identical texts, different vectors, both scored."""
    paths = []
    for profile in ("default", "bf16"):
        data = tiny(native_embedder={"name": MODEL_ID, "profile": profile})
        paths.append(generate(parse_config(data), tmp_path / profile))
    a, b = (read_embeddings(p) for p in paths)
    texts_a = [s.texts for s in a.lengths[4].samples]
    assert texts_a == [s.texts for s in b.lengths[4].samples] and len(texts_a) == 2
    assert not np.array_equal(a.lengths[4].samples[0].synth, b.lengths[4].samples[0].synth)
    ra, rb = score_embeddings(a), score_embeddings(b)
    assert ra["average_rss"] != rb["average_rss"]
    assert a.metadata["reference_tokenizer"]["files_sha256"]["vocab.txt"]
    assert a.metadata["models"]["native"]["model_hash"] == b.metadata["models"]["native"]["model_hash"]


def test_native_skips_lengths_over_the_context(tmp_path):
    data = tiny(lengths=(4, 5), samples=1, native_embedder={"name": MODEL_ID, "max_context_length": 80})
    emb = read_embeddings(generate(parse_config(data), tmp_path))
    assert emb.lengths[4].skipped is None and len(emb.lengths[4].samples) == 1  # 4*16 + 2 specials + joins < 80
    assert "max_context_length 80" in emb.lengths[5].skipped
    assert len(emb.lengths[5].samples[0].texts) == 5  # texts recorded even when skipped
    res = score_embeddings(emb)
    assert res["skipped_lengths"] == {"5": emb.lengths[5].skipped} and res["complete"] is False
    assert list(res["length_scores"]) == ["4"]


def test_merger_mode_mean_baseline(tmp_path):
    data = tiny(samples=1, merger={"name": "mean"}, base_embedder={"name": MODEL_ID}, mode="merger_mode")
    emb = read_embeddings(generate(parse_config(data), tmp_path))
    s = emb.lengths[4].samples[0]
    assert s.synth_times[0] == 0.0 and len(s.chunk_times) == 4
    # mean of unit vectors, renormalised: s_0 is chunk 0 itself, s_1 the normalised mean of chunks 0 and 1
    assert np.allclose(s.synth[0], s.chunks[0], atol=1e-6)
    mean01 = s.chunks[:2].mean(0)
    assert np.allclose(s.synth[1], mean01 / np.linalg.norm(mean01), atol=1e-6)
    res = score_embeddings(emb)
    total = sum(s.chunk_times) + s.synth_times[-1]
    assert res["length_scores"]["4"]["total_latency_scores"] == [round(total, 6)]


def test_hf_merger_needs_trust_and_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for merger, match in (
        ({"name": "enzoescipy/sequence-merger-malgeum"}, "trust_remote_code"),
        ({"name": "enzoescipy/sequence-merger-malgeum", "trust_remote_code": True}, "cannot be downloaded"),
    ):
        data = tiny(samples=1, merger=merger, base_embedder={"name": MODEL_ID}, mode="merger_mode")
        with pytest.raises(ConfigError, match=match):
            generate(parse_config(data), tmp_path)


# ------------------------------------------------------------------------------------------- byok


def _hash_vector(text: str, dim: int = 32) -> list[float]:
    """A deterministic bag-of-words embedding: what a real server returns is beside the point here."""
    v = np.zeros(dim)
    for word in text.lower().split():
        d = hashlib.sha256(word.encode()).digest()
        v += np.frombuffer(d, dtype=np.uint8)[:dim] / 255.0 - 0.5
    return (v / max(np.linalg.norm(v), 1e-9)).tolist()


class _Handler(BaseHTTPRequestHandler):
    mode = "ok"
    seen_auth: list[str | None] = []  # noqa: RUF012

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen_auth.append(self.headers.get("Authorization"))
        if self.mode == "bad":
            payload = b'{"object": "list", "data": "oops"}'
        elif self.mode == "short":
            payload = json.dumps({"data": [{"index": 0, "embedding": _hash_vector("x")}]}).encode()
        else:
            items = [{"index": i, "embedding": _hash_vector(t)} for i, t in enumerate(body["input"])]
            payload = json.dumps({"object": "list", "data": items[::-1], "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def loopback_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.mode, _Handler.seen_auth = "ok", []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _byok(base_url: str, **extra) -> dict:
    return tiny(
        mode="byok_mode",
        samples=1,
        byok_embedder={"name": "toy", "base_url": base_url, "max_context_length": 512, **extra},
    )


def test_byok_against_a_loopback_server(tmp_path, loopback_server, monkeypatch):
    monkeypatch.setenv("TOY_KEY", "sk-test-123")
    path = generate(parse_config(_byok(loopback_server, api_key_env="TOY_KEY")), tmp_path)
    assert set(_Handler.seen_auth) == {"Bearer sk-test-123"}
    assert b"sk-test-123" not in Path(path).read_bytes()  # the key is never written out
    emb = read_embeddings(path)
    s = emb.lengths[4].samples[0]
    assert np.allclose(s.chunks[0], _hash_vector(s.texts[0]), atol=1e-6)  # reply order restored from 'index'
    assert np.allclose(s.synth[3], _hash_vector(" ".join(s.texts)), atol=1e-6)
    assert emb.metadata["models"]["byok"]["model_hash"]
    assert score_embeddings(emb)["length_scores"]["4"]["rss_scores"][0] != 0


def test_byok_errors(tmp_path, loopback_server, monkeypatch):
    monkeypatch.delenv("TOY_KEY", raising=False)
    with pytest.raises(InputError, match="TOY_KEY is not set"):
        generate(parse_config(_byok(loopback_server, api_key_env="TOY_KEY")), tmp_path)
    for mode, match in (("bad", "malformed reply"), ("short", "asked for")):
        _Handler.mode = mode
        with pytest.raises(EngineError, match=match):
            generate(parse_config(_byok(loopback_server)), tmp_path)
    with pytest.raises(EngineError, match="cannot reach"):
        generate(parse_config(_byok("http://127.0.0.1:9")), tmp_path)


@pytest.mark.slow
@pytest.mark.servers
def test_byok_against_the_real_sie_server(tmp_path, minilm):
    """sie-server's /v1/embeddings through byok mode; vectors agree with the local engine's."""
    from sie_evals_tests.test_servers_sie import require_server

    require_server("sie")
    from sie_evals.lib.engines.sie import SieEngine

    engine = SieEngine(minilm, minilm.resolve_profile("default"), log_dir=tmp_path / "logs")
    with engine:
        engine.start()
        data = _byok(engine.server.base_url, name=MODEL_ID, max_context_length=256)
        byok = read_embeddings(generate(parse_config(data), tmp_path / "byok"))
    native = read_embeddings(generate(parse_config(tiny(samples=1)), tmp_path / "native"))
    a, b = byok.lengths[4].samples[0], native.lengths[4].samples[0]
    assert a.texts == b.texts
    cos = (a.synth * b.synth).sum(1) / np.linalg.norm(a.synth, axis=1) / np.linalg.norm(b.synth, axis=1)
    assert cos.min() > 0.999, cos


TOY_MERGER_CODE = '''
import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling


class ToyMergerConfig(PretrainedConfig):
    model_type = "toy-sequence-merger"

    def __init__(self, dim=384, **kwargs):
        self.dim = dim
        super().__init__(**kwargs)


class ToyMerger(PreTrainedModel):
    """A sequence merger: a linear map of each input embedding; pooler = recency-weighted mean."""

    config_class = ToyMergerConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.dim, config.dim)
        self.post_init()

    def forward(self, embeddings):
        hidden = self.proj(embeddings)
        weights = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)[None, :, None]
        pooled = (hidden * weights).sum(1) / weights.sum()
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)
'''


def test_hf_sequence_merger_checkpoint_from_a_local_folder(tmp_path, monkeypatch):
    """The HF merger path with a real (tiny, local) trust_remote_code checkpoint: AutoModel + pooler_output."""
    import sys

    import torch

    folder, code = tmp_path / "toy-merger", tmp_path / "code"
    code.mkdir()
    (code / "modeling_toy.py").write_text(TOY_MERGER_CODE)  # save_pretrained copies it into the checkpoint
    monkeypatch.syspath_prepend(str(code))
    import modeling_toy

    modeling_toy.ToyMergerConfig.register_for_auto_class()
    modeling_toy.ToyMerger.register_for_auto_class("AutoModel")
    torch.manual_seed(0)
    modeling_toy.ToyMerger(modeling_toy.ToyMergerConfig(dim=384)).save_pretrained(folder)
    sys.modules.pop("modeling_toy", None)
    assert "auto_map" in json.loads((folder / "config.json").read_text())

    merger = {"name": str(folder), "pool_type": "pooler", "trust_remote_code": True}
    data = tiny(samples=1, merger=merger, base_embedder={"name": MODEL_ID}, mode="merger_mode")
    emb = read_embeddings(generate(parse_config(data), tmp_path / "out"))
    s = emb.lengths[4].samples[0]
    assert np.allclose(np.linalg.norm(s.synth, axis=1), 1.0, atol=1e-5)
    assert np.allclose(s.synth[0], s.chunks[0], atol=1e-5)  # one-chunk merge == the merger's view of chunk 0
    assert not np.allclose(s.synth[1], s.chunks[1], atol=1e-3)
    assert emb.metadata["models"]["merger"]["model_hash"]
    assert score_embeddings(emb)["length_scores"]["4"]["raw_bu"][0] != 0
