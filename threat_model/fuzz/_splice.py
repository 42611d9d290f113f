"""The mutation the body fuzz targets share: random bytes, or seeds with bytes or fragments spliced in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["splice"]


def splice(fdp: Any, seeds: Sequence[bytes], fragments: Sequence[bytes], *, max_random: int, max_repeat: int) -> bytes:
    """A body from ``fdp`` (an ``atheris.FuzzedDataProvider``): a third of the time random bytes,
    else a seed with 1 to 4 cuts replaced by random bytes or by a repeated fragment."""
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, max_random))  # type: ignore[no-any-return]
    body = seeds[fdp.ConsumeIntInRange(0, len(seeds) - 1)]
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        at = fdp.ConsumeIntInRange(0, len(body))
        cut = fdp.ConsumeIntInRange(0, min(8, len(body) - at))
        if mode == 1:
            insert = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
        else:
            insert = fragments[fdp.ConsumeIntInRange(0, len(fragments) - 1)] * fdp.ConsumeIntInRange(1, max_repeat)
        body = body[:at] + insert + body[at + cut :]
    return body
