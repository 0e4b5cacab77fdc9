"""The launcher's command line: `python -m deploy backends|up|status|demo|down` from the repo root.

    .venv/bin/python -m deploy backends [--env-file PATH] [--private]
    .venv/bin/python -m deploy up [--private] [--payment-deadline N] [--no-monitoring]
    .venv/bin/python -m deploy status
    .venv/bin/python -m deploy demo [--private] [--fail-primary] [--keep-running]
    .venv/bin/python -m deploy down
    .venv/bin/python -m deploy alertmanager-config [--out PATH]
    .venv/bin/python -m deploy k8s-observability-files

Redis and PostgreSQL come from REDIS_URL / DATABASE_URL when they answer, else from 127.0.0.1:6379 and
127.0.0.1:5432, else private servers are started under .stack/ (binaries on PATH, or pip packages that ship
them). Everything this launcher starts is recorded in .stack/state.json; `down` stops exactly that and
nothing else. STACK_PORT_OFFSET=<n> shifts every service port by n, to run beside a stack on the usual ports.
`up` also starts Prometheus (9090 + offset) and Alertmanager (9093 + offset) when their binaries are on PATH.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from deploy import state as stack_state
from deploy.alertmanager_config import DEFAULT_OUT, write_config
from deploy.backends import ensure_backends, postgres_answers, print_backends, redis_answers, write_env_file
from deploy.errors import StackError
from deploy.observability import print_monitors
from deploy.replicas import bring_up, print_services
from deploy.state import say
from deploy.topology import HOST, PAYMENT_DEADLINE_VAR, SERVICES, port_offset

DEMO_PAYMENT_DEADLINE = 20  # seconds: short enough that unpaid demo orders expire within the demo


def cmd_backends(args: argparse.Namespace) -> int:
    """Make sure a Redis and a PostgreSQL answer and write their URLs to an env file."""
    with stack_state.stack_lock():
        state = stack_state.load_state()
        backends = ensure_backends(state, private=args.private, embedded=args.embedded)
    env_file = Path(args.env_file)
    write_env_file(env_file, backends)
    print_backends(backends)
    say(f"wrote {stack_state.rel(env_file.resolve())}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Start the stack and leave it running."""
    overrides = {}
    if args.payment_deadline is not None:
        overrides["order"] = {PAYMENT_DEADLINE_VAR: str(args.payment_deadline)}
    state, _backends, _started = bring_up(args, overrides, monitoring=not args.no_monitoring)
    say("the stack is up:")
    print_services(state)
    print_monitors(state)
    docs = "  ".join(f"http://{HOST}:{spec.replicas(port_offset())[0][1]}/docs" for spec in SERVICES)
    say(f"API docs: {docs}")
    say(f"logs: {stack_state.rel(stack_state.LOG_DIR)}/   stop it with `make down`")
    return 0


def cmd_alertmanager_config(args: argparse.Namespace) -> int:
    """Write the Alertmanager config, its receivers' URLs taken from the environment."""
    out = write_config(Path(args.out))
    say(f"wrote {stack_state.rel(out.resolve())}")
    return 0


def cmd_k8s_observability_files(_args: argparse.Namespace) -> int:
    """Copy the shipped rules and Grafana files into the Kubernetes observability component."""
    from deploy.observability_files import COPIES, write_copies

    written = write_copies()
    say(f"wrote {len(written)} files under {stack_state.rel(COPIES)}")
    return 0


def cmd_down(_args: argparse.Namespace) -> int:
    """Stop only what this launcher started."""
    with stack_state.stack_lock():
        state = stack_state.load_state()
        if not state["processes"]:
            say("nothing started by this launcher is running")
            return 0
        say("stopping:")
        stack_state.stop_recorded(state)
    say("down: every process this launcher started is stopped (Redis/PostgreSQL it did not start are untouched)")
    return 0


def _print_backends_of_env_file(procs: dict[str, dict[str, object]]) -> None:
    """The backends named in .stack/backends.env that this launcher did not start, and whether they answer."""
    for line in stack_state.DEFAULT_ENV_FILE.read_text().splitlines():
        key, _, value = line.partition("=")
        backend = {"REDIS_URL": "redis", "DATABASE_URL": "postgres"}.get(key)
        if backend is None or backend in procs:
            continue
        url = shlex.split(value)[0] if value else ""
        answers = redis_answers(url) if backend == "redis" else postgres_answers(url)
        say(f"  {backend:<9} {url}  (not started by this launcher; {'answers' if answers else 'not answering'})")


def cmd_status(_args: argparse.Namespace) -> int:
    """Show what runs."""
    state = stack_state.load_state()
    procs = state["processes"]
    say("backends:")
    for name in ("redis", "postgres"):
        record = procs.get(name)
        if record is not None:
            alive = "running" if stack_state.is_running(record) else "exited"
            log = stack_state.rel(record["log"])
            say(f"  {name:<9} {record['url']}  private, pid {record['pid']} {alive}, log {log}")
    if stack_state.DEFAULT_ENV_FILE.exists():
        _print_backends_of_env_file(procs)
    elif not procs:
        say("  none chosen yet (run `make up` or `make test`)")
    say("services:")
    print_services(state)
    print_monitors(state)
    return 0


def _stop_what_the_demo_started(started: list[str]) -> None:
    """Stop the processes this demo started; name those it found running."""
    with stack_state.stack_lock():
        state = stack_state.load_state()
        mine = set(started) & set(state["processes"])
        if mine:
            say("stopping what the demo started:")
            stack_state.stop_recorded(state, mine)
        kept = set(state["processes"])
        if kept:
            say(f"left running (started before the demo): {', '.join(sorted(kept))}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Up, a demo flash sale through the load tools (seed, crowd, checker), a summary, then stop what it started."""
    from deploy.demo.scenario import run_demo_sale  # the demo's imports (httpx, redis, loadtest/) only when asked

    if not 0 <= args.pay_share <= 1:
        raise StackError("--pay-share must be between 0 and 1")
    if args.coupon_users < 0 or args.coupons < 1:
        raise StackError("--coupon-users must be >= 0 and --coupons >= 1")
    overrides = {"order": {PAYMENT_DEADLINE_VAR: str(args.payment_deadline)}}
    state, backends, started = bring_up(args, overrides, restart_changed=False)
    ok = False
    try:
        say("the stack is up:")
        print_services(state)
        ok = run_demo_sale(args, backends)
    finally:
        if args.keep_running:
            say("leaving the stack running (--keep-running); stop it with `make down`")
        else:
            _stop_what_the_demo_started(started)
    return 0 if ok else 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _backend_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--private", action="store_true", help="start private Redis/PostgreSQL under .stack/")
    p.add_argument(
        "--embedded",
        action="store_true",
        help="for private servers, use the binaries of the pip packages even when the machine has its own",
    )


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="up, a demo flash sale with a crowd of buyers, the checker, a summary, then down")
    _backend_flags(p)
    p.add_argument("--users", type=int, default=1000, help="shoppers in the crowd (default 1000)")
    p.add_argument("--spawn-rate", type=float, default=200.0, help="shoppers arriving per second (default 200)")
    p.add_argument("--quantity", type=int, default=200, help="units on sale (default 200)")
    p.add_argument("--limit", type=int, default=2, help="per-user limit (default 2)")
    p.add_argument(
        "--start-in", type=float, default=10.0, help="seconds until the sale starts: the crowd gathers (default 10)"
    )
    p.add_argument("--pay-share", type=float, default=0.7, help="share of the orders the shoppers pay (default 0.7)")
    p.add_argument(
        "--coupon-users", type=int, default=300, help="about this many shoppers claim a coupon (default 300; 0: none)"
    )
    p.add_argument("--coupons", type=int, default=250, help="coupons the demo's template offers (default 250)")
    p.add_argument(
        "--payment-deadline",
        type=_positive_int,
        default=DEMO_PAYMENT_DEADLINE,
        metavar="N",
        help=f"seconds to pay, for order replicas the demo starts (default {DEMO_PAYMENT_DEADLINE})",
    )
    p.add_argument("--fail-primary", action="store_true", help="take the primary payment provider down before paying")
    p.add_argument("--keep-running", action="store_true", help="leave the stack running afterwards")
    p.set_defaults(func=cmd_demo)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backends", help="make sure Redis and PostgreSQL answer; write their URLs to an env file")
    p.add_argument(
        "--env-file", default=str(stack_state.DEFAULT_ENV_FILE), help="where to write REDIS_URL and DATABASE_URL"
    )
    _backend_flags(p)
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("up", help="backends, migrations, 2 replicas per service; leaves it running")
    _backend_flags(p)
    p.add_argument(
        "--payment-deadline",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"seconds an order may stay unpaid ({PAYMENT_DEADLINE_VAR}; default: the service's own, 900)",
    )
    p.add_argument(
        "--no-monitoring",
        action="store_true",
        help="do not start Prometheus and Alertmanager (started by default when prometheus is on PATH)",
    )
    p.set_defaults(func=cmd_up)

    sub.add_parser("down", help="stop what this launcher started").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show what runs").set_defaults(func=cmd_status)
    _demo_parser(sub)

    p = sub.add_parser(
        "alertmanager-config",
        help="render deploy/alertmanager's template with ALERT_WEBHOOK_URL, ALERT_SMS_WEBHOOK_URL",
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where to write alertmanager.yml")
    p.set_defaults(func=cmd_alertmanager_config)

    sub.add_parser(
        "k8s-observability-files",
        help="copy deploy/prometheus/rules and deploy/grafana into deploy/k8s/components/observability/files",
    ).set_defaults(func=cmd_k8s_observability_files)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Entry point: run one command from the repo root."""
    args = parse_args(argv)
    for path_arg in ("env_file", "out"):  # relative to where it was run, before the chdir
        if getattr(args, path_arg, None):
            setattr(args, path_arg, str(Path(getattr(args, path_arg)).absolute()))
    os.chdir(stack_state.ROOT)
    try:
        code: int = args.func(args)
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    return code
