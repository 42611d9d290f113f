"""``sluice-seal``: send one sealed chat request from the command line, or show the served key.

::

    sluice-seal fingerprint --base-url URL
    SLUICE_API_KEY=... sluice-seal chat --base-url URL --fingerprint FP --model M \\
        --prompt-file FILE [--stream] [--max-tokens N]

``fingerprint`` prints the fingerprint of the gate key the appliance serves
now (to stdout; a reminder to check it out of band goes to stderr).  ``chat``
seals the prompt read from ``FILE`` (``-``: standard input) to the pinned key
(``--fingerprint`` may be repeated during a key rotation), and prints the
answer, as it arrives with ``--stream``.  The API key is read from the
environment variable ``SLUICE_API_KEY``, never from the command line, where
``ps`` and shell history would show it.

Exit status: 0 done; 1 the request failed (HTTP error, network); 2 usage
(arguments, environment, prompt file); 3 the gate's key is not pinned or not
served; 4 the sealed answer failed authentication (altered, reordered or cut
short: do not trust output printed before the error).

Errors are one short line on stderr; text that came from the network is
stripped of control characters first.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, NoReturn

from .errors import KeyConfigError, SealError
from .secret import Secret

__all__ = ["main", "run", "API_KEY_ENV", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_KEY", "EXIT_SEAL"]

API_KEY_ENV: Final = "SLUICE_API_KEY"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_KEY: Final = 3
EXIT_SEAL: Final = 4

# The gate's body limit (policy/routes.toml): a longer prompt cannot be served.
MAX_PROMPT_BYTES: Final = 4 * 1024 * 1024
# Error text from the network is cut to this many characters.
_MAX_ERROR_TEXT: Final = 200


@dataclass(frozen=True, slots=True)
class _Env:
    """What the command reads from the environment, read once."""

    api_key: Secret | None

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> _Env:
        value = env.get(API_KEY_ENV, "")
        return cls(Secret(value) if value else None)


class _Usage(Exception):
    """A usage error: the message is printed, the exit status is 2."""


class _Failed(Exception):
    """The request failed (HTTP error, network): the message is printed, the exit status is 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


_BASE_URL_HELP: Final = "the OpenAI base URL, e.g. https://sluice.example.org/v1"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sluice-seal",
        description="Sealed (end-to-end encrypted) requests to a Sluice appliance. "
        f"The API key comes from the environment variable {API_KEY_ENV}.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    fingerprint = commands.add_parser("fingerprint", help="print the fingerprint of the key the appliance serves")
    fingerprint.add_argument("--base-url", required=True, help=_BASE_URL_HELP)
    chat = commands.add_parser("chat", help="send one sealed chat completion and print the answer")
    chat.add_argument("--base-url", required=True, help=_BASE_URL_HELP)
    chat.add_argument(
        "--fingerprint",
        required=True,
        action="append",
        help="the gate key fingerprint to pin, from the gate's operator (repeat during a rotation)",
    )
    chat.add_argument("--model", required=True, help="the model name")
    chat.add_argument("--prompt-file", required=True, help="file holding the prompt (UTF-8); - for standard input")
    chat.add_argument("--stream", action="store_true", help="print the answer as it arrives")
    chat.add_argument("--max-tokens", type=int, default=None, help="most tokens to generate")
    return parser


def _clean(text: object) -> str:
    """Network text made safe for a terminal: printable, one line, short."""
    value = "".join(c if c.isprintable() else "?" for c in str(text))
    return value[:_MAX_ERROR_TEXT]


def _read_prompt(name: str, stdin: IO[str]) -> str:
    try:
        if name == "-":
            buffer = getattr(stdin, "buffer", None)  # bytes from a real stdin, text from a StringIO
            limit = MAX_PROMPT_BYTES + 1
            data = buffer.read(limit) if buffer is not None else stdin.read(limit).encode()
        else:
            with open(name, "rb") as handle:
                data = handle.read(MAX_PROMPT_BYTES + 1)
    except OSError as exc:
        raise _Usage(f"cannot read the prompt file {name!r}: {exc.strerror}") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise _Usage(f"the prompt is larger than {MAX_PROMPT_BYTES} bytes")
    try:
        prompt = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Usage("the prompt file is not UTF-8") from None
    if not prompt.strip():
        raise _Usage("the prompt is empty")
    return prompt


def _fingerprint(args: argparse.Namespace, stdout: IO[str], stderr: IO[str]) -> int:
    from .connect import fetch_fingerprint

    print(fetch_fingerprint(args.base_url), file=stdout)
    print(
        "note: this is what the appliance serves; check it against the gate operator's before pinning it",
        file=stderr,
    )
    return EXIT_OK


def _chat(args: argparse.Namespace, env: _Env, stdin: IO[str], stdout: IO[str]) -> int:
    import openai

    from .connect import sealed_openai_client

    if env.api_key is None:
        raise _Usage(f"set the API key in the environment variable {API_KEY_ENV} (never on the command line)")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise _Usage("--max-tokens must be at least 1")
    prompt = _read_prompt(args.prompt_file, stdin)
    client = sealed_openai_client(args.base_url, env.api_key.reveal(), args.fingerprint)
    options: dict[str, Any] = {"model": args.model, "messages": [{"role": "user", "content": prompt}]}
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    try:
        with client:
            if args.stream:
                _print_stream(client.chat.completions.create(stream=True, **options), stdout)
            else:
                reply = client.chat.completions.create(**options)
                content = reply.choices[0].message.content if reply.choices else None
                print(content or "", file=stdout)
    except openai.APIStatusError as exc:
        detail = (exc.body.get("code") or exc.body.get("message")) if isinstance(exc.body, dict) else None
        suffix = f" ({_clean(detail)})" if detail else ""
        raise _Failed(f"the request failed: HTTP {exc.status_code}{suffix}") from None
    except openai.APIConnectionError as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else type(exc).__name__
        raise _Failed(f"cannot reach {args.base_url} ({cause})") from None
    return EXIT_OK


def _print_stream(stream: Any, stdout: IO[str]) -> None:
    """Write each piece of the answer as it arrives; a newline at the end, even after an error."""
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                stdout.write(chunk.choices[0].delta.content)
                stdout.flush()
    finally:
        stream.close()
        stdout.write("\n")
        stdout.flush()


def run(
    argv: Sequence[str] | None,
    env: Mapping[str, str],
    stdin: IO[str],
    stdout: IO[str],
    stderr: IO[str],
) -> int:
    """The command, with its environment and streams passed in; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        if args.command == "fingerprint":
            return _fingerprint(args, stdout, stderr)
        return _chat(args, _Env.from_mapping(env), stdin, stdout)
    except _Usage as exc:
        print(f"sluice-seal: error: {exc}", file=stderr)
        return EXIT_USAGE
    except SealError:
        print(
            "sluice-seal: error: the sealed answer failed authentication (altered, reordered or cut short); "
            "do not trust any output above",
            file=stderr,
        )
        return EXIT_SEAL
    except KeyConfigError as exc:
        print(f"sluice-seal: error: {exc}", file=stderr)
        return EXIT_KEY
    except (_Failed, ConnectionError) as exc:
        print(f"sluice-seal: error: {exc}", file=stderr)
        return EXIT_FAILED
    except ValueError as exc:  # a bad --base-url, or a request the transport refuses to send
        print(f"sluice-seal: error: {exc}", file=stderr)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sluice-seal`` console script."""
    return run(argv, os.environ, sys.stdin, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
