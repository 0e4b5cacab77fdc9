"""The container image's build context: everything the Dockerfile copies is sent, and nothing else."""

from __future__ import annotations

import fnmatch
import re

from tests.conftest import ROOT


def _copied_sources() -> list[str]:
    """Sources of the Dockerfile's COPY lines that read the build context (not another stage)."""
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from=") for w in words):
            continue
        sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def _sent(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore lets `path` into the context: the last pattern that matches it decides."""
    sent = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, glob) or path.startswith(glob + "/"):
            sent = negated
    return sent


def _patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_path_the_dockerfile_copies_is_in_the_build_context() -> None:
    sources = _copied_sources()
    assert {"services", "gateway", "deploy", "loadtest", "pyproject.toml"} <= {s.rstrip("/") for s in sources}
    patterns = _patterns()
    left_out = [s for s in sources if not _sent(s.rstrip("/"), patterns)]
    assert left_out == [], f".dockerignore keeps {left_out} out of the context the Dockerfile copies them from"
    for source in sources:
        assert (ROOT / source).exists(), source


def test_the_build_context_leaves_out_tests_results_and_local_state() -> None:
    patterns = _patterns()
    for path in ("tests", ".venv", ".stack", ".git", "loadtest/results/run.json", "docs"):
        assert not _sent(path, patterns), path
    assert re.search(r"^\*$", (ROOT / ".dockerignore").read_text(), re.M), "the context starts from nothing"
