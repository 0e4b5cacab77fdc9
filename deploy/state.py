"""What the launcher started and how: .stack/state.json, one launcher at a time, starting and stopping processes.

Everything the launcher starts is recorded with its pid and the kernel's start time of that pid, so `down` stops
exactly what it started and never a process that got a recorded pid later.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy import topology
from deploy.errors import StackError

ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = ROOT / ".stack"
STATE_FILE = STACK_DIR / "state.json"
LOCK_FILE = STACK_DIR / "launcher.lock"
LOG_DIR = STACK_DIR / "logs"
DEFAULT_ENV_FILE = STACK_DIR / "backends.env"

PORT_SEARCH = 20  # a private backend takes the first free port of this many from its preferred one
STOP_TIMEOUT = 15.0


def say(message: str) -> None:
    """Print one line of progress at once (make and CI buffer otherwise)."""
    print(message, flush=True)


def rel(path: Path | str) -> str:
    """A path relative to the repo root when it is inside it."""
    p = Path(path)
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def load_state() -> dict[str, Any]:
    """What this launcher started, by name ('redis', 'postgres', 'flashsale-1', ...)."""
    try:
        data: dict[str, Any] = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {"processes": {}}
    data.setdefault("processes", {})
    return data


def save_state(state: dict[str, Any]) -> None:
    """Write the state atomically; an empty state removes the file."""
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    if not state["processes"]:
        STATE_FILE.unlink(missing_ok=True)
        return
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(STATE_FILE)


@contextlib.contextmanager
def stack_lock() -> Iterator[None]:
    """One launcher at a time changes the stack (state.json and the processes it lists)."""
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another launcher command is changing the stack; waiting for it ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_HAVE_PROC = Path("/proc/self/stat").exists()


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of a live process; None when it is gone or a zombie.

    Stored beside the pid, it tells our process from an unrelated one that got the pid later.
    """
    if pid <= 0:
        return None
    if not _HAVE_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]  # field 22 of /proc/<pid>/stat: starttime


def is_running(record: dict[str, Any]) -> bool:
    """True when the recorded process still runs and is the one we started."""
    pid = int(record.get("pid", 0))
    child = _CHILDREN.get(pid)
    if child is not None:
        child.poll()  # reap it if it exited, so it does not linger as a zombie
    start = proc_start_time(pid)
    return start is not None and (start == record.get("start") or not _HAVE_PROC)


def spawn(
    name: str, cmd: list[str], *, env: dict[str, str], os_user: str | None = None, cwd: Path | None = None
) -> dict[str, Any]:
    """Start a long-running process in its own session, logging to .stack/logs/<name>.log."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    with log_path.open("ab") as log:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"\n=== {stamp} the launcher starts {name}: {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd or ROOT,
            start_new_session=True,  # Ctrl-C in the terminal that ran `make up` must not stop the stack
            user=os_user,
            group=group_of(os_user),
            extra_groups=[] if os_user else None,
        )
    _CHILDREN[proc.pid] = proc
    return {"pid": proc.pid, "start": proc_start_time(proc.pid) or "", "cmd": cmd, "log": str(log_path)}


def group_of(os_user: str | None) -> int | None:
    """The primary group of an OS account (None: the launcher's own)."""
    if os_user is None:
        return None
    import pwd

    return pwd.getpwnam(os_user).pw_gid


def stop_process(name: str, record: dict[str, Any], *, first_signal: int = signal.SIGTERM) -> None:
    """Stop one recorded process gracefully: `first_signal`, then SIGKILL after STOP_TIMEOUT."""
    pid = int(record["pid"])
    if not is_running(record):
        say(f"  {name}: not running (pid {pid})")
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first_signal)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not is_running(record):
            say(f"  {name}: stopped (pid {pid})")
            return
        time.sleep(0.1)
    say(f"  {name}: did not stop within {STOP_TIMEOUT:.0f}s; killing pid {pid}")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_running(record) and time.monotonic() < deadline:
        time.sleep(0.1)


def stop_recorded(state: dict[str, Any], names: set[str] | None = None) -> list[str]:
    """Stop what the state lists (or those of `names`): services first, then backends; returns the names."""
    procs: dict[str, dict[str, Any]] = state["processes"]
    chosen = [n for n in procs if names is None or n in names]
    # Services in reverse start order (order before the payment providers it calls), then backends.
    rank = {replica: i for i, (replica, _port) in enumerate(r for spec in topology.SERVICES for r in spec.replicas())}
    services = sorted((n for n in chosen if procs[n].get("kind") == "service"), key=lambda n: rank.get(n, -1))
    ordered = services[::-1]
    # Then Prometheus and Alertmanager (which watch the services), then the backends.
    ordered += [n for n in chosen if procs[n].get("kind") == "monitor"]
    ordered += [n for n in chosen if procs[n].get("kind") not in ("service", "monitor")][::-1]
    for name in ordered:
        record = procs[name]
        # PostgreSQL: SIGINT is its "fast" shutdown; SIGTERM ("smart") would wait for every client to leave.
        first = signal.SIGINT if name == "postgres" else signal.SIGTERM
        stop_process(name, record, first_signal=first)
        del procs[name]
        save_state(state)
        if record.get("kind") == "backend":
            _forget_env_file(str(record.get("url", "")))
    return ordered


def _forget_env_file(url: str) -> None:
    """Remove .stack/backends.env when it names a backend that was just stopped."""
    with contextlib.suppress(OSError):
        if url and url in DEFAULT_ENV_FILE.read_text():
            DEFAULT_ENV_FILE.unlink()


def log_tail(path: str | Path, lines: int = 25) -> str:
    """The last lines of a log file, indented, for error messages."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text)


def port_is_free(port: int) -> bool:
    """True when nothing listens on HOST:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((topology.HOST, port))
        except OSError:
            return False
    return True


def free_port_from(preferred: int) -> int:
    """The first free port at or after `preferred`."""
    for port in range(preferred, preferred + PORT_SEARCH):
        if port_is_free(port):
            return port
    raise StackError(f"no free port in {preferred}-{preferred + PORT_SEARCH - 1}")


def wait_until(check: Callable[[], bool], record: dict[str, Any], what: str, timeout: float = 30.0) -> None:
    """Wait until `check()` holds; fail with the log's tail when the process exits or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not is_running(record):
            raise StackError(
                f"{what} exited while starting; its log ({rel(record['log'])}):\n{log_tail(record['log'])}"
            )
        time.sleep(0.2)
    raise StackError(f"{what} did not answer within {timeout:.0f}s; its log:\n{log_tail(record['log'])}")
