"""`python -m services.common.migrate --wait`: a pod's init container starts the service only once the
release's migration Job has brought its database to the code's head; it never migrates itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from services.common.migrate import current_revisions, head_revisions, upgrade, wait_for_head
from tests.conftest import ROOT, db_name_for, db_url_for, drop_database

SERVICE = "inventory"
BASE = "inventory_schema_wait"


def run_migrate(*args: str, wait_seconds: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MIGRATE_WAIT_SECONDS": str(wait_seconds)}
    return subprocess.run(
        [sys.executable, "-m", "services.common.migrate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_wait_returns_once_another_process_has_migrated_and_never_migrates_itself() -> None:
    url = db_url_for(BASE)
    await drop_database(db_name_for(BASE))

    assert not await wait_for_head(SERVICE, url, seconds=0.3, interval=0.1), "no database yet: not at head"
    assert await current_revisions(url) == set(), "waiting created nothing"

    waiting = asyncio.create_task(wait_for_head(SERVICE, url, seconds=60, interval=0.1))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await asyncio.to_thread(upgrade, SERVICE, url)  # the release's migration Job
    assert await asyncio.wait_for(waiting, 30)
    assert await current_revisions(url) == head_revisions(SERVICE, url)


async def test_the_command_exits_0_at_head_and_1_with_the_revision_it_waited_for() -> None:
    url = db_url_for(BASE)
    await drop_database(db_name_for(BASE))

    missing = await asyncio.to_thread(run_migrate, "--wait", SERVICE, url, wait_seconds=0.5)
    assert missing.returncode == 1
    (head,) = head_revisions(SERVICE, url)
    assert head in missing.stderr and "did not reach" in missing.stderr

    migrated = await asyncio.to_thread(run_migrate, SERVICE, url, wait_seconds=0)
    assert migrated.returncode == 0, migrated.stderr
    at_head = await asyncio.to_thread(run_migrate, "--wait", SERVICE, url, wait_seconds=5)
    assert at_head.returncode == 0, at_head.stderr
    await drop_database(db_name_for(BASE))
