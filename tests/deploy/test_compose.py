"""docker-compose.yml and the Dockerfile describe the same stack as the launcher's topology (deploy/topology.py)."""

from __future__ import annotations

import importlib
import itertools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI

from deploy import topology
from deploy.alertmanager_config import DEFAULT_OUT

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE = "flashsale-platform:latest"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def command_of(service: dict[str, Any]) -> list[str]:
    """A service's command as a list of arguments."""
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def runs_uvicorn(service: dict[str, Any]) -> bool:
    """True for the app services: those whose command runs uvicorn."""
    return "uvicorn" in command_of(service)


APP_SERVICES = sorted(name for name, svc in SERVICES.items() if runs_uvicorn(svc))
REPLICAS = [(spec, replica, port) for spec in topology.SERVICES for replica, port in spec.replicas()]


def uvicorn_options(args: list[str]) -> tuple[str, dict[str, str | None]]:
    """(module:app, {option: value}) of a uvicorn command line (after the `uvicorn` word)."""
    args = args[args.index("uvicorn") + 1 :]
    target = next(a for a in args if not a.startswith("-"))
    options: dict[str, str | None] = {}
    rest = [a for a in args if a != target]
    i = 0
    while i < len(rest):
        if i + 1 < len(rest) and not rest[i + 1].startswith("-"):
            options[rest[i]] = rest[i + 1]
            i += 2
        else:
            options[rest[i]] = None
            i += 1
    return target, options


def test_compose_runs_backends_migrations_and_every_replica_of_the_launcher() -> None:
    expected = {"redis", "postgres", "migrate"} | {replica for _spec, replica, _port in REPLICAS}
    assert expected <= set(SERVICES), f"missing from docker-compose.yml: {sorted(expected - set(SERVICES))}"
    assert set(APP_SERVICES) == {replica for _spec, replica, _port in REPLICAS}
    assert len(APP_SERVICES) >= 2, "every service runs as at least 2 replicas"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_uvicorn_target_imports_as_a_fastapi_app(name: str) -> None:
    target, _options = uvicorn_options(command_of(SERVICES[name]))
    module_name, _, attribute = target.partition(":")
    assert attribute, f"{name}: uvicorn target {target!r} is not module:attribute"
    app = getattr(importlib.import_module(module_name), attribute)
    # Every service is a FastAPI app; the gateway is a plain ASGI callable in front of one.
    assert isinstance(app, FastAPI) or isinstance(getattr(app, "api", None), FastAPI), f"{name}: {target}"


@pytest.mark.parametrize(("spec", "replica", "port"), REPLICAS, ids=[r for _s, r, _p in REPLICAS])
def test_replica_agrees_with_the_launcher_table(spec: Any, replica: str, port: int) -> None:
    service = SERVICES[replica]
    target, options = uvicorn_options(command_of(service))
    assert target == spec.app
    assert options.get("--host") == "0.0.0.0", "inside a container the app must listen on every interface"
    assert options.get("--port") == str(port)
    assert f"{port}:{port}" in [str(p) for p in service.get("ports", [])], "the replica's port is published as is"
    env = service["environment"]
    assert env["REPLICA_ID"] == replica
    if spec.database is not None:
        url = env[f"{spec.env_prefix}DATABASE_URL"]
        assert url.startswith("postgresql+asyncpg://") and url.endswith(f"@postgres:5432/{spec.database}")
    else:
        assert f"{spec.env_prefix}DATABASE_URL" not in env, f"{replica} has no database"
    for key, value in spec.env_of(replica).items():
        assert str(env.get(key)) == value, f"{replica}: {key} differs from the launcher's per-replica env"


@pytest.mark.parametrize(("spec", "replica", "port"), REPLICAS, ids=[r for _s, r, _p in REPLICAS])
def test_replica_reaches_and_waits_for_the_replicas_it_links_to(spec: Any, replica: str, port: int) -> None:
    service = SERVICES[replica]
    env, depends = service["environment"], service["depends_on"]
    for var, target in spec.links.items():
        assert env[var] == f"http://{target}:{topology.replica_port(target)}", f"{replica}: {var} by service name"
        assert depends[target]["condition"] == "service_healthy", f"{replica} must wait for a healthy {target}"
    for var, target in spec.calls.items():
        assert env[var] == f"http://{target}:{topology.replica_port(target)}", f"{replica}: {var} by service name"
    for var, pooled in spec.pools.items():
        members = topology.spec_named(pooled).replicas()
        assert env[var] == ",".join(f"http://{name}:{port}" for name, port in members), f"{replica}: {var}"
    linked = set(spec.needs())
    app_deps = {name for name in depends if name in APP_SERVICES}
    assert app_deps == linked, f"{replica} waits for {sorted(app_deps)}, links to {sorted(linked)}"


def test_no_replica_waits_for_itself_through_others() -> None:
    def waits_for(name: str, seen: tuple[str, ...] = ()) -> None:
        assert name not in seen, f"depends_on cycle: {' -> '.join((*seen, name))}"
        for dep in SERVICES[name].get("depends_on", {}):
            waits_for(dep, (*seen, name))

    for name in SERVICES:
        waits_for(name)


def test_order_pays_through_both_providers_and_prices_through_coupon_1() -> None:
    for replica in ("order-1", "order-2"):
        env = SERVICES[replica]["environment"]
        assert env["ORDER_PAYSIM_PRIMARY_URL"] == "http://paysim-1:8105"
        assert env["ORDER_PAYSIM_BACKUP_URL"] == "http://paysim-2:8115"
        assert env["ORDER_COUPON_URL"] == "http://coupon-1:8103"
        assert SERVICES[replica]["depends_on"]["coupon-1"]["condition"] == "service_healthy"
        assert env["ORDER_DATABASE_URL"].endswith("@postgres:5432/orders")
    names = {SERVICES[r]["environment"]["PAYSIM_NAME"] for r in ("paysim-1", "paysim-2")}
    assert SERVICES["paysim-1"]["environment"]["PAYSIM_NAME"] == "primary"
    assert names == {"primary", "backup"}


def test_coupon_replicas_keep_their_own_database() -> None:
    for replica in ("coupon-1", "coupon-2"):
        service = SERVICES[replica]
        env = service["environment"]
        assert env["COUPON_DATABASE_URL"].endswith("@postgres:5432/coupons")
        assert env["COUPON_ORDER_URL"] == "http://order-1:8104"
        assert not {name for name in service["depends_on"] if name in APP_SERVICES}, f"{replica} waits for no service"
    script = " ".join(command_of(SERVICES["migrate"]))
    assert 'python -m services.common.migrate coupon "$${PG_SERVER}/coupons"' in script


def test_inventory_replicas_keep_their_own_database_and_wait_for_no_service() -> None:
    for replica, port in (("inventory-1", 8101), ("inventory-2", 8111)):
        service = SERVICES[replica]
        env = service["environment"]
        assert env["INVENTORY_DATABASE_URL"].endswith("@postgres:5432/inventory")
        assert env["REPLICA_ID"] == replica and f"{port}:{port}" in service["ports"]
        assert not {name for name in service["depends_on"] if name in APP_SERVICES}, f"{replica} waits for no service"
    script = " ".join(command_of(SERVICES["migrate"]))
    assert 'python -m services.common.migrate inventory "$${PG_SERVER}/inventory"' in script


@pytest.mark.parametrize(("spec", "replica", "port"), REPLICAS, ids=[r for _s, r, _p in REPLICAS])
def test_replica_runs_uvicorn_like_the_launcher(spec: Any, replica: str, port: int) -> None:
    _target, in_compose = uvicorn_options(command_of(SERVICES[replica]))
    _target, in_launcher = uvicorn_options(topology.uvicorn_command(spec, port))
    in_compose.pop("--host")
    in_launcher.pop("--host")
    assert in_compose == in_launcher


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_waits_for_healthy_backends_and_finished_migrations(name: str) -> None:
    depends = SERVICES[name]["depends_on"]
    assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a plain list"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_has_a_readiness_healthcheck_on_its_own_port(name: str) -> None:
    _target, options = uvicorn_options(command_of(SERVICES[name]))
    check = SERVICES[name]["healthcheck"]
    test = " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
    assert f"127.0.0.1:{options['--port']}/healthz/ready" in test
    assert not check.get("disable", False)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_environment(name: str) -> None:
    env = SERVICES[name]["environment"]
    assert env["APP_ENV"].startswith("${APP_ENV")
    assert env["REDIS_URL"] == "${REDIS_URL:-redis://redis:6379/0}", "the single Redis unless REDIS_URL names another"
    assert env["JWT_SECRET"].startswith("${JWT_SECRET:-"), "the secret comes from the environment"


def test_every_app_service_and_migrate_use_one_image_built_from_the_dockerfile() -> None:
    users = [*APP_SERVICES, "migrate"]
    assert {SERVICES[name].get("image") for name in users} == {IMAGE}
    builds = [SERVICES[name]["build"] for name in users if "build" in SERVICES[name]]
    assert builds, "some service must build the image"
    for build in builds:
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE


def test_redis_appends_every_write_and_fsyncs_every_second() -> None:
    redis = SERVICES["redis"]
    assert str(redis["image"]).startswith("redis:7")
    args = command_of(redis)
    pairs = dict(itertools.pairwise(args))
    assert pairs.get("--appendonly") == "yes"
    assert pairs.get("--appendfsync") == "everysec"
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]


def test_postgres_is_15_with_a_pg_isready_healthcheck() -> None:
    postgres = SERVICES["postgres"]
    assert str(postgres["image"]).startswith("postgres:15")
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (" ".join(test) if isinstance(test, list) else test)


def test_migrate_runs_once_for_every_database_after_postgres_is_healthy() -> None:
    migrate = SERVICES["migrate"]
    script = " ".join(command_of(migrate))
    for spec in topology.SERVICES:
        if spec.database is not None:
            line = f'python -m services.common.migrate {spec.name} "$${{PG_SERVER}}/{spec.database}"'
            assert line in script, f"no migration of {spec.name} into database {spec.database}"
        else:
            assert f"services.common.migrate {spec.name} " not in script, f"{spec.name} has no database"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert str(migrate.get("restart", "no")) == "no", "a one-shot job must not be restarted"


def test_launcher_table_has_unique_names_and_ports() -> None:
    replicas = [replica for _spec, replica, _port in REPLICAS]
    ports = [port for _spec, _replica, port in REPLICAS]
    assert len(set(replicas)) == len(replicas)
    assert len(set(ports)) == len(ports)
    assert all(len(spec.ports) >= 2 or spec.name == "gateway" for spec in topology.SERVICES)
    assert all(spec.env_prefix.isupper() and spec.env_prefix.endswith("_") for spec in topology.SERVICES)
    assert topology.spec_named("inventory").ports == (8101, 8111)
    assert topology.spec_named("flashsale").ports == (8102, 8112)
    assert topology.spec_named("order").ports == (8104, 8114)
    assert topology.spec_named("paysim").ports == (8105, 8115)
    assert topology.spec_named("coupon").ports == (8103, 8113)


def test_launcher_table_order_database_and_payment_providers() -> None:
    order, paysim = topology.spec_named("order"), topology.spec_named("paysim")
    assert (order.app, order.env_prefix, order.database) == ("services.order.main:app", "ORDER_", "orders")
    assert (paysim.app, paysim.env_prefix, paysim.database) == ("services.paysim.main:app", "PAYSIM_", None)
    assert [paysim.env_of(replica)["PAYSIM_NAME"] for replica, _port in paysim.replicas()] == ["primary", "backup"]
    assert order.links == {
        "ORDER_PAYSIM_PRIMARY_URL": "paysim-1",
        "ORDER_PAYSIM_BACKUP_URL": "paysim-2",
        "ORDER_COUPON_URL": "coupon-1",
    }


def test_launcher_starts_a_service_after_those_it_links_to() -> None:
    started: set[str] = set()
    for spec in topology.SERVICES:
        assert all(len(env) > 0 for env in spec.replica_env)
        for target in spec.links.values():
            assert target in started, f"{spec.name} links to {target}, which must start before it"
        started |= {replica for replica, _port in spec.replicas()}


def test_dockerfile_exposes_every_replica_port() -> None:
    exposed = {
        word for line in DOCKERFILE.read_text().splitlines() if line.startswith("EXPOSE ") for word in line.split()[1:]
    }
    assert {str(port) for _spec, _replica, port in REPLICAS} <= exposed


def test_dockerfile_builds_a_pinned_multi_stage_non_root_image_without_build_tools() -> None:
    text = DOCKERFILE.read_text().replace("\\\n", " ")  # continued lines as one instruction
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    instructions = [line for line in lines if not line.startswith("#")]
    base = next(line for line in instructions if line.startswith("ARG PYTHON_IMAGE="))
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", base), "one pinned Python release"
    stages = {line.split()[-1]: i for i, line in enumerate(instructions) if line.startswith("FROM ")}
    assert list(stages) == ["build", "runtime", "loadgenerator"]
    runtime = instructions[stages["runtime"] : stages["loadgenerator"]]
    assert runtime[0] == "FROM ${PYTHON_IMAGE} AS runtime"
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert not [line for line in runtime if line.startswith("RUN") and ("pip install" in line or "apt-get" in line)]
    assert any(line.startswith("HEALTHCHECK ") and "/healthz/live" in line for line in runtime)
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    build = "\n".join(instructions[stages["build"] : stages["runtime"]])
    assert "pip install" in build and "COPY services" in build


def test_redis_cluster_profile_runs_six_nodes_and_creates_the_cluster_once() -> None:
    nodes = {name: svc for name, svc in SERVICES.items() if name.startswith("redis-node-")}
    assert len(nodes) == 6
    for name, node in nodes.items():
        assert node["profiles"] == ["redis-cluster"], f"{name} starts only with its profile"
        args = dict(itertools.pairwise(command_of(node)))
        assert args["--cluster-enabled"] == "yes" and args["--cluster-announce-hostname"] == name
        assert args["--appendonly"] == "yes" and args["--appendfsync"] == "everysec"
    create = SERVICES["redis-cluster-create"]
    assert create["profiles"] == ["redis-cluster"] and set(create["depends_on"]) == set(nodes)
    script = " ".join(command_of(create))
    assert "--cluster-replicas 1" in script and "cluster_state:ok" in script, "created once, then left alone"


def test_loadgen_profile_runs_the_load_test_seed_crowd_and_checker_through_the_gateway() -> None:
    loadtest = SERVICES["loadtest"]
    assert loadtest["profiles"] == ["loadgen"]
    assert loadtest["build"]["target"] == "loadgenerator"
    assert loadtest["environment"]["LOADTEST_GATEWAY"] == f"http://gateway-1:{topology.replica_port('gateway-1')}"
    script = " ".join(command_of(loadtest))
    for step in ("python -m loadtest.seed", "python -m locust -f loadtest/locustfile.py", "python -m loadtest.checker"):
        assert step in script
    assert loadtest["depends_on"]["gateway-1"]["condition"] == "service_healthy"
    assert all("profiles" not in SERVICES[name] for name in APP_SERVICES), "the stack itself needs no profile"


def test_observability_profile_runs_prometheus_alertmanager_and_grafana_with_the_shipped_files() -> None:
    monitors = {"prometheus", "alertmanager", "grafana"}
    assert all(SERVICES[name]["profiles"] == ["observability"] for name in monitors)
    mounts = {name: {v.split(":")[1]: v.split(":")[0] for v in SERVICES[name]["volumes"]} for name in monitors}
    # Prometheus loads deploy/prometheus as shipped: its prometheus.yml and the rules/ beside it.
    assert mounts["prometheus"]["/etc/prometheus"] == "./deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in command_of(SERVICES["prometheus"])
    # Alertmanager reads the config `python -m deploy alertmanager-config` renders (the URLs stay in the env).
    rendered = "./" + str(DEFAULT_OUT.relative_to(ROOT))
    assert mounts["alertmanager"]["/etc/alertmanager/alertmanager.yml"] == rendered
    # Grafana: the provisioning, and the dashboards where its dashboard provider looks for them.
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/flashsale.yml").read_text())
    assert mounts["grafana"]["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert mounts["grafana"][provider["providers"][0]["options"]["path"]] == "./deploy/grafana/dashboards"
    grafana_env = SERVICES["grafana"]["environment"]
    assert grafana_env["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?"), "no default password"
    assert all("profiles" not in SERVICES[name] for name in APP_SERVICES), "the stack itself needs no profile"
