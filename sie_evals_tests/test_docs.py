"""The docs are checked against the code: the CLI reference is generated and current, every option the
README and docs/ mention exists (or belongs to a named outside tool), every relative link resolves, and
the README stays a ten-minute read."""

import re
import subprocess
import sys
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
# Options of other tools the docs quote (docker/buildah, pip, pytest, dagster, cargo, sie-server).
OUTSIDE_OPTIONS = {"--build-arg", "--help", "--no-deps", "--no-hf-fallback", "--partition", "--path", "--select"}
OUTSIDE_OPTIONS |= {"--isolation", "--env"}  # buildah run (docs/deployment.md)
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def _reference():
    sys.path.insert(0, str(DOCS))
    try:
        import gen_cli_reference
    finally:
        sys.path.remove(str(DOCS))
    return gen_cli_reference


def _cli_options() -> set[str]:
    from sie_evals.cli import app
    from sie_evals.finesse.cli import app as finesse_app

    ref = _reference()
    options: set[str] = set()
    for tool in (app, finesse_app):
        for _, command in ref._commands(typer.main.get_command(tool), ""):
            for param in (p for p in command.params if p.param_type_name == "option"):
                options.update(getattr(param, "opts", []))
                options.update(getattr(param, "secondary_opts", []))
    return options


def test_cli_reference_is_generated_from_the_current_code():
    out = subprocess.run(
        [sys.executable, str(DOCS / "gen_cli_reference.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr


def test_every_option_and_settings_field_is_in_the_reference():
    from sie_evals.lib.config.settings import ENV_PREFIX, EvalDefaults

    text = (DOCS / "cli-reference.md").read_text(encoding="utf-8")
    missing = sorted(o for o in _cli_options() if f"`{o}`" not in text)
    missing += [f for f in EvalDefaults.model_fields if f"`{ENV_PREFIX}{f.upper()}`" not in text]
    assert not missing, f"not in docs/cli-reference.md: {missing}"


def test_every_option_the_docs_mention_exists():
    known = _cli_options() | OUTSIDE_OPTIONS
    stale = sorted(
        f"{page.relative_to(ROOT)}: {m.group()}"
        for page in PAGES
        for m in OPTION.finditer(page.read_text(encoding="utf-8"))
        if m.group() not in known
    )
    assert not stale, f"options the docs mention that no command has: {stale}"


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for m in LINK.finditer(page.read_text(encoding="utf-8")):
            target = m.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_readme_is_a_ten_minute_read():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; move reference material to docs/"
