"""The load tools: the full-chain Locust load test, the failure drills, the checker, the seeder and the
benchmarks (`loadtest.bench`). Run from the repo root as modules, e.g. `python -m loadtest.drills baseline`."""
