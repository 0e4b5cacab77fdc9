"""The services as processes: migrations, each replica's environment, start order and readiness."""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from typing import Any

from deploy import backends as stack_backends
from deploy import state as stack_state
from deploy.backends import Backends, database_url_for
from deploy.errors import StackError
from deploy.observability import start_observability
from deploy.state import say
from deploy.topology import HOST, SERVICES, ServiceSpec, port_offset, replica_port, spec_named, uvicorn_command

READY_TIMEOUT = 60.0


def run_migrations(backends: Backends) -> None:
    """Bring every service's database to its newest revision (creating it if missing)."""
    stack_state.LOG_DIR.mkdir(parents=True, exist_ok=True)
    for spec in SERVICES:
        if spec.database is None:
            continue
        url = database_url_for(backends.database_url, spec.database)
        log_path = stack_state.LOG_DIR / f"migrate-{spec.name}.log"
        cmd = [sys.executable, "-m", "services.common.migrate", spec.name, url]
        with log_path.open("w") as log:
            done = subprocess.run(
                cmd, cwd=stack_state.ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=300, check=False
            )
        if done.returncode != 0:
            raise StackError(
                f"migrations of {spec.name} failed; {stack_state.rel(log_path)}:\n{stack_state.log_tail(log_path)}"
            )
        say(f"  migrated {spec.name} -> database {spec.database}")


def service_env(
    spec: ServiceSpec, replica: str, port: int, backends: Backends, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of one replica: shared Redis, own database, replica id, the URLs it needs, `overrides`."""
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


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET url answers 200."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def env_text(env: dict[str, str]) -> str:
    """Environment variables as `KEY=value` words, for progress lines."""
    return " ".join(f"{key}={value}" for key, value in env.items())


def _keeps_running(
    record: dict[str, Any], port: int, backends: Backends, wanted: dict[str, str], restart_changed: bool
) -> bool:
    """True when a recorded replica runs on this port against these backends (and, if asked, these overrides)."""
    recorded = (record.get("port"), record.get("redis_url"), record.get("database_url"))
    had = record.get("env_overrides", {})
    return (
        stack_state.is_running(record)
        and recorded == (port, backends.redis_url, backends.database_url)
        and (had == wanted or not restart_changed)
    )


def replicas_to_start(
    state: dict[str, Any], backends: Backends, overrides: dict[str, dict[str, str]], restart_changed: bool
) -> dict[str, tuple[ServiceSpec, int]]:
    """Every replica that does not run as wanted (a stale one is stopped first), in start order."""
    procs: dict[str, dict[str, Any]] = state["processes"]
    to_start: dict[str, tuple[ServiceSpec, int]] = {}
    for spec in SERVICES:
        wanted = overrides.get(spec.name, {})
        for replica, port in spec.replicas(port_offset()):
            record = procs.get(replica)
            if record is not None:
                if _keeps_running(record, port, backends, wanted, restart_changed):
                    had = record.get("env_overrides", {})
                    keeps = f"; keeps {env_text(had) or 'the default settings'}" if had != wanted else ""
                    say(f"  {replica} already running on :{port} (pid {record['pid']}{keeps})")
                    continue
                stack_state.stop_recorded(state, {replica})
            to_start[replica] = (spec, port)
    taken = [f"{port} ({replica})" for replica, (_spec, port) in to_start.items() if not stack_state.port_is_free(port)]
    if taken:
        raise StackError(
            f"in use by a process this launcher did not start: port {', '.join(taken)}; "
            "free it, or run this stack on other ports with STACK_PORT_OFFSET=<n> (e.g. 1000)"
        )
    return to_start


def start_replica(
    state: dict[str, Any], spec: ServiceSpec, replica: str, port: int, backends: Backends, extra: dict[str, str]
) -> None:
    """Spawn one replica and record it."""
    env = service_env(spec, replica, port, backends, extra)
    record = stack_state.spawn(replica, uvicorn_command(spec, port), env=env)
    record.update(
        kind="service",
        service=spec.name,
        port=port,
        url=f"http://{HOST}:{port}",
        redis_url=backends.redis_url,
        database_url=backends.database_url,
        env_overrides=extra,
    )
    state["processes"][replica] = record
    stack_state.save_state(state)
    say(f"  starting {replica} on :{port} (pid {record['pid']}{'; ' + env_text(extra) if extra else ''})")


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
    to_start = replicas_to_start(state, backends, overrides, restart_changed)
    ready: set[str] = set()

    def wait_ready(replicas: list[str]) -> None:
        for replica in replicas:
            if replica in ready or replica not in to_start:
                continue
            record = state["processes"][replica]
            ready_url = f"{record['url']}/healthz/ready"
            stack_state.wait_until(functools.partial(http_ok, ready_url), record, replica, READY_TIMEOUT)
            say(f"  {replica} ready")
            ready.add(replica)

    for replica, (spec, port) in to_start.items():
        wait_ready(spec.needs())
        start_replica(state, spec, replica, port, backends, overrides.get(spec.name, {}))
    wait_ready(list(to_start))
    return list(to_start)


def print_services(state: dict[str, Any]) -> None:
    """One line per replica: where it listens, its pid, its log."""
    procs: dict[str, dict[str, Any]] = state["processes"]
    for spec in SERVICES:
        for replica, port in spec.replicas(port_offset()):
            record = procs.get(replica)
            if record is None:
                say(f"  {replica:<13} http://{HOST}:{port}  (not started)")
                continue
            alive = stack_state.is_running(record)
            health = "ready" if alive and http_ok(f"{record['url']}/healthz/ready", 1.0) else "not ready"
            status = health if alive else "exited"
            env = env_text({**spec.env_of(replica), **record.get("env_overrides", {})})
            say(
                f"  {replica:<13} {record['url']}  pid {record['pid']:<7} {status:<9} "
                f"log {stack_state.rel(record['log'])}" + (f"  {env}" if env else "")
            )


def bring_up(
    args: argparse.Namespace,
    overrides: dict[str, dict[str, str]] | None = None,
    *,
    restart_changed: bool = True,
    monitoring: bool = False,
) -> tuple[dict[str, Any], Backends, list[str]]:
    """Backends, migrations, replicas (and with `monitoring`, Prometheus and Alertmanager); returns the state,
    the backends and what this call started."""
    with stack_state.stack_lock():
        state = stack_state.load_state()
        before = set(state["processes"])
        try:
            say("backends:")
            backends = stack_backends.ensure_backends(state, private=args.private, embedded=args.embedded)
            stack_backends.write_env_file(stack_state.DEFAULT_ENV_FILE, backends)
            stack_backends.print_backends(backends)
            say("migrations:")
            run_migrations(backends)
            say("services:")
            start_services(state, backends, overrides, restart_changed=restart_changed)
            if monitoring:
                say("monitoring:")
                start_observability(state)
        except BaseException:
            started = set(state["processes"]) - before
            if started:
                say("start failed; stopping what this run started:")
                stack_state.stop_recorded(state, started)
            raise
        return state, backends, sorted(set(state["processes"]) - before)
