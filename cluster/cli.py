"""``sluice-cluster``: the cluster-side commands.

``gate`` is the forced command of the appliance's SSH key; ``scheduler`` runs
the scheduler loop.  Arguments come from the operator (authorized_keys,
service files), never from a request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .config import ConfigError, load_config

__all__ = ["main"]


def _scheduler(args: argparse.Namespace) -> int:
    from .scheduler.local import LocalScheduler

    config = load_config(args.config)

    async def loop() -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            running.add_signal_handler(signum, stop.set)
        await LocalScheduler(config).run(stop)

    asyncio.run(loop())
    return 0


def _authorized_key(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .authorized_key import KeyLineError, authorized_key_line, default_gate_command

    config = Path(args.config).resolve()
    load_config(config)  # refuse to print a line for a config the gate would refuse
    try:
        pubkey = Path(args.pubkey).read_text(encoding="ascii")
        print(authorized_key_line(pubkey, default_gate_command(sys.executable, config), args.sources))
    except (OSError, UnicodeDecodeError, KeyLineError) as exc:
        print(f"sluice-cluster: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gate"]:
        from .gate.entry import main as gate_main

        return gate_main(argv[1:])
    parser = argparse.ArgumentParser(prog="sluice-cluster", description="Sluice, cluster side.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("gate", help="the forced command of the appliance's key (see docs)")
    scheduler = commands.add_parser("scheduler", help="keep the configured services running")
    scheduler.add_argument("--config", required=True)
    key = commands.add_parser("authorized-key", help="print the authorized_keys line for the appliance's key")
    key.add_argument("--pubkey", required=True, help="the appliance's public key file (ssh-ed25519)")
    key.add_argument("--config", required=True, help="the cluster config the gate will use")
    key.add_argument("--from", dest="sources", action="append", help="allowed source address or CIDR (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "scheduler":
            return _scheduler(args)
        if args.command == "authorized-key":
            return _authorized_key(args)
    except ConfigError as exc:
        print(f"sluice-cluster: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
