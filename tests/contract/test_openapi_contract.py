"""Each service's OpenAPI document holds for what the service answers: schemathesis generates requests from it
(valid and invalid ones, fixed seed, bounded examples, every check) and sends them through the real gateway
with a valid bearer token, then checks that no answer is a server error, and that every status, content type,
header and body is the one the document declares."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, admin_headers, customer_headers

SEED = 20_260_101
MAX_EXAMPLES = 4
# Every check runs (`checks all`); a check's expectations are widened only where the APIs answer by design.
CONFIG = """
[checks.positive_data_acceptance]
# Schema-valid requests the services refuse on purpose, with a documented problem: 402 PAYMENT_DECLINED,
# 423 SALE_NOT_LIVE / CLAIM_WINDOW_CLOSED (the state of the sale or template, not the request), and 422 for
# rules JSON Schema cannot state: fields valid one by one but not together (ends_at before starts_at, price
# above original_price, a PATCH that sets nothing), and ids schemathesis links from one answer into another
# path that are null there. 400, 405, 413, 415 and server errors still fail the check.
expected-statuses = ["2xx", "3xx", "401", "402", "403", "404", "409", "422", "423", "429", "5xx"]

[checks.negative_data_rejection]
# A body past the size limit is refused before it is parsed, with 413 PAYLOAD_TOO_LARGE: a rejection too.
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"""


@dataclass(frozen=True)
class Run:
    """One schemathesis run: a service's operations, through the gateway or to the provider itself."""

    service: str
    admin: bool

    @property
    def name(self) -> str:
        return f"{self.service}-{'admin' if self.admin else 'storefront'}"


# In this order: the payment provider's admin run (fault injection) comes after every run that pays.
RUNS = [
    Run(service, admin)
    for service in ("flashsale", "inventory", "coupon", "order", "paysim")
    for admin in (False, True)
]


def schemathesis_command(schema_url: str, run: Run, config: Path) -> list[str]:
    """The CLI call of one run; the document's own `servers` entry is the base URL requests go to."""
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", schema_url]
    command += ["--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES)]
    command += ["--workers", "1", "--request-timeout", "15", "--suppress-health-check", "all"]
    command += ["--no-shrink", "--output-truncate", "false", "--warnings", "off"]
    headers = admin_headers("contract-ops") if run.admin else customer_headers("contract-buyer")
    command += ["--header", f"Authorization: {headers['Authorization']}"]
    command += ["--include-path-regex" if run.admin else "--exclude-path-regex", "^/admin/"]
    return command


def failures_of(report: str) -> str:
    """The run's report from its failures on, each line cut short (a generated body can be megabytes long)."""
    start = report.find("FAILURES")
    return "\n".join(line[:400] for line in report[start if start >= 0 else 0 :].splitlines())


@pytest.mark.parametrize("run", RUNS, ids=lambda run: run.name)
async def test_every_answer_of_the_service_is_the_one_its_openapi_document_declares(
    stack: dict[str, str], run: Run, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    base = stack["paysim"] if run.service == "paysim" else f"{stack['gateway']}/api/{run.service}"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract.hooks", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    done = await asyncio.to_thread(
        subprocess.run,
        schemathesis_command(f"{base}/openapi.json", run, config),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if run.service == "paysim" and run.admin:
        # Whatever faults the run injected, the providers other tests pay with are healthy again.
        async with httpx.AsyncClient() as client:
            await client.delete(f"{stack['paysim']}/admin/faults", headers=admin_headers())
    assert done.returncode == 0, failures_of(done.stdout) + done.stderr[-5000:]
