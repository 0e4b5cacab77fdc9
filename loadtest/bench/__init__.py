"""The wrk benchmarks (`make bench`, `make bench-gateway`, `make bench-orders`, `make perf-table`) and what they
share: the wrk driver and its Lua script, the server start-up, CPU accounting per process, the benchmark's own
backends and sales, and the JSON report's header."""
