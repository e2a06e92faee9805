"""Server processes the harness starts and stops itself.

A managed server runs in its own session (process group), bound to 127.0.0.1 on a free port, with
its stdout/stderr in a log file that is kept with the run. Start-up waits for a server-specific
readiness rule with a bounded timeout; if the process exits, the rule reports a definitive failure,
or the time runs out, the server is stopped and the error carries the tail of its log. Stopping is
SIGTERM to the whole group, then SIGKILL after a timeout, and it happens on every exit path: the
engine's `with` block, an atexit hook, and SIGTERM (turned into SystemExit so `finally` blocks run).
"""

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sie_evals.lib.core.errors import EngineError

LOG_TAIL_LINES = 40
ADDRESS_IN_USE = ("address already in use", "errno 98", "eaddrinuse")


class ServerStartError(EngineError):
    """A readiness rule saw a definitive failure (e.g. the model failed to load): stop waiting."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as err:
        return f"(log {path} unreadable: {err})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ServerCommand:
    """How to run one server. `argv(port)` builds the command line for a port; `ready(base_url)`
    returns True when the server can take requests, False while it is still starting (connection
    errors also count as 'not yet'), and raises ServerStartError on a definitive failure."""

    name: str
    argv: Callable[[int], list[str]]
    ready: Callable[[str], bool]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    startup_timeout_s: float = 300.0
    stop_timeout_s: float = 15.0


_LIVE: set["ManagedServer"] = set()
_LIVE_LOCK = threading.Lock()
_HOOKS_INSTALLED = False


def _stop_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        server.stop()


def _on_sigterm(signum: int, frame: object) -> None:
    # Unwind normally (engines' `with` blocks and `finally` clauses stop their servers), then exit 143.
    raise SystemExit(128 + signum)


def _install_hooks() -> None:
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    _HOOKS_INSTALLED = True
    atexit.register(_stop_all)
    # Only take SIGTERM over when nobody else handles it (Dagster, pytest etc. keep theirs).
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


class ManagedServer:
    """One server process: start() -> base_url, stop(), alive(), log tail for error messages."""

    def __init__(self, command: ServerCommand, log_path: Path, port: int | None = None, start_attempts: int = 3):
        self.command = command
        self.log_path = Path(log_path)
        self.fixed_port = port
        self.start_attempts = start_attempts if port is None else 1  # a fixed port is not swapped for another
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._pgid: int | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def failure(self, what: str) -> EngineError:
        return EngineError(
            f"{self.command.name}: {what}\n--- last lines of the server log {self.log_path} ---\n{self.log_tail()}"
        )

    def exit_description(self) -> str:
        rc = self.proc.poll() if self.proc else None
        if rc is None:
            return "is running"
        if rc < 0:
            return f"was killed by signal {signal.Signals(-rc).name}"
        return f"exited with code {rc}"

    def start(self) -> str:
        _install_hooks()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, self.start_attempts + 1):
            try:
                return self._start_once()
            except _PortTaken:
                if attempt == self.start_attempts:
                    raise self.failure(
                        f"port {self.port} on 127.0.0.1 is already in use ({attempt} attempt(s))"
                    ) from None
        raise AssertionError("unreachable")

    def _start_once(self) -> str:
        cmd = self.command
        self.port = self.fixed_port or free_port()
        if self.fixed_port and not port_is_free(self.fixed_port):
            raise _PortTaken
        argv = cmd.argv(self.port)
        env = {**os.environ, **cmd.env}
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cmd.cwd,
                    start_new_session=True,  # own process group: Ctrl-C in the terminal reaches us, not it
                )
            except OSError as err:
                raise EngineError(f"{cmd.name}: cannot run {argv[0]}: {err}") from None
        self._pgid = self.proc.pid  # start_new_session makes the child its group's leader
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self) -> None:
        cmd = self.command
        deadline = time.monotonic() + cmd.startup_timeout_s
        delay = 0.2
        while True:
            if not self.alive():
                tail = self.log_tail().lower()
                if self.fixed_port is None and any(s in tail for s in ADDRESS_IN_USE):
                    raise _PortTaken
                raise self.failure(f"server {self.exit_description()} during start-up")
            try:
                if cmd.ready(self.base_url):
                    return
            except ServerStartError as err:
                raise self.failure(f"start-up failed: {err}") from None
            except (OSError, ValueError):
                pass  # not listening yet / half-started
            if time.monotonic() > deadline:
                raise self.failure(f"not ready after {cmd.startup_timeout_s:.0f} s (start-up timeout)")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after the timeout. Idempotent and thread-safe."""
        with self._lock:
            proc, pgid = self.proc, self._pgid
            if proc is None or pgid is None:
                return
            try:
                if proc.poll() is None:
                    signal_group(pgid, signal.SIGTERM)
                    try:
                        proc.wait(self.command.stop_timeout_s)
                    except subprocess.TimeoutExpired:
                        signal_group(pgid, signal.SIGKILL)
                        proc.wait(10)
                # The leader is gone; anything it left in its group goes too.
                signal_group(pgid, signal.SIGKILL)
                wait_group_gone(pgid, timeout_s=5.0)
            finally:
                with contextlib.suppress(OSError), open(self.log_path, "ab") as log:
                    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} stopped ({proc.returncode})\n".encode())
                with _LIVE_LOCK:
                    _LIVE.discard(self)
                self._pgid = None


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process of the group remains, from /proc (Linux)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def wait_group_gone(pgid: int, timeout_s: float) -> None:
    """SIGKILL is delivered asynchronously: wait (bounded) until the group's processes are gone, so
    stop() returning means nothing of the server still runs."""
    if not Path("/proc/self/stat").exists():
        return
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _PortTaken(Exception):
    """Internal: the server could not bind its port; start again on another one."""
