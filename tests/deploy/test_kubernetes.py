"""The Kubernetes manifests (deploy/k8s/): every overlay renders, every object is valid for the Kubernetes API,
every pod is hardened, probed, sized and shuts down gracefully, and the services, their environment and their
call graph agree with the launcher's topology (deploy/topology.py) and the settings each service reads."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from deploy import observability_files, topology

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("staging", "staging-redis-cluster", "production")
KUBERNETES_VERSION = "1.31"  # the oldest minor the manifests promise to apply on (docs/deploy.md)
GRACEFUL_SHUTDOWN = 10  # uvicorn --timeout-graceful-shutdown, as the launcher runs every replica
WORKLOADS = ("Deployment", "StatefulSet", "Job")
SECRETS = {"platform-secrets", "platform-databases", "postgres-auth"}
# Each launcher replica's Kubernetes Service: one Service per service, one per payment provider.
PROVIDER_SERVICES = {"paysim-1": "paysim-primary", "paysim-2": "paysim-backup"}


def kustomize(path: Path) -> str:
    """`kubectl kustomize <path>` (or a standalone kustomize) output."""
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    else:
        pytest.fail("rendering the manifests needs kubectl (or kustomize) on PATH; .ci/run installs it")
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """Every object the overlay renders."""
    return tuple(doc for doc in yaml.safe_load_all(kustomize(K8S / "overlays" / overlay)) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    """The overlay's objects of one kind, by name."""
    return {o["metadata"]["name"]: o for o in rendered(overlay) if o["kind"] == kind}


def app_deployments(overlay: str) -> dict[str, dict[str, Any]]:
    """The platform's own service Deployments (label app.kubernetes.io/component=server)."""
    return {
        name: d
        for name, d in objects(overlay, "Deployment").items()
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "server"
    }


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def server(deployment: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_spec(deployment)["containers"] if c["name"] == "server")


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def service_of_replica(replica: str) -> str:
    """The Kubernetes Service that stands for a launcher replica (inventory-1 -> inventory)."""
    return PROVIDER_SERVICES.get(replica) or replica.rsplit("-", 1)[0]


def deployment_of(spec: topology.ServiceSpec) -> list[tuple[str, str, int]]:
    """(Deployment name, launcher replica, port) of each Deployment a launcher service becomes."""
    if spec.name == "paysim":
        return [(PROVIDER_SERVICES[replica], replica, port) for replica, port in spec.replicas()]
    replica, port = spec.replicas()[0]
    return [(spec.name, replica, port)]


def settings_env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {str(choice) for choice in alias.choices}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def settings_class(name: str) -> type[BaseSettings]:
    module = importlib.import_module("gateway.config" if name == "gateway" else f"services.{name}.config")
    own = [
        value
        for key, value in vars(module).items()
        if key.endswith("Settings") and isinstance(value, type) and value.__module__ == module.__name__
    ]
    assert len(own) == 1, f"{name}: expected one settings class, found {own}"
    return own[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_for_the_kubernetes_api(overlay: str) -> None:
    problems = []
    for obj in rendered(overlay):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {str(exc).splitlines()[0]}")
    assert not problems, "\n".join(problems)
    assert {o["metadata"].get("namespace") for o in rendered(overlay) if o["kind"] != "Namespace"} == {
        objects(overlay, "Namespace").popitem()[0]
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_read_only_unprivileged_and_sized(overlay: str) -> None:
    for obj in rendered(overlay):
        if obj["kind"] not in WORKLOADS:
            continue
        pod = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False or obj["metadata"]["name"] == "prometheus", where
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            at = f"{where} container {container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, at
            assert context["readOnlyRootFilesystem"] is True, at
            assert context.get("privileged", False) is False, at
            assert context["capabilities"]["drop"] == ["ALL"], at
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{at}: {kind}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_pod_is_probed_spread_and_drains_before_it_stops(overlay: str) -> None:
    deployments = app_deployments(overlay)
    assert {"inventory", "flashsale", "coupon", "order", "gateway"} <= set(deployments)
    for name, deployment in deployments.items():
        container, pod = server(deployment), pod_spec(deployment)
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": "http"}, name
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz/live", "port": "http"}, name
        assert [p["name"] for p in container["ports"]] == ["http"], name
        # Single-pod payment simulators keep payments in memory (base/paysim.yaml); every service runs 2+.
        assert deployment["spec"]["replicas"] >= (1 if name.startswith("paysim-") else 2), name
        spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
        node = spread["kubernetes.io/hostname"]
        assert node["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}, name
        assert node["whenUnsatisfiable"] == "DoNotSchedule", name
        drain = container["lifecycle"]["preStop"]["exec"]["command"]
        assert drain[0] == "sleep", name
        args = container["args"]
        assert args[args.index("--timeout-graceful-shutdown") + 1] == str(GRACEFUL_SHUTDOWN), name
        assert pod["terminationGracePeriodSeconds"] >= int(drain[1]) + GRACEFUL_SHUTDOWN + 5, name
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_launcher_service_runs_as_its_deployment_does_in_the_launcher(overlay: str) -> None:
    deployments = app_deployments(overlay)
    for spec in topology.SERVICES:
        for name, replica, port in deployment_of(spec):
            if overlay == "production" and spec.name == "paysim":
                assert name not in deployments, "production pays through real providers, not the simulator"
                continue
            container = server(deployments[name])
            expected = topology.uvicorn_command(spec, port)
            expected = expected[expected.index("uvicorn") :]
            expected[expected.index("--host") + 1] = "0.0.0.0"
            assert [*container["command"], *container["args"]] == expected, name
            assert container["ports"][0]["containerPort"] == port, name
            env = env_of(container)
            for key, value in spec.env_of(replica).items():
                if not key.startswith("GATEWAY_") or key == "GATEWAY_DEV_TOKENS":
                    assert env.get(key, {}).get("value") == value or key == "GATEWAY_DEV_TOKENS", f"{name}: {key}"
            assert "GATEWAY_DEV_TOKENS" not in env, "the dev token endpoint stays off in a cluster"
            service = objects(overlay, "Service")[name]
            assert service["spec"]["ports"][0]["port"] == port
            assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_link_call_and_pool_of_the_topology_points_at_its_service(overlay: str) -> None:
    deployments = app_deployments(overlay)
    for spec in topology.SERVICES:
        if spec.name == "paysim":
            continue
        env = env_of(server(deployments[spec.name]))
        for var, target in {**spec.links, **spec.calls}.items():
            value = env[var]["value"]
            if overlay == "production" and target in PROVIDER_SERVICES:
                assert value.startswith("https://"), f"{spec.name}: {var} must be a real provider over TLS"
                continue
            assert value == f"http://{service_of_replica(target)}:{topology.replica_port(target)}", var
        for var, pooled in spec.pools.items():
            assert env[var]["value"] == f"http://{pooled}:{topology.spec_named(pooled).ports[0]}", var


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_is_what_each_service_reads_and_secrets_come_from_secrets(overlay: str) -> None:
    settings = {
        name: objects(overlay, "ConfigMap")[name]["data"]
        for name in objects(overlay, "ConfigMap")
        if name.startswith("platform-settings")
    }
    shared = next(iter(settings.values()))
    assert shared["APP_ENV"] == "prod", "a cluster runs with production checks on"
    for name, deployment in app_deployments(overlay).items():
        service = "paysim" if name.startswith("paysim-") else name
        known = settings_env_names(settings_class(service)) | {"PYTHONDONTWRITEBYTECODE"}
        container = server(deployment)
        env = env_of(container)
        from_config = {key for ref in container.get("envFrom", []) for key in shared if "configMapRef" in ref}
        assert not (set(env) | from_config) - known, f"{name} sets variables it does not read"
        spec = topology.spec_named(service)
        if spec.database:
            assert env[f"{spec.env_prefix}DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "platform-databases"
        if service != "paysim":
            assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "platform-secrets", name
        for var, entry in env.items():
            if re.search(r"SECRET|PASSWORD|SIGNING_KEY|DATABASE_URL|REDIS_URL|PUBLIC_KEY", var):
                assert "value" not in entry, f"{name}: {var} must come from a Secret, not the manifest"
                assert entry["valueFrom"]["secretKeyRef"]["name"] in SECRETS, f"{name}: {var}"
    assert not objects(overlay, "Secret"), "no secret value is kept in the repository (docs/deploy.md)"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_run_once_per_release_and_pods_wait_for_them(overlay: str) -> None:
    images = {c["image"] for d in app_deployments(overlay).values() for c in pod_spec(d)["containers"]}
    assert len(images) == 1, f"one image for every service, set in one place: {images}"
    image = images.pop()
    name, _, tag = image.rpartition(":")
    assert tag and tag != "latest" and "/" in name, f"the image is pinned by tag: {image}"
    jobs = {n: j for n, j in objects(overlay, "Job").items() if n.startswith("migrate-")}
    assert list(jobs) == [f"migrate-{tag}"], "one migration Job per release, named for its tag"
    script = pod_spec(jobs[f"migrate-{tag}"])["containers"][0]["args"][0]
    deployments = app_deployments(overlay)
    for spec in topology.SERVICES:
        if spec.database is None:
            assert f"services.common.migrate {spec.name} " not in script
            continue
        assert f'python -m services.common.migrate {spec.name} "${spec.env_prefix}DATABASE_URL"' in script
        wait = next(c for c in pod_spec(deployments[spec.name])["initContainers"] if c["name"] == "wait-for-schema")
        assert wait["command"] == ["python", "-m", "services.common.migrate", "--wait", spec.name]
        assert wait["image"] == image


def test_production_keeps_every_service_up_through_disruptions_and_scales_for_a_crowd() -> None:
    budgets = objects("production", "PodDisruptionBudget")
    for name in app_deployments("production"):
        assert budgets[name]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert budgets[name]["spec"].get("minAvailable", 0) >= 1
    scalers = objects("production", "HorizontalPodAutoscaler")
    assert set(scalers) == {"gateway", "flashsale"}
    for name, hpa in scalers.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["minReplicas"] >= 2 and spec["maxReplicas"] > spec["minReplicas"]
        assert [m["resource"]["name"] for m in spec["metrics"]] == ["cpu"]
        up = spec["behavior"]["scaleUp"]
        assert up["stabilizationWindowSeconds"] == 0
        assert max(p["periodSeconds"] for p in up["policies"]) <= 15, "a flash crowd cannot wait a minute"
        assert app_deployments("production")[name]["spec"]["replicas"] >= spec["minReplicas"]


def test_production_network_policies_follow_the_call_graph() -> None:
    policies = objects("production", "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    gateway = policies["gateway-ingress"]["spec"]
    assert all("from" not in rule for rule in gateway["ingress"]), "only the gateway is open to the outside"
    callers: dict[str, set[str]] = {}
    for spec in topology.SERVICES:
        for target in [*spec.links.values(), *spec.calls.values()]:
            callers.setdefault(service_of_replica(target), set()).add(spec.name)
        for pooled in spec.pools.values():
            callers.setdefault(pooled, set()).add(spec.name)
    for callee, who in callers.items():
        if callee in PROVIDER_SERVICES.values():
            continue
        rules = policies[f"{callee}-ingress"]["spec"]["ingress"]
        allowed = {p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for r in rules for p in r["from"]}
        assert allowed == who, f"{callee} accepts {sorted(allowed)}, is called by {sorted(who)}"
        for caller in who:
            egress = policies[f"{caller}-egress"]["spec"]["egress"]
            reached = {p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for r in egress for p in r["to"]}
            assert callee in reached, f"{caller} may not reach {callee}"
    ingress = objects("production", "Ingress")["gateway"]["spec"]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "gateway", "port": {"name": "http"}}
    assert ingress["tls"], "production serves the shop over TLS"


def test_staging_runs_its_stores_prometheus_and_the_load_test_in_the_cluster() -> None:
    sets = objects("staging", "StatefulSet")
    assert {"postgres", "redis"} <= set(sets)
    job = objects("staging", "Job")["loadtest"]
    script = pod_spec(job)["containers"][0]["args"][0]
    for step in ("python -m loadtest.seed", "python -m locust -f loadtest/locustfile.py", "python -m loadtest.checker"):
        assert step in script, f"the in-cluster load test runs {step}"
    shape = objects("staging", "ConfigMap")["loadtest-shape"]["data"]
    assert 5 <= int(shape["LOADTEST_MULTIPLE"]) <= 10 and shape["LOADTEST_SHAPE"] == "flash"
    assert "prometheus" in objects("staging", "Deployment")


def test_the_redis_cluster_variant_runs_six_nodes_and_creates_the_cluster_once() -> None:
    redis = objects("staging-redis-cluster", "StatefulSet")["redis"]
    assert redis["spec"]["replicas"] == 6
    command = " ".join(pod_spec(redis)["containers"][0]["args"])
    assert "--cluster-enabled yes" in command and "--appendfsync everysec" in command
    assert objects("staging-redis-cluster", "Service")["redis"]["spec"]["clusterIP"] == "None"
    script = pod_spec(objects("staging-redis-cluster", "Job")["redis-create-cluster"])["containers"][0]["args"][0]
    assert "--cluster-replicas 1" in script and "cluster_state:ok" in script


MONITORS = {"prometheus": 9090, "alertmanager": 9093, "grafana": 3000}


def configmap_of(overlay: str, prefix: str) -> dict[str, str]:
    """The data of the overlay's generated ConfigMap named `prefix`-<hash>."""
    found = [cm for name, cm in objects(overlay, "ConfigMap").items() if name.rsplit("-", 1)[0] == prefix]
    assert len(found) == 1, prefix
    data: dict[str, str] = found[0]["data"]
    return data


def test_the_observability_component_copies_of_the_rules_and_grafana_files_equal_their_sources() -> None:
    assert observability_files.stale_copies() == [], "run `python -m deploy k8s-observability-files`"
    kustomization = yaml.safe_load((observability_files.COMPONENT / "kustomization.yaml").read_text())
    listed = {f for gen in kustomization["configMapGenerator"] for f in gen["files"] if f.startswith("files/")}
    copies = {str(p.relative_to(observability_files.COMPONENT)) for p in observability_files.expected_copies()}
    assert listed == copies, "every copied file is in a ConfigMap, and only those"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_loads_the_shipped_rules_and_alerts_through_alertmanager(overlay: str) -> None:
    rules = configmap_of(overlay, "prometheus-rules")
    assert rules == {p.name: p.read_text() for p in sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))}
    config = yaml.safe_load(configmap_of(overlay, "prometheus-config")["prometheus.yml"])
    assert config["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s"}, "production intervals"
    pod = pod_spec(objects(overlay, "Deployment")["prometheus"])
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["rules"]["configMap"]["name"].startswith("prometheus-rules-")
    assert config["rule_files"] == [f"{mounts['rules']}/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    relabel = {r["target_label"]: r for r in config["scrape_configs"][0]["relabel_configs"] if "target_label" in r}
    assert relabel["job"]["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    assert "replica" not in relabel, "the gateway's metrics carry their own `replica` label"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_monitoring_deployment_is_probed_and_serves_its_port(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    for name, port in MONITORS.items():
        container = pod_spec(deployments[name])["containers"][0]
        assert [p["containerPort"] for p in container["ports"]] == [port], name
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == "http", f"{name}: {probe}"
        service = objects(overlay, "Service")[name]
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert service["spec"]["ports"][0]["port"] == port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_alertmanager_reads_its_receivers_from_a_secret_and_grafana_its_admin_password(overlay: str) -> None:
    alertmanager = pod_spec(objects(overlay, "Deployment")["alertmanager"])
    config = next(v for v in alertmanager["volumes"] if v["name"] == "config")
    assert config == {"name": "config", "secret": {"secretName": "alertmanager-config"}}
    assert "://" not in yaml.safe_dump(alertmanager), "no webhook URL in the manifest"
    grafana = pod_spec(objects(overlay, "Deployment")["grafana"])
    container = grafana["containers"][0]
    env = env_of(container)
    assert env["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "grafana-admin",
        "key": "password",
    }
    assert env["PROMETHEUS_URL"]["value"] == "http://prometheus:9090"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v.get("configMap", {}).get("name", "") for v in grafana["volumes"]}
    provider = yaml.safe_load(configmap_of(overlay, "grafana-dashboard-providers")["flashsale.yml"])
    assert volumes[mounts[provider["providers"][0]["options"]["path"]]].startswith("grafana-dashboards-")
    assert volumes[mounts["/etc/grafana/provisioning/datasources"]].startswith("grafana-datasources-")
    dashboards = configmap_of(overlay, "grafana-dashboards")
    assert set(dashboards) == {p.name for p in (ROOT / "deploy/grafana/dashboards").glob("*.json")}
