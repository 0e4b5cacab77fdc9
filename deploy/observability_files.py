"""`python -m deploy k8s-observability-files`: the Kubernetes observability component's copies of the shipped
rule files, Grafana provisioning and dashboards.

kustomize reads only files inside a component's directory (its default load restrictor; `kubectl apply -k` and
GitOps tools run with it), so deploy/k8s/components/observability/files/ holds byte-for-byte copies of
deploy/prometheus/rules and deploy/grafana, written here and nowhere else. tests/deploy/test_kubernetes.py fails
when a copy differs from its source, lacks a file or keeps one the source no longer has (ADR 0042).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from deploy.state import ROOT

COMPONENT = ROOT / "deploy" / "k8s" / "components" / "observability"
COPIES = COMPONENT / "files"
# Source directory -> its copy under files/, with the file pattern copied.
SOURCES: dict[str, tuple[Path, str]] = {
    "rules": (ROOT / "deploy" / "prometheus" / "rules", "*.yml"),
    "grafana/provisioning/datasources": (ROOT / "deploy" / "grafana" / "provisioning" / "datasources", "*.yml"),
    "grafana/provisioning/dashboards": (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards", "*.yml"),
    "grafana/dashboards": (ROOT / "deploy" / "grafana" / "dashboards", "*.json"),
}


def expected_copies() -> dict[Path, bytes]:
    """Every file the component's files/ must hold, with its content."""
    return {
        COPIES / target / path.name: path.read_bytes()
        for target, (source, pattern) in SOURCES.items()
        for path in sorted(source.glob(pattern))
    }


def stale_copies() -> list[str]:
    """The copies that differ from their source, are missing, or have no source any more (paths under files/)."""
    wanted = expected_copies()
    present = {p for p in COPIES.rglob("*") if p.is_file()} if COPIES.exists() else set()
    wrong = [p for p, content in wanted.items() if not p.is_file() or p.read_bytes() != content]
    return sorted(str(p.relative_to(COPIES)) for p in [*wrong, *(present - set(wanted))])


def write_copies() -> list[str]:
    """Write files/ afresh from the sources; returns the files written (relative to files/)."""
    shutil.rmtree(COPIES, ignore_errors=True)
    written = []
    for path, content in expected_copies().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(str(path.relative_to(COPIES)))
    return written
