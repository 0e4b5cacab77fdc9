"""The local launcher: its URLs and env file, `down` touching only what it started, private backends."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.deploy.launcher import stack

HAVE_PROC = Path("/proc/self/stat").exists()
HAVE_POSTGRES = bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stack_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A .stack/ of the test's own, so the developer's state and backends stay untouched."""
    base = Path(tempfile.mkdtemp(prefix="stack-test-"))
    base.chmod(0o755)  # as root, PostgreSQL runs as an unprivileged account that must reach its data directory
    directory = base / ".stack"
    paths = {
        "STACK_DIR": directory,
        "STATE_FILE": directory / "state.json",
        "LOCK_FILE": directory / "launcher.lock",
        "LOG_DIR": directory / "logs",
        "DEFAULT_ENV_FILE": directory / "backends.env",
    }
    for name, value in paths.items():
        monkeypatch.setattr(stack, name, value)
    yield directory
    shutil.rmtree(base, ignore_errors=True)


def test_server_url_is_asyncpg_on_the_postgres_database() -> None:
    assert (
        stack.server_database_url("postgresql://app:s3cret@db.internal:6543/flashsale")
        == "postgresql+asyncpg://app:s3cret@db.internal:6543/postgres"
    )


def test_each_service_gets_its_own_database_on_the_server() -> None:
    server = "postgresql+asyncpg://postgres@127.0.0.1:5440/postgres"
    assert stack.database_url_for(server, "flashsale") == "postgresql+asyncpg://postgres@127.0.0.1:5440/flashsale"


def test_env_file_reads_back_unchanged_in_a_shell(tmp_path: Path) -> None:
    backends = stack.Backends(
        "redis://:pa ss&word@127.0.0.1:6390/0", "postgresql+asyncpg://postgres@127.0.0.1:5440/postgres", "", ""
    )
    env_file = tmp_path / "backends.env"
    stack.write_env_file(env_file, backends)
    script = f'set -a && . "{env_file}" && set +a && printf "%s\\n%s\\n" "$REDIS_URL" "$DATABASE_URL"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env={})
    assert out.stdout.splitlines() == [backends.redis_url, backends.database_url]


def test_replica_env_points_the_service_at_its_own_database() -> None:
    spec = next(s for s in stack.SERVICES if s.name == "flashsale")
    backends = stack.Backends(
        "redis://127.0.0.1:6390/0", "postgresql+asyncpg://postgres@127.0.0.1:5440/postgres", "", ""
    )
    env = stack.service_env(spec, "flashsale-2", 8112, backends)
    assert env["FLASHSALE_DATABASE_URL"] == "postgresql+asyncpg://postgres@127.0.0.1:5440/flashsale"
    assert env["REDIS_URL"] == "redis://127.0.0.1:6390/0"
    assert env["REPLICA_ID"] == "flashsale-2"
    assert env["APP_ENV"] == "dev"


@pytest.mark.skipif(not HAVE_PROC, reason="process identity by start time needs /proc")
def test_down_leaves_alone_a_process_that_took_a_recorded_pid(stack_dir: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # The recorded process is gone and the kernel gave its pid to another one (a different start time).
        record = {"pid": stranger.pid, "start": "1", "kind": "service", "log": ""}
        stack.save_state({"processes": {"flashsale-1": record}})
        assert stack.stop_recorded(stack.load_state()) == ["flashsale-1"]
        assert stranger.poll() is None, "down signalled a process it did not start"
        assert not stack.STATE_FILE.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_down_stops_what_it_started(stack_dir: Path) -> None:
    record = stack.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ))
    record["kind"] = "service"
    stack.save_state({"processes": {"sleeper": record}})
    assert stack.is_running(record)
    assert stack.stop_recorded(stack.load_state()) == ["sleeper"]
    assert not stack.is_running(record)
    assert not stack.STATE_FILE.exists()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server on PATH")
def test_private_redis_appends_with_everysec_fsync_and_down_stops_it(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "PRIVATE_REDIS_PORT", free_port())
    try:
        url = stack.start_private_redis(stack.load_state(), embedded=False)
        record = stack.load_state()["processes"]["redis"]
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert client.config_get("dir")["dir"] == str(stack_dir / "redis")
        finally:
            client.close()
    finally:
        stack.stop_recorded(stack.load_state())
    assert not stack.is_running(record)
    assert not stack.redis_answers(url)


@pytest.mark.skipif(not HAVE_POSTGRES, reason="no PostgreSQL binaries on this machine")
def test_private_postgres_trusts_the_postgres_user_and_down_stops_it(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "PRIVATE_POSTGRES_PORT", free_port())
    try:
        url = stack.start_private_postgres(stack.load_state(), embedded=False)
        record = stack.load_state()["processes"]["postgres"]
        assert url.startswith("postgresql+asyncpg://postgres@127.0.0.1:") and url.endswith("/postgres")
        assert stack.postgres_answers(url)
        assert Path(record["data_dir"]).is_relative_to(stack_dir)
    finally:
        stack.stop_recorded(stack.load_state())
    assert not stack.is_running(record)
    assert not stack.postgres_answers(url)


BACKENDS = ("redis://127.0.0.1:6390/0", "postgresql+asyncpg://postgres@127.0.0.1:5440/postgres", "", "")


def test_order_replica_env_links_providers_and_coupon_respecting_the_port_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STACK_PORT_OFFSET", "1000")
    spec = stack.spec_named("order")
    env = stack.service_env(spec, "order-1", 9104, stack.Backends(*BACKENDS))
    assert env["ORDER_DATABASE_URL"] == "postgresql+asyncpg://postgres@127.0.0.1:5440/orders"
    assert env["ORDER_PAYSIM_PRIMARY_URL"] == "http://127.0.0.1:9105"
    assert env["ORDER_PAYSIM_BACKUP_URL"] == "http://127.0.0.1:9115"
    assert env["ORDER_COUPON_URL"] == "http://127.0.0.1:9103"
    assert env["REPLICA_ID"] == "order-1"


def test_payment_deadline_is_the_service_default_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDER_PAYMENT_DEADLINE_SECONDS", raising=False)
    spec = stack.spec_named("order")
    plain = stack.service_env(spec, "order-2", 8114, stack.Backends(*BACKENDS))
    assert "ORDER_PAYMENT_DEADLINE_SECONDS" not in plain, "`up` keeps the service's own default (900 s)"
    demo = stack.service_env(spec, "order-2", 8114, stack.Backends(*BACKENDS), {"ORDER_PAYMENT_DEADLINE_SECONDS": "20"})
    assert demo["ORDER_PAYMENT_DEADLINE_SECONDS"] == "20"


def test_paysim_replicas_are_primary_and_backup_without_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYSIM_DATABASE_URL", raising=False)
    spec = stack.spec_named("paysim")
    names = []
    for replica, port in spec.replicas():
        env = stack.service_env(spec, replica, port, stack.Backends(*BACKENDS))
        assert "PAYSIM_DATABASE_URL" not in env
        assert env["REPLICA_ID"] == replica
        names.append(env["PAYSIM_NAME"])
    assert names == ["primary", "backup"]


def test_coupon_replicas_use_the_coupons_database_and_start_before_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_PORT_OFFSET", "1000")
    spec = stack.spec_named("coupon")
    assert (spec.app, spec.env_prefix, spec.database, spec.ports) == (
        "services.coupon.main:app",
        "COUPON_",
        "coupons",
        (8103, 8113),
    )
    for replica, port in spec.replicas(1000):
        env = stack.service_env(spec, replica, port, stack.Backends(*BACKENDS))
        assert env["COUPON_DATABASE_URL"] == "postgresql+asyncpg://postgres@127.0.0.1:5440/coupons"
        assert env["REDIS_URL"] == BACKENDS[0]
        assert env["COUPON_PORT"] == str(port) and env["REPLICA_ID"] == replica
        assert env["COUPON_ORDER_URL"] == "http://127.0.0.1:9104", "compensation asks order-1"
    names = [s.name for s in stack.SERVICES]
    assert names.index("coupon") < names.index("order"), "order prices its orders through coupon"


def test_inventory_replicas_use_their_own_database_and_start_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_PORT_OFFSET", "1000")
    spec = stack.spec_named("inventory")
    assert (spec.app, spec.env_prefix, spec.database, spec.ports) == (
        "services.inventory.main:app",
        "INVENTORY_",
        "inventory",
        (8101, 8111),
    )
    assert spec.links == {} and spec.calls == {}
    for replica, port in spec.replicas(1000):
        env = stack.service_env(spec, replica, port, stack.Backends(*BACKENDS))
        assert env["INVENTORY_DATABASE_URL"] == "postgresql+asyncpg://postgres@127.0.0.1:5440/inventory"
        assert env["REDIS_URL"] == BACKENDS[0]
        assert env["INVENTORY_PORT"] == str(port) and env["REPLICA_ID"] == replica
    assert stack.SERVICES[0] is spec, "nothing depends on inventory yet: it starts first"


class _StockAnswer:
    def __init__(self, body: object, status_code: int = 200) -> None:
        self.status_code, self._body, self.text = status_code, body, str(body)

    def json(self) -> object:
        return self._body


class _FakeInventory:
    """An inventory admin API in memory, as flashsale's settlement left it: one SKU, one allocation."""

    def __init__(self, *, sold: int, returned: int, recon_ok: bool = True) -> None:
        self.calls: list[tuple[str, str]] = []
        self.recon_ok = recon_ok
        self.allocation = {"allocated": 200, "sold": sold, "returned": returned}
        self.sku = {"on_hand": 1000, "available": 800 + returned, "allocated": 200 - sold - returned, "held": 0}
        self.sku["sold"] = sold

    def get(self, url: str, headers: dict[str, str]) -> _StockAnswer:
        self.calls.append(("GET", url))
        if url.endswith("/admin/reconciliation"):
            drift = [] if self.recon_ok else ["DEMO-x: available is 1, the ledger says 2"]
            return _StockAnswer({"ok": self.recon_ok, "skus": [{"sku": "DEMO-x"}], "drift": drift})
        if "/admin/allocations/" in url:
            a = self.allocation
            return _StockAnswer({**a, "outstanding": a["allocated"] - a["sold"] - a["returned"]})
        return _StockAnswer(self.sku)


def _inventory_demo(fake: _FakeInventory, sold: int) -> tuple[list[str], list[str]]:
    stock = stack.DemoStock(sku="DEMO-x", sale_id=7, allocated=200)
    admin = {"authorization": "Bearer x"}
    return stack.inventory_summary(fake, bases=["http://i1", "http://i2"], admin=admin, stock=stock, sold=sold, run="r")


def test_demo_checks_the_settled_allocation_and_the_warehouse_counters() -> None:
    fake = _FakeInventory(sold=130, returned=70)
    lines, problems = _inventory_demo(fake, sold=130)
    assert problems == []
    assert ("GET", "http://i1/admin/allocations/7/DEMO-x") in fake.calls
    assert any("reconciliation    ok" in line for line in lines)
    assert any("sold 130, returned 70" in line for line in lines)


def test_demo_fails_when_the_sale_was_not_settled_with_the_warehouse() -> None:
    _lines, problems = _inventory_demo(_FakeInventory(sold=130, returned=0), sold=130)  # unsold units not back
    assert any("settled as (sold, returned, outstanding) (130, 0, 70)" in p for p in problems)
    assert any("inventory counters" in p for p in problems)


def test_demo_fails_when_the_inventory_reconciliation_is_not_ok() -> None:
    lines, problems = _inventory_demo(_FakeInventory(sold=200, returned=0, recon_ok=False), sold=200)
    assert any("reconciliation is not ok" in p for p in problems)
    assert any("NOT ok" in line for line in lines)


def test_replica_env_needs_one_entry_per_port() -> None:
    with pytest.raises(ValueError, match="one entry per port"):
        stack.ServiceSpec("x", "x:app", (1, 2), "X_", None, replica_env=({"A": "1"},))


def test_migrations_cover_every_database(monkeypatch: pytest.MonkeyPatch, stack_dir: Path) -> None:
    commands: list[list[str]] = []

    def fake_run(cmd: list[str], **_kwargs: object) -> subprocess.CompletedProcess[bytes]:
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(stack.subprocess, "run", fake_run)
    stack.run_migrations(stack.Backends(*BACKENDS))
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

    monkeypatch.setattr(stack, "spawn", spawn)
    monkeypatch.setattr(stack, "_wait_until", wait_until)
    monkeypatch.setattr(stack, "stop_recorded", stop_recorded)
    monkeypatch.setattr(stack, "port_is_free", lambda _port: True)
    monkeypatch.setattr(stack, "save_state", lambda _state: None)
    monkeypatch.delenv("STACK_PORT_OFFSET", raising=False)
    return events


def test_order_starts_once_the_providers_and_coupon_are_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _fake_processes(monkeypatch)
    state: dict[str, dict[str, dict[str, object]]] = {"processes": {}}
    overrides = {"order": {"ORDER_PAYMENT_DEADLINE_SECONDS": "20"}}
    started = stack.start_services(state, stack.Backends(*BACKENDS), overrides)
    assert set(started) == {replica for spec in stack.SERVICES for replica, _port in spec.replicas()}
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
    for spec in stack.SERVICES:
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
    monkeypatch.setattr(stack, "is_running", lambda _record: True)
    demo = {"order": {"ORDER_PAYMENT_DEADLINE_SECONDS": "20"}}
    # `make up` runs with the default deadline; a demo on top of it starts nothing and keeps it.
    assert stack.start_services(_running_stack(None), stack.Backends(*BACKENDS), demo, restart_changed=False) == []
    assert events == []
    # `make up` after `demo --keep-running`: the order replicas go back to the default deadline.
    state = _running_stack("20")
    assert stack.start_services(state, stack.Backends(*BACKENDS)) == ["order-1", "order-2"]
    assert ("stop", "order-1") in events and ("stop", "paysim-1") not in events
    assert state["processes"]["order-1"]["env_overrides"] == {}


def test_down_stops_order_before_the_providers_it_calls_and_backends_last(stack_dir: Path) -> None:
    gone = {"pid": 2**22 + 12345, "start": "1", "log": ""}  # no such process: each stop is a no-op
    names = ["flashsale-1", "order-1", "coupon-2", "inventory-1", "order-2", "paysim-1", "coupon-1", "paysim-2"]
    names += ["inventory-2", "redis"]
    procs = {name: {**gone, "kind": "backend" if name == "redis" else "service"} for name in names}
    assert stack.stop_recorded({"processes": procs}) == [
        "order-2",
        "order-1",
        "coupon-2",
        "coupon-1",
        "paysim-2",
        "paysim-1",
        "flashsale-1",
        "inventory-2",
        "inventory-1",
        "redis",
    ]


def test_command_line_deadline_and_fault_flags() -> None:
    assert stack.parse_args(["up"]).payment_deadline is None
    assert stack.parse_args(["up", "--payment-deadline", "60"]).payment_deadline == 60
    demo = stack.parse_args(["demo"])
    assert demo.payment_deadline == stack.DEMO_PAYMENT_DEADLINE == 20
    assert demo.fail_primary is False and demo.pay_share == 0.7
    assert stack.parse_args(["demo", "--fail-primary"]).fail_primary is True
    with pytest.raises(SystemExit):
        stack.parse_args(["up", "--payment-deadline", "0"])


def test_demo_coupon_template_is_valid_and_scoped_to_the_demo_sale() -> None:
    from services.coupon.pricing import validate_rule
    from services.coupon.schemas import TemplateCreate
    from services.coupon.service import rule_of

    body = stack.coupon_template_body(42, 250)
    template = TemplateCreate.model_validate(body)  # what POST /admin/templates accepts
    assert validate_rule(rule_of(template)) == []
    assert (template.scope, template.scope_sales, template.total_quantity, template.per_user_limit) == (
        "sales",
        [42],
        250,
        1,
    )
    # One demo unit earns the first tier, two units the second; less earns nothing.
    assert stack._tier_discount(stack.DEMO_PRICE - 1) == 0
    assert 0 < stack._tier_discount(stack.DEMO_PRICE) < stack._tier_discount(2 * stack.DEMO_PRICE) < stack.DEMO_PRICE


def test_demo_coupon_claimers_are_spread_over_the_crowd() -> None:
    claimers = stack._spread(1000, 300)
    assert len(set(claimers)) == 300 and claimers[0] == 0 and max(claimers) < 1000
    assert sum(1 for i in claimers if i < 100) in range(29, 32), "some of the first buyers (who get stock) hold one"
    assert stack._spread(10, 300) == list(range(10))
    demo = stack.parse_args(["demo"])
    assert (demo.coupon_users, demo.coupons) == (300, 250)
    assert stack.parse_args(["demo", "--coupon-users", "0"]).coupon_users == 0


class _Answer:
    def __init__(self, body: object) -> None:
        self.status_code, self.body, self.text = 200, body, str(body)

    def json(self) -> object:
        return self.body


def _coupon_outcome(stats: dict[str, int], wallet: list[str]) -> tuple[list[str], list[str]]:
    """coupon_summary over a paid and an expired order that used coupons c1 / c2, against a fake coupon service."""

    class Client:
        def get(self, url: str, **_kw: object) -> _Answer:
            if url.endswith("/stats"):
                return _Answer({"total_quantity": 2, "claimed": 2, "in_wallets": 2, **stats})
            return _Answer([{"coupon_id": c} for c in wallet])

    def order(rid: str, state: str, coupon: str) -> dict[str, object]:
        discount = stack._tier_discount(stack.DEMO_PRICE)
        applied = {"coupon_id": coupon, "amount": discount}
        return {
            "id": f"o-{rid}",
            "reservation_id": rid,
            "state": state,
            "subtotal": stack.DEMO_PRICE,
            "discount": discount,
            "total": stack.DEMO_PRICE - discount,
            "coupons": {"discounts": [applied], "rejections": []},
        }

    claims = stack.Claims(template={"id": 1, "total_quantity": 2}, claimers=2, coupons={0: "c1", 1: "c2"})
    claims.replayed_same = 2
    claims.second["CLAIM_LIMIT_REACHED"] = 2
    burst = stack.BurstResult(reservations={"r1": (0, 1), "r2": (1, 1)}, coupon_of={"r1": "c1", "r2": "c2"})
    paid, expired = order("r1", "paid", "c1"), order("r2", "expired", "c2")
    gmv = stack.DEMO_PRICE - stack._tier_discount(stack.DEMO_PRICE)
    settled = stack.Settled(
        {"gmv": gmv}, {}, 1, {"expired": 1}, 1, 20, 0, False, {"paid": [paid], "expired": [expired]}
    )
    return stack.coupon_summary(
        Client(), bases=["http://c"], admin={}, tokens=["t0", "t1"], claims=claims, burst=burst, settled=settled
    )


def test_demo_checks_used_coupons_against_paid_orders_and_freed_ones_in_wallets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stack, "COUPON_SETTLE_SECONDS", 0)
    monkeypatch.setattr(stack.time, "sleep", lambda _s: None)
    discount = stack._tier_discount(stack.DEMO_PRICE)
    good = {"locked": 0, "used": 1, "discount_given": discount}
    lines, problems = _coupon_outcome(good, ["c2"])
    assert problems == [] and any("1 of 1 coupons of unpaid orders" in line for line in lines)
    _lines, problems = _coupon_outcome({**good, "locked": 1, "used": 0, "discount_given": 0}, [])
    assert any("still locked" in p for p in problems)
    assert any("0 coupons used; 1 paid orders carry one" in p for p in problems)
    assert any("only 0 of the 1 coupons of unpaid orders" in p for p in problems)
