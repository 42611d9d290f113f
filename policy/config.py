"""The one configuration layer of Sluice: typed reading of TOML tables.

Both sides read an operator's TOML file once, at start (the gate's
``cluster.toml``, the appliance's ``sluice.toml``).  They read it through this
module alone, so the type rules and the wording of every mistake are the same
on both sides:

* ``bool`` is ``true`` or ``false``, never a number;
* an integer setting takes a TOML integer only (not ``1.0``, not ``true``);
* a number setting (``float``) takes an integer or a float (not ``true``);
* a duration is a number of seconds, never negative;
* a path is a string, relative to the configuration file's folder;
* a choice (an enum) is one of the listed strings;
* a list of strings is a TOML array of non-empty printable strings;
* a key the table does not know is refused, with the keys it does know.

Defaults live only on the dataclasses: :func:`build` reads each field of a
dataclass from a :class:`Table`, under the field's name, with the field's own
default and the bounds given by :func:`setting`.

Every mistake raises the one :class:`ConfigError`; its message names the key by
its dotted path (``services.m.resources.nice``), what the key must be (the
fix), and, once the loader has added it, the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .errors import InternalError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["ConfigError", "REQUIRED", "Table", "setting", "config_keys", "default", "build"]


class ConfigError(InternalError, ValueError):
    """A configuration file is wrong.

    The message starts with the file (once known), then the key by its dotted
    path, then what the key must be.  An operator's mistake, found at start:
    never sent to a client.
    """

    code = "bad_config"
    status = 500

    def __init__(self, message: str, *, key: str | None = None, file: str | Path | None = None) -> None:
        Exception.__init__(self, message)
        self.message, self.key, self.file = message, key, file

    def in_file(self, file: str | Path) -> ConfigError:
        """This error, naming ``file`` unless it already names one (raise it ``from None``)."""
        if self.file is None:
            self.file = file
        return self

    def __str__(self) -> str:
        return self.message if self.file is None else f"{self.file}: {self.message}"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


# The default of a key that must be given.
REQUIRED: Final[Any] = _Required()

_T = TypeVar("_T", bound="DataclassInstance")  # what build() builds: a dataclass

# What each type rule asks for, as the message says it.
_KINDS: Final[Mapping[type, str]] = {
    bool: "a bool (true or false)",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}


def _typed(value: Any, kind: type) -> bool:
    if kind is float:
        return type(value) in (int, float)
    return type(value) is kind


class Table:
    """One TOML table, read key by key with the type rules above.

    ``where`` is the table's dotted path ("" for the top level); ``known`` the
    keys it may hold: any other key is refused here, at once.
    """

    def __init__(self, data: Any, where: str, known: Iterable[str]) -> None:
        self.where = where
        self.known = frozenset(known)
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'the configuration'} must be a table", key=where or None)
        unknown = sorted(set(data) - self.known)
        if unknown:
            raise self.error(
                unknown[0], f"is not a known setting (known: {', '.join(sorted(self.known))}); remove it or fix its spelling"
            )
        self.data: dict[str, Any] = data

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def dotted(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, problem: str) -> ConfigError:
        """A :class:`ConfigError` for ``key``: ``problem`` says what it must be."""
        sep = "" if problem.startswith(":") else " "
        return ConfigError(f"{self.dotted(key)}{sep}{problem}", key=self.dotted(key))

    def get(self, key: str, kind: type, default: Any = REQUIRED) -> Any:
        """The value of ``key`` if it is of ``kind``; ``default`` if absent."""
        if key not in self.data:
            if default is REQUIRED:
                raise self.error(key, f"is required; add it to {f'[{self.where}]' if self.where else 'the file'}")
            return default
        value = self.data[key]
        if not _typed(value, kind):
            raise self.error(key, f"must be {_KINDS.get(kind, kind.__name__)}")
        return float(value) if kind is float else value

    def number(self, key: str, kind: type, low: float, high: float, default: Any = REQUIRED) -> Any:
        """An ``int`` or ``float`` from ``low`` to ``high``."""
        value = self.get(key, kind, default)
        if key in self.data and not low <= value <= high:
            raise self.error(key, f"must be between {low:g} and {high:g}")
        return value

    def duration(self, key: str, low: float, high: float, default: Any = REQUIRED) -> Any:
        """A number of seconds from ``low`` (at least 0) to ``high``."""
        return self.number(key, float, max(low, 0.0), high, default)

    def text(self, key: str, default: Any = REQUIRED, max_length: int = 1024) -> Any:
        """A non-empty printable string of at most ``max_length`` characters."""
        value = self.get(key, str, default)
        if key in self.data and not (0 < len(value) <= max_length and value.isprintable()):
            raise self.error(key, f"must be 1 to {max_length} printable characters")
        return value

    def choice(self, key: str, choices: Iterable[str], default: Any = REQUIRED) -> Any:
        """One of ``choices`` (an enum)."""
        choices = tuple(choices)
        value = self.get(key, str, default)
        if key in self.data and value not in choices:
            raise self.error(key, f"must be one of: {', '.join(choices)}")
        return value

    def strings(self, key: str, default: Any = REQUIRED, max_items: int = 64) -> Any:
        """A list of 1 to ``max_items`` non-empty printable strings, as a tuple."""
        value = self.get(key, list, default)
        if key not in self.data:
            return value
        if not 0 < len(value) <= max_items or not all(isinstance(v, str) and v and v.isprintable() for v in value):
            raise self.error(key, f"must be a list of 1 to {max_items} non-empty strings")
        return tuple(value)

    def path(self, key: str, base: Path, default: Any = REQUIRED, must_exist: bool = False) -> Any:
        """A path relative to ``base`` (the configuration file's folder)."""
        value = self.text(key, default, max_length=4096)
        if key not in self.data:
            return value
        path = base / value
        if must_exist and not path.is_file():
            raise self.error(key, f": {path} does not exist; give the path of an existing file")
        return path

    def table(self, key: str, known: Iterable[str], default: Any = REQUIRED) -> Table:
        """The table under ``key`` (``default``, an empty table, if absent and given)."""
        data = self.get(key, dict, default)
        return Table(data, self.dotted(key), known)


def setting(
    default: Any = REQUIRED,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: Iterable[str] | None = None,
    must_exist: bool = False,
    max_length: int | None = None,
    max_items: int = 64,
    read: bool = True,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field read from TOML by :func:`build`, with its default and bounds.

    ``read=False`` marks a field the reader works out itself (never a key).
    """
    spec = {
        "low": low,
        "high": high,
        "choices": None if choices is None else tuple(choices),
        "must_exist": must_exist,
        "max_length": max_length,
        "max_items": max_items,
        "read": read,
    }
    metadata = {"config": spec}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _spec(field: dataclasses.Field[Any]) -> dict[str, Any]:
    spec: dict[str, Any] = field.metadata.get("config", {"read": True})
    return spec


def config_keys(cls: type, *extra: str) -> frozenset[str]:
    """The keys a table read into ``cls`` may hold: its read fields, and ``extra``."""
    return frozenset(f.name for f in dataclasses.fields(cls) if _spec(f)["read"]) | frozenset(extra)


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return REQUIRED


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (for a reader's worked-out default)."""
    (field,) = (f for f in dataclasses.fields(cls) if f.name == name)
    return _default(field)


def _kind(hint: Any) -> tuple[Any, bool]:
    """The type of a field without ``None``, and whether ``None`` is allowed."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(typing.get_args(hint))
    return hint, False


def _read(table: Table, name: str, hint: Any, spec: dict[str, Any], default: Any, base: Path | None) -> Any:
    kind, _ = _kind(hint)
    low, high = spec.get("low"), spec.get("high")
    if spec.get("choices") is not None:
        return table.choice(name, spec["choices"], default)
    if kind is Path:
        if base is None:
            raise TypeError(f"{table.dotted(name)}: a path setting needs the configuration's folder (base)")
        return table.path(name, base, default, must_exist=spec.get("must_exist", False))
    if kind in (int, float) and low is not None and high is not None:
        return table.number(name, kind, low, high, default)
    if kind is str and spec.get("max_length") is not None:
        return table.text(name, default, spec["max_length"])
    if typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, ...):
        return table.strings(name, default, spec.get("max_items", 64))
    if kind in _KINDS:
        return table.get(name, kind, default)
    raise TypeError(f"{table.dotted(name)}: no type rule for {kind!r}; read it yourself and pass it to build()")


def build(cls: type[_T], table: Table, base: Path | None = None, **given: Any) -> _T:
    """An instance of the dataclass ``cls`` with each field read from ``table``.

    A field takes its key's value, checked by the rule of its type and the
    bounds of its :func:`setting`; an absent key takes the field's default,
    and a field without one is required.  ``given`` are fields the caller
    has read or worked out itself.
    """
    hints = typing.get_type_hints(cls)
    values = dict(given)
    for field in dataclasses.fields(cls):
        spec = _spec(field)
        if field.name in given or not spec["read"] or not field.init:
            continue
        values[field.name] = _read(table, field.name, hints[field.name], spec, _default(field), base)
    return cls(**values)
