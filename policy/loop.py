"""The one place that picks the event loop: uvloop's where it is installed, the standard one otherwise.

The appliance installs uvloop (its ``appliance`` extra); a cluster's login node
may not have it, and the gate must run there on the standard library alone.
The gate asks for the standard loop when its standard input or output is not
a pipe or socket (a person testing by hand with a file or /dev/null): uvloop
aborts the process on such files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run_event_loop"]

T = TypeVar("T")


def _loop_factory(allow_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if not allow_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_event_loop(main: Coroutine[Any, Any, T], *, allow_uvloop: bool = True) -> T:
    """Run ``main`` to completion on a fresh event loop (uvloop's when importable and allowed)."""
    with asyncio.Runner(loop_factory=_loop_factory(allow_uvloop)) as runner:
        return runner.run(main)
