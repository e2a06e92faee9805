"""A boolean where a number is required is an error in every config model (issue 22 item 4: N73, N91).

The walk below discovers the models and their numeric fields itself, from the config roots' type
annotations, so a numeric field added later is covered without touching this file."""

import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.defs.finesse.resources import FinesseRunConfig
from sie_evals.finesse.cli import app as finesse_app
from sie_evals.finesse.config import FinesseConfig
from sie_evals.lib.config.model_config import ModelConfig
from sie_evals.lib.config.settings import EvalDefaults
from sie_evals.lib.perf.scenario import Scenario
from sie_evals_tests.conftest import SCIFACT

runner = CliRunner()
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"


def _flat(text: str) -> str:
    return " ".join(text.split())


def _sample(annotation: Any) -> Any:
    """A value of `annotation`'s shape with True wherever a number goes (None: no number in it)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _sample(args[0])
    if annotation is bool or annotation is typing.Any or origin is typing.Literal:
        return None
    if annotation in (int, float):
        return True
    if origin in (typing.Union, types.UnionType):
        return next((s for a in args if (s := _sample(a)) is not None), None)
    if origin is dict:
        inner = _sample(args[1])
        return None if inner is None else {"k": inner}
    if origin in (list, tuple, set, frozenset):
        inner = _sample(args[0]) if args else None
        return None if inner is None else [inner]
    return None


def _models(annotation: Any) -> set[type[BaseModel]]:
    """Every pydantic model named anywhere in `annotation`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    return {m for a in typing.get_args(annotation) for m in _models(a)}


def reachable(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: dict[type[BaseModel], None] = {}
    todo = [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen[model] = None
        for field in model.model_fields.values():
            todo.extend(_models(field.annotation))
    return list(seen)


def numeric_fields(root: type[BaseModel]) -> list[tuple[type[BaseModel], str, Any]]:
    return [
        (model, name, sample)
        for model in reachable(root)
        for name, field in model.model_fields.items()
        if (sample := _sample(field.annotation)) is not None
    ]


def accepts_true(model: type[BaseModel], name: str, sample: Any) -> bool:
    """Whether `model` validates `name: <sample with True>` without an error naming the field."""
    try:
        model.model_validate({name: sample})
    except ValidationError as err:
        return not any(e["loc"][:1] == (name,) and "boolean" in e["msg"] for e in err.errors())
    return True


ROOTS = {
    "model config": ModelConfig,
    "finesse config": FinesseConfig,
    "finesse dagster run config": FinesseRunConfig,
    "settings": EvalDefaults,
    "loadtest scenario": Scenario,
}


@pytest.mark.parametrize("root", list(ROOTS.values()), ids=list(ROOTS))
def test_every_numeric_field_rejects_a_boolean(root):
    fields = numeric_fields(root)
    assert fields, f"the walk found no numeric field under {root.__name__}"
    offenders = [f"{m.__name__}.{name}" for m, name, sample in fields if accepts_true(m, name, sample)]
    assert offenders == [], f"fields that take true as a number: {offenders}"


def test_the_walk_finds_nested_and_container_fields():
    """The walk reaches nested models and numbers inside unions and containers (a walk that found
    nothing would pass the test above vacuously)."""
    found = {(m.__name__, name) for m, name, _ in numeric_fields(ModelConfig)}
    assert {
        ("MuveraSettings", "projection_dim"),  # ModelConfig.profiles -> ProfileSettings.muvera (optional)
        ("ProfileSettings", "batch_size"),  # int | None
        ("MarginSet", "quality"),  # float | None, two levels down
        ("SavedResult", "metrics"),  # dict[str, float]
    } <= found
    assert ("ProbeConfig", "group_amount") in {(m.__name__, n) for m, n, _ in numeric_fields(FinesseConfig)}
    assert ("LoadProfile", "rps") in {(m.__name__, n) for m, n, _ in numeric_fields(Scenario)}


def test_lax_numbers_still_work():
    """The rule rejects booleans only: settings still parse numbers from environment strings, and
    a float field still takes a YAML integer."""
    assert EvalDefaults(perf_trials="3", perf_rate="2.5").perf_trials == 3
    minimal = {"model_id": "a/b", "weights": {"hf_id": "a/b"}, "profiles": {"default": {}}}
    config = ModelConfig.model_validate({**minimal, "margins": {"targets": {"quality": 1}}})
    assert config.margins is not None and config.margins.targets is not None
    assert config.margins.targets.quality == 1.0


# ---------------------------------------------------------------- the reproductions, end to end


def test_n73_muvera_projection_dim_true_is_exit_2_naming_the_field(configs_dir, monkeypatch):
    cfg = configs_dir / CONFIG_NAME
    text = cfg.read_text()
    assert "projection_dim: 16" in text
    cfg.write_text(text.replace("projection_dim: 16", "projection_dim: true"))
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    res = runner.invoke(app, ["validate"])
    out = _flat(res.output)
    assert res.exit_code == 2, out
    assert f"{CONFIG_NAME}: field 'profiles.muvera.muvera.projection_dim'" in out and "not a boolean" in out
    assert "Traceback" not in out


def test_n91_finesse_group_amount_true_is_exit_2_naming_the_field(tmp_path: Path):
    cfg = tmp_path / "b.yaml"
    assert runner.invoke(finesse_app, ["init", "--output", str(cfg)]).exit_code == 0
    text = cfg.read_text()
    assert "group_amount: 50 " in text
    cfg.write_text(text.replace("metric: rss ", "metric: srs ").replace("group_amount: 50 ", "group_amount: true "))
    res = runner.invoke(
        finesse_app,
        ["generate", "--config", str(cfg), "--output", str(tmp_path / "o"), "--samples", "1", "--threads", "1",
         "--dataset-path", str(SCIFACT / "corpus.jsonl"), "--no-progress"],
    )  # fmt: skip
    out = _flat(res.output)
    assert res.exit_code == 2, out
    assert str(cfg) in out and "field 'probe_config.group_amount'" in out and "not a boolean" in out
    assert not (tmp_path / "o").exists()
