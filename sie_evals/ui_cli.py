"""`sie-bench ui`'s process handling: the environment dagster dev runs with, and running it in its own
process group so that nothing it starts outlives the command."""

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sie_evals.lib.core import paths


def ui_env(environ: Any, home: Path) -> dict[str, str]:
    """The environment `sie-bench ui` runs dagster with: like scripts/main.sh, the shared data beside
    the repo and no hub access, so a backfill from a fresh clone runs offline (values already set win)."""
    env = {**environ, "DAGSTER_HOME": str(home)}
    checkout = paths.source_checkout()
    shared_data = checkout.parent / "shared" / "data" if checkout else None
    if not env.get(paths.DATA_DIR_ENV) and shared_data is not None and shared_data.is_dir():
        env[paths.DATA_DIR_ENV] = str(shared_data)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.setdefault(name, "1")
    return env


UI_STOP_TIMEOUT_S = 90.0  # dagster dev gives each of its children up to 60 s to stop


def run_dagster_dev(cmd: list[str], env: dict[str, str], cwd: Path, say: Callable[[str], Any]) -> int:
    """Run `dagster dev` in its own process group and stop it when we are told to stop (SIGTERM,
    SIGINT, SIGHUP unless ignored as under nohup): the group gets SIGINT, Dagster's Ctrl-C path, which
    stops its webserver, daemon and code servers. Whatever is left in the group when it exits, or after
    UI_STOP_TIMEOUT_S (or a second signal), is SIGKILLed, so nothing outlives `sie-bench ui`. Returns
    the exit code."""
    from sie_evals.lib.servers.managed import signal_group, wait_group_gone

    proc: subprocess.Popen[bytes] | None = None
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        if proc is not None:
            signal_group(proc.pid, signal.SIGINT)

    stop_signals = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        stop_signals.append(signal.SIGHUP)
    # Installed before the child starts: exec resets handled signals to their default, so dagster dev does
    # not inherit an ignored SIGINT (a `sie-bench ui &` in a script), under which it ignores SIGTERM too.
    previous = {s: signal.signal(s, forward) for s in stop_signals}
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True)
        if received:  # a signal that came while it was starting
            signal_group(proc.pid, signal.SIGINT)
        deadline: float | None = None
        while True:
            try:
                returncode = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if received and deadline is None:
                    deadline = time.monotonic() + UI_STOP_TIMEOUT_S
                if deadline is not None and (time.monotonic() > deadline or len(received) > 1):
                    signal_group(proc.pid, signal.SIGKILL)
    finally:
        if proc is not None:
            signal_group(proc.pid, signal.SIGKILL)  # what dagster dev left behind
            wait_group_gone(proc.pid, timeout_s=10.0)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        say(f"{signal.Signals(received[0]).name}: dagster dev stopped")
        return 128 + received[0]
    return returncode if returncode >= 0 else 128 - returncode
