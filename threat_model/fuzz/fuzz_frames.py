"""Fuzz target: the mux frame decoder and the per-session stream rules.

Invariant: any byte stream, fed in any split, makes policy.frames.FrameDecoder
return typed frames (Frame of an appliance-to-gate kind, a payload within its
bounds) that cluster.gate.session.StreamTable either accepts -- returning None
or a typed (stream, command, body) request, or refusing one stream with a
SluiceError through its callback -- or rejects with a SluiceError.
Any other exception or value is a crash.

    python threat_model/fuzz/fuzz_frames.py -atheris_runs=100000
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import atheris

with atheris.instrument_imports():
    from cluster.gate.session import StreamTable
    from policy.errors import SluiceError
    from policy.frames import (
        CLIENT_KINDS,
        HEADER,
        MAX_PAYLOAD,
        Frame,
        FrameDecoder,
        Kind,
    )
    from policy.grammar import MAX_COMMAND_LINE, Call, Models, Ping

# Small bodies, so that fuzzed DATA frames complete streams often.
MAX_BODY = 64
PAYLOADS = (b"ping", b"models", b"call chat m 0", b"call chat m 5", b"call embeddings x 64", b"12345", b"")
KINDS = (Kind.OPEN, Kind.DATA, Kind.CANCEL)


def _chunk(fdp: atheris.FuzzedDataProvider) -> bytes:
    """Raw bytes, or one frame with a fuzzed header (kind, stream, length may all lie)."""
    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    kind = KINDS[fdp.ConsumeIntInRange(0, 2)] if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 255)
    stream = fdp.ConsumeIntInRange(0, 8) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 2**32 - 1)
    if fdp.ConsumeBool():
        payload = PAYLOADS[fdp.ConsumeIntInRange(0, len(PAYLOADS) - 1)]
    else:
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))
    length = len(payload) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 2**32 - 1)
    return HEADER.pack(kind, stream, length) + payload


def _check_frame(frame: object) -> Frame:
    if type(frame) is not Frame or frame.kind not in CLIENT_KINDS or type(frame.payload) is not bytes:
        raise TypeError(f"the decoder returned {frame!r:.80}")
    limit = {Kind.OPEN: MAX_COMMAND_LINE, Kind.DATA: MAX_PAYLOAD, Kind.CANCEL: 0}[frame.kind]
    if len(frame.payload) > limit or not 1 <= frame.stream < 2**31:
        raise ValueError(f"the decoder let through {frame.kind.name} of {len(frame.payload)} bytes on {frame.stream}")
    return frame


def _refused(stream: int, error: SluiceError) -> None:
    """A stream refused on its own: its error must be one of ours, with a status hint."""
    if not isinstance(error, SluiceError) or not 400 <= error.status <= 599 or not 1 <= stream < 2**31:
        raise TypeError(f"a refusal of {stream} with {error!r:.80}")


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    now = [0.0]
    decoder = FrameDecoder(CLIENT_KINDS)
    table = StreamTable(lambda call: MAX_BODY, lambda stream: None, lambda: now[0], refuse=_refused)
    try:
        while fdp.remaining_bytes():
            chunk = _chunk(fdp)
            cut = fdp.ConsumeIntInRange(0, len(chunk))
            for piece in (chunk[:cut], chunk[cut:]):
                for frame in decoder.feed(piece):
                    started = table.on_frame(*_check_frame(frame))
                    if started is None:
                        continue
                    stream, command, body = started
                    if type(stream) is not int or type(command) not in (Ping, Models, Call) or type(body) is not bytes:
                        raise TypeError(f"the stream table returned {started!r:.80}")
                    if fdp.ConsumeBool():
                        table.finished(stream)
            now[0] += fdp.ConsumeIntInRange(0, 20) / 2
            table.check_deadlines()
    except SluiceError:
        return


def main(argv: list[str] | None = None) -> None:
    atheris.Setup(sys.argv if argv is None else argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
