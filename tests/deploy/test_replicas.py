"""Each replica's environment, migrations, and the order in which the launcher starts and waits for replicas."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deploy import replicas, topology
from deploy import state as stack_state
from deploy.backends import Backends

BACKENDS = ("redis://127.0.0.1:6390/0", "postgresql+asyncpg://postgres@127.0.0.1:5440/postgres", "", "")


def test_replica_env_points_the_service_at_its_own_database() -> None:
    spec = next(s for s in topology.SERVICES if s.name == "flashsale")
    env = replicas.service_env(spec, "flashsale-2", 8112, Backends(*BACKENDS))
    assert env["FLASHSALE_DATABASE_URL"] == "postgresql+asyncpg://postgres@127.0.0.1:5440/flashsale"
    assert env["REDIS_URL"] == "redis://127.0.0.1:6390/0"
    assert env["REPLICA_ID"] == "flashsale-2"
    assert env["APP_ENV"] == "dev"


def test_order_replica_env_links_providers_and_coupon_respecting_the_port_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STACK_PORT_OFFSET", "1000")
    spec = topology.spec_named("order")
    env = replicas.service_env(spec, "order-1", 9104, Backends(*BACKENDS))
    assert env["ORDER_DATABASE_URL"] == "postgresql+asyncpg://postgres@127.0.0.1:5440/orders"
    assert env["ORDER_PAYSIM_PRIMARY_URL"] == "http://127.0.0.1:9105"
    assert env["ORDER_PAYSIM_BACKUP_URL"] == "http://127.0.0.1:9115"
    assert env["ORDER_COUPON_URL"] == "http://127.0.0.1:9103"
    assert env["REPLICA_ID"] == "order-1"


def test_payment_deadline_is_the_service_default_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDER_PAYMENT_DEADLINE_SECONDS", raising=False)
    spec = topology.spec_named("order")
    plain = replicas.service_env(spec, "order-2", 8114, Backends(*BACKENDS))
    assert "ORDER_PAYMENT_DEADLINE_SECONDS" not in plain, "`up` keeps the service's own default (900 s)"
    demo = replicas.service_env(spec, "order-2", 8114, Backends(*BACKENDS), {"ORDER_PAYMENT_DEADLINE_SECONDS": "20"})
    assert demo["ORDER_PAYMENT_DEADLINE_SECONDS"] == "20"


def test_paysim_replicas_are_primary_and_backup_without_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYSIM_DATABASE_URL", raising=False)
    spec = topology.spec_named("paysim")
    names = []
    for replica, port in spec.replicas():
        env = replicas.service_env(spec, replica, port, Backends(*BACKENDS))
        assert "PAYSIM_DATABASE_URL" not in env
        assert env["REPLICA_ID"] == replica
        names.append(env["PAYSIM_NAME"])
    assert names == ["primary", "backup"]


def test_coupon_replicas_use_the_coupons_database_and_start_before_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_PORT_OFFSET", "1000")
    spec = topology.spec_named("coupon")
    assert (spec.app, spec.env_prefix, spec.database, spec.ports) == (
        "services.coupon.main:app",
        "COUPON_",
        "coupons",
        (8103, 8113),
    )
    for replica, port in spec.replicas(1000):
        env = replicas.service_env(spec, replica, port, Backends(*BACKENDS))
        assert env["COUPON_DATABASE_URL"] == "postgresql+asyncpg://postgres@127.0.0.1:5440/coupons"
        assert env["REDIS_URL"] == BACKENDS[0]
        assert env["COUPON_PORT"] == str(port) and env["REPLICA_ID"] == replica
        assert env["COUPON_ORDER_URL"] == "http://127.0.0.1:9104", "compensation asks order-1"
    names = [s.name for s in topology.SERVICES]
    assert names.index("coupon") < names.index("order"), "order prices its orders through coupon"


def test_inventory_replicas_use_their_own_database_and_start_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_PORT_OFFSET", "1000")
    spec = topology.spec_named("inventory")
    assert (spec.app, spec.env_prefix, spec.database, spec.ports) == (
        "services.inventory.main:app",
        "INVENTORY_",
        "inventory",
        (8101, 8111),
    )
    assert spec.links == {} and spec.calls == {}
    for replica, port in spec.replicas(1000):
        env = replicas.service_env(spec, replica, port, Backends(*BACKENDS))
        assert env["INVENTORY_DATABASE_URL"] == "postgresql+asyncpg://postgres@127.0.0.1:5440/inventory"
        assert env["REDIS_URL"] == BACKENDS[0]
        assert env["INVENTORY_PORT"] == str(port) and env["REPLICA_ID"] == replica
    assert topology.SERVICES[0] is spec, "nothing depends on inventory yet: it starts first"


def test_replica_env_needs_one_entry_per_port() -> None:
    with pytest.raises(ValueError, match="one entry per port"):
        topology.ServiceSpec("x", "x:app", (1, 2), "X_", None, replica_env=({"A": "1"},))


def test_migrations_cover_every_database(monkeypatch: pytest.MonkeyPatch, stack_dir: Path) -> None:
    commands: list[list[str]] = []

    def fake_run(cmd: list[str], **_kwargs: object) -> subprocess.CompletedProcess[bytes]:
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(replicas.subprocess, "run", fake_run)
    replicas.run_migrations(Backends(*BACKENDS))
    migrated = [(cmd[-2], cmd[-1]) for cmd in commands]
    assert migrated == [
        ("inventory", "postgresql+asyncpg://postgres@127.0.0.1:5440/inventory"),
        ("flashsale", "postgresql+asyncpg://postgres@127.0.0.1:5440/flashsale"),
        ("coupon", "postgresql+asyncpg://postgres@127.0.0.1:5440/coupons"),
        ("order", "postgresql+asyncpg://postgres@127.0.0.1:5440/orders"),
    ]
    assert all(cmd[1:4] == ["-m", "services.common.migrate", cmd[-2]] for cmd in commands)


def _fake_processes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """spawn / readiness / stop replaced by recorders; returns the log of what happened, in order."""
    events: list[tuple[str, str]] = []

    def spawn(name: str, cmd: list[str], *, env: dict[str, str], **_kw: object) -> dict[str, object]:
        events.append(("spawn", name))
        return {"pid": 10**7 + len(events), "start": "1", "cmd": cmd, "log": "", "env": env}

    def wait_until(_check: object, _record: object, what: str, _timeout: float = 0) -> None:
        events.append(("ready", what))

    def stop_recorded(state: dict[str, object], names: set[str] | None = None) -> list[str]:
        procs = state["processes"]
        assert isinstance(procs, dict) and names is not None
        for name in sorted(names):
            events.append(("stop", name))
            procs.pop(name)
        return sorted(names)

    monkeypatch.setattr(stack_state, "spawn", spawn)
    monkeypatch.setattr(stack_state, "wait_until", wait_until)
    monkeypatch.setattr(stack_state, "stop_recorded", stop_recorded)
    monkeypatch.setattr(stack_state, "port_is_free", lambda _port: True)
    monkeypatch.setattr(stack_state, "save_state", lambda _state: None)
    monkeypatch.delenv("STACK_PORT_OFFSET", raising=False)
    return events


def test_order_starts_once_the_providers_and_coupon_are_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _fake_processes(monkeypatch)
    state: dict[str, dict[str, dict[str, object]]] = {"processes": {}}
    overrides = {"order": {"ORDER_PAYMENT_DEADLINE_SECONDS": "20"}}
    started = replicas.start_services(state, Backends(*BACKENDS), overrides)
    assert set(started) == {replica for spec in topology.SERVICES for replica, _port in spec.replicas()}
    for provider in ("paysim-1", "paysim-2", "coupon-1"):
        for order in ("order-1", "order-2"):
            assert events.index(("ready", provider)) < events.index(("spawn", order))
    assert {name for kind, name in events if kind == "ready"} == set(started), "every replica is waited for"
    procs = state["processes"]
    assert procs["order-1"]["env_overrides"] == {"ORDER_PAYMENT_DEADLINE_SECONDS": "20"}
    assert procs["paysim-1"]["env_overrides"] == {}
    env = procs["order-2"]["env"]
    assert isinstance(env, dict) and env["ORDER_PAYMENT_DEADLINE_SECONDS"] == "20"
    assert env["ORDER_PAYSIM_BACKUP_URL"] == "http://127.0.0.1:8115"
    assert env["ORDER_COUPON_URL"] == "http://127.0.0.1:8103"


def _running_stack(deadline: str | None) -> dict[str, dict[str, dict[str, object]]]:
    procs: dict[str, dict[str, object]] = {}
    for spec in topology.SERVICES:
        for replica, port in spec.replicas():
            overrides = {"ORDER_PAYMENT_DEADLINE_SECONDS": deadline} if spec.name == "order" and deadline else {}
            procs[replica] = {
                "pid": 1,
                "kind": "service",
                "port": port,
                "redis_url": BACKENDS[0],
                "database_url": BACKENDS[1],
                "env_overrides": overrides,
            }
    return {"processes": procs}


def test_demo_keeps_a_running_stack_and_up_restores_the_default_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _fake_processes(monkeypatch)
    monkeypatch.setattr(stack_state, "is_running", lambda _record: True)
    demo = {"order": {"ORDER_PAYMENT_DEADLINE_SECONDS": "20"}}
    # `make up` runs with the default deadline; a demo on top of it starts nothing and keeps it.
    assert replicas.start_services(_running_stack(None), Backends(*BACKENDS), demo, restart_changed=False) == []
    assert events == []
    # `make up` after `demo --keep-running`: the order replicas go back to the default deadline.
    state = _running_stack("20")
    assert replicas.start_services(state, Backends(*BACKENDS)) == ["order-1", "order-2"]
    assert ("stop", "order-1") in events and ("stop", "paysim-1") not in events
    assert state["processes"]["order-1"]["env_overrides"] == {}
