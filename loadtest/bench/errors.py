"""The one error of the benchmarks."""


class BenchError(Exception):
    """A step of a benchmark failed; the message says which and why."""
