"""The image, built and run (issue 24, item 4): scripts/build_image.sh builds ./Dockerfile with buildah
from a debootstrap'd bookworm base (no docker engine, no registry), then inside the image: a SciFact slice
eval offline whose ndcg@10 equals the same slice run here, `sie-bench validate`, and `dagster api grpc`
answering `dagster api grpc-health-check` from this checkout's venv over 127.0.0.1 (chroot isolation
shares the host's network). Skipped only where buildah is missing, and required under CI."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sie_evals_tests.conftest import DATA, MODEL_ID, REPO_ROOT, skip_unless_required

pytestmark = pytest.mark.slow

TAG = "localhost/sie-evals:test"
SLICE = ["-t", "beir/SciFact", "--limit-queries", "20", "--corpus-size", "300", "-s", "local", "--no-progress"]
BUILD_TIMEOUT_S = 1800  # a cold build (debootstrap, torch, every dependency) on 2 cores; warm: about a minute


def buildah(*argv: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["buildah", *argv], capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f"buildah {argv}: {res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def container(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A working container of the freshly built image, with the data mounted read-only and /out writable."""
    if shutil.which("buildah") is None:
        skip_unless_required("buildah is not installed (scripts/build_image.sh installs it from Debian)")
    build = subprocess.run(
        ["bash", "scripts/build_image.sh", TAG],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, f"build_image.sh failed:\n{build.stdout}\n{build.stderr[-4000:]}"
    out = tmp_path_factory.mktemp("image-out")
    out.chmod(0o777)  # the image runs as its `sie` user (uid 1000)
    name = buildah("from", "--quiet", TAG).stdout.strip()
    try:
        yield name, out
    finally:
        buildah("rm", name, check=False)


def run_in(container: str, *argv: str, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(in_container(container, *argv), capture_output=True, text=True, timeout=timeout, **popen)


def in_container(container: str, *argv: str) -> list[str]:
    name, out = container
    return [
        "buildah",
        "run",
        "--isolation",
        "chroot",
        "--volume",
        f"{DATA}:/mnt/datasets:ro",
        "--volume",
        f"{out}:/out",
        "--env",
        "HF_HUB_OFFLINE=1",
        name,
        "--",
        *argv,
    ]


def ndcg_at_10(report: Path) -> float:
    return json.loads(report.read_text())["sources"]["local"]["metrics"]["ndcg_at_10"]


def test_eval_in_the_image_equals_the_same_slice_here(container, tmp_path):
    res = run_in(container, "sie-bench", "eval", MODEL_ID, *SLICE, "-o", "/out/report.json")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr[-4000:]}"
    inside = ndcg_at_10(container[1] / "report.json")
    here = tmp_path / "report.json"
    sie_bench = Path(sys.executable).parent / "sie-bench"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "SIE_EVALS_DATA_DIR": str(DATA)}
    res = subprocess.run(
        [sie_bench, "eval", MODEL_ID, *SLICE, "--no-record", "-o", here],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert 0 < inside <= 1 and inside == ndcg_at_10(here)


def test_validate_in_the_image(container):
    res = run_in(container, "sie-bench", "validate")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr[-4000:]}"


def test_the_image_runs_the_distributed_roles(container):
    """What a fleet needs from the same image: the Celery worker app and the s3/gcs artifact backends."""
    probe = (
        "import fsspec, dagster_celery, dagster_k8s; "
        "print(fsspec.get_filesystem_class('s3').__module__, fsspec.get_filesystem_class('gs').__module__)"
    )
    res = run_in(container, "python", "-c", probe)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr[-4000:]}"
    assert [m.split(".")[0] for m in res.stdout.split()] == ["s3fs", "gcsfs"]
    worker_app = (
        "import os; os.environ['SIE_EVALS_CELERY_BROKER'] = 'redis://127.0.0.1:6399/0'; "
        "from sie_evals.defs.celery_app import app, execute_plan; print(execute_plan.name)"
    )
    res = run_in(container, "python", "-c", worker_app)
    assert res.returncode == 0 and res.stdout.strip().endswith("execute_plan"), f"{res.stdout}\n{res.stderr[-4000:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dagster_grpc_in_the_image_answers_a_health_check(container):
    port = str(free_port())
    dagster = Path(sys.executable).parent / "dagster"
    check = [dagster, "api", "grpc-health-check", "-p", port]
    assert subprocess.run(check, capture_output=True, timeout=60).returncode != 0  # nothing serves it yet
    server = subprocess.Popen(
        in_container(container, "dagster", "api", "grpc", "-h", "127.0.0.1", "-p", port, "-m", "sie_evals.definitions"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # buildah and the server in one process group, ended together
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            healthy = subprocess.run(check, capture_output=True, text=True, timeout=60)
            if healthy.returncode == 0:
                break
            assert server.poll() is None, server.stdout.read().decode()[-4000:]
            assert time.monotonic() < deadline, healthy.stdout + healthy.stderr
            time.sleep(2)
        # and from inside the image too: its own dagster CLI
        res = run_in(container, "dagster", "api", "grpc-health-check", "-p", port, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
