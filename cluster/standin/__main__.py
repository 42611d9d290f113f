"""``python -m cluster.standin``: run one stand-in model server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys

from cluster.standin._api import KINDS, StandinConfig
from cluster.standin.server import run
from cluster.tls import server_context

BEARER_ENV = "SLUICE_BACKEND_TOKEN"
"""The environment variable holding the bearer token (never an argument)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.standin",
        description=f"Stand-in OpenAI-compatible model server. Set {BEARER_ENV} in the environment to require a bearer token.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on; 0 picks a free one")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--kind", choices=KINDS, required=True, help="chat or embeddings")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    parser.add_argument("--dimensions", type=int, default=32, help="embedding dimensions (default 32)")
    # TLS as vLLM takes it (the scheduler's job templates pass the same flags to both)
    parser.add_argument("--ssl-keyfile", help="serve TLS with this key (PEM)")
    parser.add_argument("--ssl-certfile", help="and this certificate (PEM)")
    parser.add_argument("--ssl-ca-certs", help="client certificates accepted (PEM)")
    parser.add_argument(
        "--ssl-cert-reqs",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="0: no client certificate asked, 1: optional, 2: required (vLLM's values)",
    )
    return parser


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server context of the ``--ssl-*`` flags, or None; ValueError names a wrong combination."""
    files = (args.ssl_keyfile, args.ssl_certfile)
    if not any(files):
        if args.ssl_ca_certs or args.ssl_cert_reqs:
            raise ValueError("--ssl-ca-certs and --ssl-cert-reqs need --ssl-keyfile and --ssl-certfile")
        return None
    if not all(files):
        raise ValueError("give both --ssl-keyfile and --ssl-certfile")
    if args.ssl_cert_reqs and not args.ssl_ca_certs:
        raise ValueError("--ssl-cert-reqs needs --ssl-ca-certs")
    try:
        return server_context(args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certs, args.ssl_cert_reqs)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS files: {exc}") from None


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
        tls = _tls(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="standin %(levelname)s %(message)s")

    def ready(port: int) -> None:
        sys.stdout.write(f"READY {port}\n")
        sys.stdout.flush()

    try:
        run(config, args.host, args.port, ready, tls)
    except OSError as exc:
        print(f"error: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
