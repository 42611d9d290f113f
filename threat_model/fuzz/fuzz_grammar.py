"""Fuzz target: the command-line grammar (policy/grammar.py).

Invariant: any input -- bytes or text, as SSH_ORIGINAL_COMMAND or as an OPEN
payload -- is either parsed into one of the typed commands (Ping, Models, Mux,
Call) or rejected with a SluiceError.  Any other exception, or any other
return value, is a crash.

    python threat_model/fuzz/fuzz_grammar.py -atheris_runs=100000
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import atheris

with atheris.instrument_imports():
    from policy.errors import SluiceError
    from policy.grammar import (
        Call,
        Models,
        Mux,
        Ping,
        parse_command_line,
        parse_stream_command,
    )

TYPED = (Ping, Models, Mux, Call)

# Grammatical lines to splice fuzz bytes into: random bytes alone rarely get past "sluice/1 ".
SEEDS = (
    b"sluice/1 ping",
    b"sluice/1 models",
    b"sluice/1 mux",
    b"sluice/1 call chat meta-llama/Llama-3.1-8B-Instruct:v2_x 1234",
    b"sluice/1 call completions m 8388608",
    b"sluice/1 call embeddings a/b.c-d 0",
    b"call chat standin-chat 99999999",
    b"ping",
)


def _line(fdp: atheris.FuzzedDataProvider) -> bytes | str:
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
    if mode == 1:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 300))  # any code point, surrogates too
    seed = SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
    at = fdp.ConsumeIntInRange(0, len(seed))
    cut = fdp.ConsumeIntInRange(0, len(seed) - at)
    spliced = seed[:at] + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8)) + seed[at + cut :]
    return spliced if mode == 2 else spliced.decode("latin-1")


def TestOneInput(data: bytes) -> None:
    line = _line(atheris.FuzzedDataProvider(data))
    for parse in (parse_command_line, parse_stream_command):
        try:
            value = parse(line)
        except SluiceError:
            continue
        if type(value) not in TYPED:
            raise TypeError(f"{parse.__name__} returned a {type(value).__name__}")


def main(argv: list[str] | None = None) -> None:
    atheris.Setup(sys.argv if argv is None else argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
