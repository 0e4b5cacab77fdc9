"""The local stack launcher: `python -m deploy backends|up|status|demo|down` from the repo root.

One role per module:
    topology   the services, their replicas and ports, declared once (docker-compose.yml is checked against it)
    state      what the launcher started (.stack/state.json), one launcher at a time, starting/stopping processes
    backends   Redis and PostgreSQL: the environment's, the machine's, or private ones under .stack/
    replicas   migrations, each replica's environment, start order and readiness
    cli        the command line
    demo/      `make demo`: the load tools' seed, a crowd, the checker, and a summary
"""
