"""Prometheus and Alertmanager as processes of the local stack, configured from deploy/topology.py.

`make up` starts them after the services when `prometheus` is on PATH (Alertmanager too when its binary is),
records them in .stack/state.json like the replicas, and `make down` stops them. Their configs are generated
under .stack/ from the topology and STACK_PORT_OFFSET; the rule files are read where they live, in
deploy/prometheus/rules, so the local stack, docker-compose.yml and Kubernetes load the same files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploy import state as stack_state
from deploy.alertmanager_config import TEMPLATE, placeholders, render_config
from deploy.errors import StackError
from deploy.state import say
from deploy.topology import HOST, SERVICES, port_offset

RULES_DIR = stack_state.ROOT / "deploy" / "prometheus" / "rules"
# The local stack scrapes and evaluates every 2 s so a drill sees rates and alerts within seconds; the shipped
# compose and Kubernetes configs keep 15 s (docs/adr/0042-prometheus-in-the-local-stack.md).
LOCAL_INTERVAL = "2s"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
READY_TIMEOUT = 30.0
PROMETHEUS_BINARIES = ("prometheus",)
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, then upstream's


def _port(var: str, default: int) -> int:
    """A port from the environment (e.g. STACK_PROMETHEUS_PORT), else the default shifted by STACK_PORT_OFFSET."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default + port_offset()
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StackError(f"{var} must be a TCP port, not {raw!r}")
    return int(raw)


def prometheus_port() -> int:
    """Where the local Prometheus listens: STACK_PROMETHEUS_PORT, else 9090 + STACK_PORT_OFFSET."""
    return _port("STACK_PROMETHEUS_PORT", PROMETHEUS_PORT)


def alertmanager_port() -> int:
    """Where the local Alertmanager listens: STACK_ALERTMANAGER_PORT, else 9093 + STACK_PORT_OFFSET."""
    return _port("STACK_ALERTMANAGER_PORT", ALERTMANAGER_PORT)


def binary(names: tuple[str, ...]) -> str | None:
    """The first of these programs found on PATH."""
    return next((found for name in names if (found := shutil.which(name))), None)


def rule_files() -> list[str]:
    """The shipped rule files, by absolute path (read in place, never copied)."""
    return [str(path) for path in sorted(RULES_DIR.glob("*.yml"))]


def prometheus_config(offset: int, alertmanager: int | None) -> dict[str, Any]:
    """The local Prometheus: every replica of the topology under its service's `job`, the shipped rules."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": LOCAL_INTERVAL, "evaluation_interval": LOCAL_INTERVAL},
        "rule_files": rule_files(),
        "scrape_configs": [
            {
                "job_name": spec.name,
                "static_configs": [{"targets": [f"{HOST}:{port}" for _name, port in spec.replicas(offset)]}],
            }
            for spec in SERVICES
        ],
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [f"{HOST}:{alertmanager}"]}]}]}
    return config


def write_prometheus_config(path: Path, offset: int, alertmanager: int | None) -> Path:
    """Write the local Prometheus's config (JSON, which Prometheus reads as the YAML it is)."""
    return _write(path, json.dumps(prometheus_config(offset, alertmanager), indent=2) + "\n")


def alertmanager_config(env: Mapping[str, str]) -> str:
    """The shipped routes; receivers post to the webhooks when their URLs are set, else only show in the UI."""
    import yaml  # a dependency of uvicorn[standard]; only this fallback parses YAML

    template = TEMPLATE.read_text()
    if all(env.get(name) for name in placeholders(template)):
        return render_config(template, env)
    config = yaml.safe_load(template)
    for receiver in config["receivers"]:  # same routes and inhibitions, no delivery
        receiver.pop("webhook_configs", None)
    return str(yaml.safe_dump(config, sort_keys=False))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)  # the Alertmanager config may hold webhook URLs with tokens
    path.write_text(text)
    return path


def _http_ready(url: str) -> bool:
    from deploy.replicas import http_ok

    return http_ok(url, 1.0)


def _keep_or_stop(state: dict[str, Any], name: str, port: int) -> bool:
    """True when a recorded process runs on this port (told to reload its config); else it is stopped."""
    record = state["processes"].get(name)
    if record is None:
        return False
    if stack_state.is_running(record) and record.get("port") == port:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(record["pid"]), signal.SIGHUP)  # both reread their config on SIGHUP
        say(f"  {name} already running on :{port} (pid {record['pid']}); reloaded its config")
        return True
    stack_state.stop_recorded(state, {name})
    return False


def _start(state: dict[str, Any], name: str, cmd: list[str], port: int) -> None:
    """Spawn one monitoring process, record it, wait for its /-/ready."""
    if not stack_state.port_is_free(port):
        raise StackError(f"port {port} for {name} is in use by a process this launcher did not start")
    record = stack_state.spawn(name, cmd, env=dict(os.environ))
    url = f"http://{HOST}:{port}"
    record.update(kind="monitor", port=port, url=url)
    state["processes"][name] = record
    stack_state.save_state(state)
    say(f"  starting {name} on :{port} (pid {record['pid']})")
    stack_state.wait_until(functools.partial(_http_ready, f"{url}/-/ready"), record, name, READY_TIMEOUT)
    say(f"  {name} ready: {url}")


def start_alertmanager(state: dict[str, Any], program: str) -> int:
    """Alertmanager with the shipped routes, its data under .stack/alertmanager; returns its port."""
    port = alertmanager_port()
    home = stack_state.STACK_DIR / "alertmanager"
    config = _write(home / "alertmanager.yml", alertmanager_config(os.environ))
    if _keep_or_stop(state, "alertmanager", port):
        return port
    cmd = [
        program,
        f"--config.file={config}",
        f"--storage.path={home / 'data'}",
        f"--web.listen-address={HOST}:{port}",
        "--cluster.listen-address=",  # one local instance: no gossip port to collide with another stack's
    ]
    _start(state, "alertmanager", cmd, port)
    return port


def start_prometheus(state: dict[str, Any], program: str, alertmanager: int | None) -> int:
    """Prometheus scraping every replica, with the shipped rules, its data under .stack/prometheus."""
    port = prometheus_port()
    home = stack_state.STACK_DIR / "prometheus"
    path = write_prometheus_config(home / "prometheus.yml", port_offset(), alertmanager)
    if _keep_or_stop(state, "prometheus", port):
        return port
    cmd = [
        program,
        f"--config.file={path}",
        f"--storage.tsdb.path={home / 'data'}",
        "--storage.tsdb.retention.time=2d",
        f"--web.listen-address={HOST}:{port}",
    ]
    _start(state, "prometheus", cmd, port)
    return port


def start_observability(state: dict[str, Any]) -> list[str]:
    """Alertmanager (when installed) and Prometheus; skipped with a note when prometheus is not on PATH."""
    prometheus = binary(PROMETHEUS_BINARIES)
    if prometheus is None:
        say("  prometheus is not on PATH: skipping Prometheus and Alertmanager (apt-get install prometheus)")
        return []
    started = []
    alertmanager = binary(ALERTMANAGER_BINARIES)
    am_port = None
    if alertmanager is None:
        say("  prometheus-alertmanager is not on PATH: Prometheus evaluates the alerts, nobody routes them")
    else:
        am_port = start_alertmanager(state, alertmanager)
        started.append("alertmanager")
    start_prometheus(state, prometheus, am_port)
    return [*started, "prometheus"]


def print_monitors(state: dict[str, Any]) -> None:
    """One line per monitoring process: its URL, pid and log."""
    for name in ("prometheus", "alertmanager"):
        record = state["processes"].get(name)
        if record is None:
            continue
        alive = stack_state.is_running(record)
        status = ("ready" if _http_ready(f"{record['url']}/-/ready") else "not ready") if alive else "exited"
        say(f"  {name:<13} {record['url']}  pid {record['pid']:<7} {status:<9} log {stack_state.rel(record['log'])}")
