"""The one error of the benchmarks, and how a benchmark's command line ends on it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class BenchError(Exception):
    """A step of a benchmark failed; the message says which and why."""


@contextmanager
def ends_cleanly(name: str) -> Iterator[None]:
    """Turn a failed step, Ctrl-C or SIGTERM inside into one line on stderr and the exit status (1, 130).

    The servers a benchmark starts are stopped by its own context managers while the error unwinds; by the time
    the line is printed they are gone, which is what the line says.
    """
    try:
        yield
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"{name}: interrupted; servers stopped", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit:
        print(f"{name}: terminated; servers stopped", file=sys.stderr)
        raise
