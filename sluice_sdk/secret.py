"""Secrets that do not print: the one :class:`Secret` of Sluice (the SDK's API key, and
the appliance's keys, passwords, DSNs and tokens).

A :class:`Secret` prints as ``**********`` (in ``str``, ``repr``, f-strings and
tracebacks' locals), never compares equal to anything and cannot be hashed;
:meth:`Secret.reveal` is the one way to the value, so every use of a secret can
be found by searching for it.  Carry the Secret to the point of use and reveal
it there.  Standard library only: the appliance imports it too.
"""

from __future__ import annotations

from typing import Final

__all__ = ["Secret"]

_MASK: Final = "**********"


class Secret:
    """A string that does not print."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return _MASK

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __eq__(self, other: object) -> bool:
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # unhashable, as __eq__ is overridden (typeshed wants a method)
