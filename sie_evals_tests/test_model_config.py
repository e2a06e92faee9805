import json

import pytest

from sie_evals.lib.config import model_config as mc
from sie_evals.lib.core.errors import ConfigError, UnknownNameError
from sie_evals_tests.conftest import MODEL_ID, REPO_ROOT

CONFIG = REPO_ROOT / "model_configs" / "sentence-transformers__all-MiniLM-L6-v2.yaml"


def test_shipped_configs_validate():
    configs = mc.load_all_model_configs(REPO_ROOT / "model_configs")
    assert MODEL_ID in [c.model_id for c in configs]


def test_lookup_by_id_short_name_and_file_stem():
    d = REPO_ROOT / "model_configs"
    for name in (MODEL_ID, "all-MiniLM-L6-v2", "sentence-transformers__all-MiniLM-L6-v2"):
        assert mc.find_model_config(name, d).model_id == MODEL_ID


def test_unknown_model_lists_valid_ones():
    with pytest.raises(UnknownNameError) as err:
        mc.find_model_config("BAAI/nope", REPO_ROOT / "model_configs")
    assert MODEL_ID in str(err.value) and err.value.exit_code == 2


def test_profiles_override_default():
    config = mc.load_model_config(CONFIG)
    default = config.resolve_profile("default")
    bf16 = config.resolve_profile("bf16")
    assert default.dtype == mc.Dtype.float32 and bf16.dtype == mc.Dtype.bfloat16
    assert bf16.max_seq_length == default.max_seq_length == 256
    assert bf16.pooling == default.pooling == mc.Pooling.mean
    with pytest.raises(UnknownNameError, match="bf16"):
        config.resolve_profile("nope")


def _write(tmp_path, text):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


BASE = """model_id: org/m
weights: {hf_id: org/m}
profiles:
  default: {pooling: cls}
"""


def test_unknown_key_is_named_with_file(tmp_path):
    p = _write(tmp_path, BASE.replace("  default: {pooling: cls}", "  default: {pooling: cls, normalise: true}"))
    with pytest.raises(ConfigError) as err:
        mc.load_model_config(p)
    msg = str(err.value)
    assert str(p) in msg and "profiles.default.normalise" in msg and "unknown key" in msg


def test_unknown_top_level_key(tmp_path):
    p = _write(tmp_path, BASE + "pooling: mean\n")
    with pytest.raises(ConfigError, match=r"field 'pooling': unknown key"):
        mc.load_model_config(p)


def test_wrong_type_is_named(tmp_path):
    p = _write(tmp_path, BASE.replace("{pooling: cls}", "{pooling: cls, max_seq_length: lots}"))
    with pytest.raises(ConfigError) as err:
        mc.load_model_config(p)
    assert "profiles.default.max_seq_length" in str(err.value) and "integer" in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (BASE.replace("default:", "fast:"), "'default' profile is required"),
        (BASE.replace("{hf_id: org/m}", "{hf_id: org/m, path: /x}"), "exactly one of"),
        (BASE + "sources: [local, bogus]\n", "unknown source"),
        (BASE + "tasks: [SciFact]\n", "namespace/Name"),
        (BASE + "name: 'a:b'\n", "field 'name'"),
        (BASE.replace("{pooling: cls}", "{pooling: max}"), "profiles.default.pooling"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        (BASE + "model_id: dup\n", "not valid YAML"),
    ],
)
def test_invalid_configs(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        mc.load_model_config(_write(tmp_path, text))


def test_json_schema_is_exported_and_current():
    committed = json.loads((REPO_ROOT / "model_configs" / mc.SCHEMA_FILENAME).read_text())
    assert committed == mc.json_schema(), "run: sie-bench schema -o model_configs/model_config.schema.json"
    assert committed["additionalProperties"] is False
