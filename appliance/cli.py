"""``sluice``: the appliance's command line."""

from __future__ import annotations

import argparse
import sys

from policy.loop import run_event_loop

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluice", description="Sluice: private LLM inference from HPC clusters.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the appliance, the gate and stand-in models on this machine")
    demo.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    demo.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; the chat's one-click sign-in exists on loopback only)",
    )
    demo.add_argument("--api-key", help="the demo API key (default: a new random one)")
    demo.add_argument("--mode", choices=("mux", "exec"), default="mux", help="gate protocol mode (default mux)")
    demo.add_argument("--sessions", type=int, default=1, help="mux sessions (gate processes) to spread requests over")
    demo.add_argument("--token-delay", type=float, default=0.02, help="seconds between streamed tokens")
    demo.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="JSON logs on stderr from this level (default warning; info adds a line per request)",
    )
    serve = commands.add_parser("serve", help="run the appliance from its configuration file")
    serve.add_argument("--config", required=True, help="the appliance's TOML configuration")
    from .auth.admin import add_keys_arguments

    add_keys_arguments(commands.add_parser("keys", help="create, list or revoke API keys (operators)"))
    from .accounting.report import add_arguments as add_usage_arguments

    add_usage_arguments(commands.add_parser("usage", help="requests and tokens per day, user and model"))
    from .db_cli import add_arguments as add_db_arguments

    add_db_arguments(commands.add_parser("db", help="upgrade or show the schema of the identity and accounting stores"))
    from .audit.cli import add_arguments as add_audit_arguments

    add_audit_arguments(commands.add_parser("audit", help="list the audit trail (sluice audit verify: check its chain)"))
    from .status import add_arguments as add_status_arguments

    add_status_arguments(commands.add_parser("status", help="clusters, sessions, models, queue and quota refusals"))
    args = parser.parse_args(argv)
    if args.command == "db":
        from .db_cli import run as run_db

        return run_db(args)
    if args.command == "status":
        from .status import run as run_status

        return run_status(args)
    if args.command == "audit":
        from .audit.cli import run as run_audit

        return run_audit(args)
    if args.command == "usage":
        from .accounting.report import run as run_usage

        return run_usage(args)
    if args.command == "keys":
        from .auth.admin import run_keys

        return run_keys(args)
    if args.command == "serve":
        from .serve import run_server
        from .settings import ConfigError, load_settings

        try:
            settings = load_settings(args.config)
        except ConfigError as exc:
            print(f"sluice: {exc}", file=sys.stderr)
            return 2
        from pathlib import Path

        return run_event_loop(run_server(settings, Path(args.config)))
    if args.command == "demo":
        from .demo import new_demo_key, run_demo

        key = args.api_key or new_demo_key()
        if not 16 <= len(key) <= 256:
            parser.error("--api-key must be 16 to 256 characters long")
        if not 0 < args.port < 65536 or not 1 <= args.sessions <= 64 or not 0 <= args.token_delay <= 10:
            parser.error("--port, --sessions or --token-delay out of range")
        return run_event_loop(run_demo(args.port, key, args.mode, args.sessions, args.token_delay, args.log_level, args.host))
    return 2


if __name__ == "__main__":
    sys.exit(main())
