"""The command-line options every wrk benchmark takes, and the load they describe."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Options:
    """Command-line options."""

    setup: str
    compare_setups: bool
    duration: int
    warmup: int
    connections: int
    threads: int
    users: int
    redis_db: int
    database: str
    user_rate: float | None
    output: Path
    strict: bool
    rounds: int

    @classmethod
    def from_arguments(
        cls,
        a: argparse.Namespace,
        *,
        database: str,
        output: Path,
        setup: str = "reuseport",
        compare_setups: bool = False,
        user_rate: float | None = None,
        strict: bool = False,
        rounds: int = 1,
    ) -> Options:
        """Options with the load (add_load_arguments) and the Redis DB taken from parsed arguments `a`."""
        return cls(
            setup=setup,
            compare_setups=compare_setups,
            duration=a.duration,
            warmup=a.warmup,
            connections=a.connections,
            threads=a.threads,
            users=a.users,
            redis_db=a.redis_db,
            database=database,
            user_rate=user_rate,
            output=output,
            strict=strict,
            rounds=rounds,
        )


def add_load_arguments(p: argparse.ArgumentParser, *, duration: int, warmup: int) -> None:
    """The wrk load every benchmark takes: duration, warm-up, connections, threads, users."""
    p.add_argument("--duration", type=int, default=duration, help="seconds of each measured run")
    p.add_argument("--warmup", type=int, default=warmup, help="seconds of each warm-up run")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (every run)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (every run)")
    p.add_argument("--users", type=int, default=20_000, help="distinct customers the tokens rotate over")


def check_load_arguments(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse a load wrk cannot run (exits with argparse's usage error)."""
    if a.threads < 1 or a.connections < a.threads or a.duration < 1 or a.warmup < 0 or a.users < 1:
        p.error("need threads >= 1, connections >= threads, duration >= 1, warmup >= 0, users >= 1")
