"""CPU accounting per process during a wrk run: the servers (and their workers), wrk and Redis, each apart.

The servers' figures come from /proc (user + system ticks of each started process and its children), wrk's
from this process's finished children (wrk runs as one), and Redis's from its own `INFO cpu`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError


def redis_cpu_seconds(url: str) -> float | None:
    """CPU time Redis has used so far (user + sys), or None if it cannot tell."""
    client = Redis.from_url(url, socket_connect_timeout=2, decode_responses=True)
    try:
        info: dict[str, Any] = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except (OSError, RedisError, KeyError, ValueError):
        return None
    finally:
        client.close()


def _proc_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_pids(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def processes_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by the processes `pids` and their children (uvicorn's workers)."""
    every = set(pids)
    for pid in pids:
        every.update(_child_pids(pid))
    return sum(_proc_cpu_seconds(p) for p in every)


class CpuProbe:
    """CPU seconds used by the servers (and their workers), wrk (our children) and Redis during a run.

    `groups` adds other started processes, each group reported under its own name (the gateway beside flashsale).
    """

    def __init__(self, server_pids: list[int], redis_url: str, groups: dict[str, list[int]] | None = None) -> None:
        self.server_pids = server_pids
        self.redis_url = redis_url
        self.groups = groups or {}

    def sample(self) -> dict[str, float | None]:
        """Cumulative CPU seconds now."""
        children = os.times()
        out: dict[str, float | None] = {
            "servers": processes_cpu_seconds(self.server_pids),
            "wrk": children.children_user + children.children_system,
            "redis": redis_cpu_seconds(self.redis_url),
        }
        for name, pids in self.groups.items():
            out[name] = processes_cpu_seconds(pids)
        return out

    def delta(self, before: dict[str, float | None]) -> dict[str, float | None]:
        """CPU seconds used since `before`."""
        after = self.sample()
        out: dict[str, float | None] = {}
        for key, value in after.items():
            start = before.get(key)
            out[key] = None if value is None or start is None else round(value - start, 2)
        return out
