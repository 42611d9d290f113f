"""``python -m cluster.standin``: run one stand-in model server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cluster.standin._api import KINDS, StandinConfig
from cluster.standin.server import run

BEARER_ENV = "SLUICE_BACKEND_TOKEN"
"""The environment variable holding the bearer token (never an argument)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.standin",
        description="Stand-in OpenAI-compatible model server. "
        f"Set {BEARER_ENV} in the environment to require a bearer token.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on; 0 picks a free one")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--kind", choices=KINDS, required=True, help="chat or embeddings")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    parser.add_argument("--dimensions", type=int, default=32, help="embedding dimensions (default 32)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, serve, print ``READY <port>`` once listening."""
    args = _parser().parse_args(argv)
    if not 0 <= args.port < 65536:
        print("error: --port must be between 0 and 65535", file=sys.stderr)
        return 2
    # set but empty is a mistake, not "no authentication": StandinConfig refuses it
    token = os.environ.get(BEARER_ENV)
    try:
        config = StandinConfig(
            model=args.model,
            kind=args.kind,
            token_delay=args.token_delay,
            dimensions=args.dimensions,
            token=token,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="standin %(levelname)s %(message)s")

    def ready(port: int) -> None:
        sys.stdout.write(f"READY {port}\n")
        sys.stdout.flush()

    try:
        run(config, args.host, args.port, ready)
    except OSError as exc:
        print(f"error: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
