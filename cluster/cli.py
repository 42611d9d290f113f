"""``sluice-cluster``: the cluster-side commands.

``gate`` is the forced command of the appliance's SSH key; ``scheduler`` runs
the scheduler loop, or one Slurm pass with ``--once`` (what the gate's pings
start); ``status`` shows services, jobs and the routing table;
``authorized-key`` prints the key line; ``tls init`` makes the gate's TLS
client key and certificate (see :mod:`cluster.tls`).  Arguments come from the operator
(authorized_keys, service files), never from a request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from .config import ConfigError, load_config

__all__ = ["main"]


def _scheduler(args: argparse.Namespace) -> int:
    from .scheduler.local import LocalSchedulerBusy
    from .scheduler.lock import LockUnavailable
    from .scheduler.run import run_loop, run_once

    config = load_config(args.config)
    try:
        if args.once:
            return run_once(config)

        async def loop() -> None:
            stop = asyncio.Event()
            running = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                running.add_signal_handler(signum, stop.set)
            await run_loop(config, stop)

        asyncio.run(loop())
    except (LocalSchedulerBusy, LockUnavailable, PermissionError) as exc:
        print(f"sluice-cluster: {exc}", file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    from .scheduler.status import format_status, status_document, status_json

    config = load_config(args.config)
    print(status_json(config) if args.json else format_status(status_document(config)))
    return 0


def _audited(directory: Path, kind: str, subject: str, **details: str | int) -> None:
    """Append the key event to the cluster side's audit trail; a failure is loud (exit 1), the key stays."""
    from .audit import append_event

    try:
        append_event(directory, kind, subject, None, **details)
    except OSError as exc:
        print(f"sluice-cluster: done, but its audit record could not be written: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _keys(args: argparse.Namespace) -> int:
    from sluice_sdk.errors import KeyConfigError

    from . import sealed_keys

    config = Path(args.config)
    load_config(config)
    audit_dir = sealed_keys.keys_dir(config)
    try:
        if args.action == "create":
            key = sealed_keys.create(config)
            _audited(audit_dir, "sealed_keys_created", f"key:{key.key_id}", fingerprint=key.config.fingerprint())
            print(f"created key {key.key_id}, fingerprint {key.config.fingerprint()}")
        elif args.action == "rotate":
            overlap = sealed_keys.DEFAULT_OVERLAP if args.overlap is None else args.overlap
            key = sealed_keys.rotate(config, overlap)
            _audited(
                audit_dir,
                "sealed_keys_rotated",
                f"key:{key.key_id}",
                fingerprint=key.config.fingerprint(),
                overlap_s=int(overlap),
            )
            print(f"key {key.key_id} is current, fingerprint {key.config.fingerprint()}")
        else:
            for row in sealed_keys.describe(config):
                print("  ".join(f"{k}={v}" for k, v in row.items()))
    except (KeyConfigError, OSError) as exc:
        print(f"sluice-cluster: {exc}", file=sys.stderr)
        return 2
    return 0


def _tls(args: argparse.Namespace) -> int:
    from .tls import TlsError, init_gate_identity

    config = load_config(args.config)
    try:
        identity, made = init_gate_identity(config.gate.tls)
    except (TlsError, OSError) as exc:
        print(f"sluice-cluster: {exc}", file=sys.stderr)
        return 2
    print(f"{'created' if made else 'kept'} the gate's TLS key {identity.key} and certificate {identity.cert}")
    if not config.split_accounts:
        print(
            "warning: single-account mode: jobs run as this account and can read this key "
            "(see docs/operator-slurm.md, Two accounts)",
            file=sys.stderr,
        )
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
    scheduler.add_argument("--once", action="store_true", help="run one Slurm pass and exit (what a ping starts)")
    status = commands.add_parser("status", help="show services, jobs and the routing table")
    status.add_argument("--config", required=True)
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    key = commands.add_parser("authorized-key", help="print the authorized_keys line for the appliance's key")
    key.add_argument("--pubkey", required=True, help="the appliance's public key file (ssh-ed25519)")
    key.add_argument("--config", required=True, help="the cluster config the gate will use")
    key.add_argument("--from", dest="sources", action="append", help="allowed source address or CIDR (repeatable)")
    keys = commands.add_parser("keys", help="the gate's keys for sealed requests: create, rotate, list")
    keys.add_argument("action", choices=("create", "rotate", "list"))
    keys.add_argument("--config", required=True)
    keys.add_argument("--overlap", type=float, default=None, help="seconds the old key stays accepted (rotate)")
    tls = commands.add_parser("tls", help="the gate's TLS client key and certificate (jobs accept only it)")
    tls.add_argument("action", choices=("init",))
    tls.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    # the scheduler's lines go to its log file: give them a time
    timed = "%(asctime)s %(message)s" if args.command == "scheduler" else "%(message)s"
    logging.basicConfig(level=logging.INFO, format=timed, stream=sys.stderr)
    try:
        if args.command == "scheduler":
            return _scheduler(args)
        if args.command == "status":
            return _status(args)
        if args.command == "authorized-key":
            return _authorized_key(args)
        if args.command == "keys":
            return _keys(args)
        if args.command == "tls":
            return _tls(args)
    except ConfigError as exc:
        print(f"sluice-cluster: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
