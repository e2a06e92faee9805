"""`sie-bench ui` stops on SIGTERM (issue 22 item 10, N103): the signal reaches `dagster dev`, which
stops its webserver, daemon and code server; no process of the tree survives and the port closes."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sie_evals.lib.servers.managed import free_port

STARTUP_TIMEOUT_S = 240.0  # dagster dev loads the code location: slow on a busy 2-core machine
STOP_BOUND_S = 60.0  # dagster dev's orderly shutdown takes seconds; sie-bench's SIGKILL fallback comes at 90 s


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a process from /proc, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every live descendant of `root`: pid -> start time (a reused pid is another process)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[2]
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _server_info(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the process tree is read from /proc (Linux)")
# "background": started as `sie-bench ui &` in a script, which starts it with SIGINT ignored; a child that
# inherited that would ignore the forwarded SIGINT, and dagster dev then ignores SIGTERM too.
@pytest.mark.parametrize("started", ["plain", "background"])
def test_sigterm_stops_every_process_of_the_dagster_tree(tmp_path, started):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    log = open(tmp_path / "ui.log", "wb")  # noqa: SIM115 - closed in finally, after the process
    # A plain Popen: the child keeps the default signal dispositions, as under a shell or a supervisor.
    ui = subprocess.Popen(
        [sys.executable, "-m", "sie_evals.cli", "ui", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_ignore_sigint if started == "background" else None,
    )
    tree: dict[int, int] = {}
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _server_info(port):
            assert ui.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "dagster dev did not answer /server_info in time"
            time.sleep(1)
        time.sleep(3)  # the daemon and code server are up too by now; collect the whole tree
        tree = _descendants(ui.pid)
        names = " | ".join(_cmdline(p) for p in tree)
        assert "dagster dev" in names and "dagster_webserver" in names and "dagster._daemon" in names, names

        ui.send_signal(signal.SIGTERM)  # to sie-bench only, not to its group
        ui.wait(STOP_BOUND_S)
        deadline = time.monotonic() + 15  # what was SIGKILLed is reaped asynchronously
        while any(_alive(p, s) for p, s in tree.items()) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = [f"{p}: {_cmdline(p)}" for p, s in tree.items() if _alive(p, s)]
        assert survivors == [], survivors
        assert not _port_open(port), f"port {port} still open"
        assert ui.returncode == 128 + signal.SIGTERM
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait(10)
        for pid, start in tree.items():  # never leave a dagster tree running, pass or fail
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        log.close()
