"""policy/config.py: the one table reader, its type rules and its one error."""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from policy.config import REQUIRED, ConfigError, Table, build, config_keys, setting
from policy.errors import LocalError, SluiceError

ROOT = Path(__file__).resolve().parents[2]


def table(text: str, known: tuple[str, ...] = ("a",), where: str = "t") -> Table:
    return Table(tomllib.loads(text), where, known)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("a = true", bool, True),
        ("a = 3", int, 3),
        ("a = 3", float, 3.0),
        ("a = 2.5", float, 2.5),
        ('a = "x"', str, "x"),
        ("a = [1]", list, [1]),
        ("a = {b = 1}", dict, {"b": 1}),
    ],
)
def test_type_rules_accept(text: str, kind: type, value: object) -> None:
    got = table(text).get("a", kind)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("a = 1", bool, "t.a must be a bool (true or false)"),
        ("a = true", int, "t.a must be an integer"),
        ("a = 1.0", int, "t.a must be an integer"),
        ("a = true", float, "t.a must be a number"),
        ('a = "3"', float, "t.a must be a number"),
        ("a = 3", str, "t.a must be a string"),
        ('a = "x"', list, "t.a must be a list"),
        ("a = 1", dict, "t.a must be a table"),
    ],
)
def test_reject_wrong_types(text: str, kind: type, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        table(text).get("a", kind)
    assert str(info.value) == message and info.value.key == "t.a"


def test_reject_out_of_range_numbers_and_durations() -> None:
    with pytest.raises(ConfigError, match="t.a must be between 1 and 10"):
        table("a = 11").number("a", int, 1, 10)
    with pytest.raises(ConfigError, match="t.a must be between 0 and 60"):
        table("a = -1").duration("a", -5, 60)
    assert table("a = 2").duration("a", 0, 60) == 2.0
    assert table("").duration("a", 0, 60, 5.0) == 5.0


def test_reject_bad_choices_strings_and_text() -> None:
    with pytest.raises(ConfigError, match="t.a must be one of: x, y"):
        table('a = "z"').choice("a", ("x", "y"))
    with pytest.raises(ConfigError, match="t.a must be a list of 1 to 64 non-empty strings"):
        table('a = ["x", 1]').strings("a")
    with pytest.raises(ConfigError, match="t.a must be a list of 1 to 64 non-empty strings"):
        table('a = ["x", ""]').strings("a")
    assert table('a = ["x", "y"]').strings("a") == ("x", "y")
    with pytest.raises(ConfigError, match="t.a must be 1 to 1024 printable characters"):
        table('a = "x\\ny"').text("a")


def test_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert table('a = "f"').path("a", tmp_path, must_exist=True) == tmp_path / "f"
    with pytest.raises(ConfigError, match=r"^t.a: .*/g does not exist; give the path of an existing file$"):
        table('a = "g"').path("a", tmp_path, must_exist=True)


def test_reject_unknown_keys_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        table("a = 1\nb = 2", ("a", "c"))
    assert str(info.value) == "t.b is not a known setting (known: a, c); remove it or fix its spelling"


def test_reject_a_table_that_is_not_one() -> None:
    with pytest.raises(ConfigError, match="^t must be a table$"):
        Table(3, "t", ())


def test_missing_keys_are_named_by_their_dotted_path() -> None:
    outer = table("[b]\n", ("b",), where="")
    with pytest.raises(ConfigError, match=r"^b\.c is required; add it to \[b\]$"):
        outer.table("b", ("c",)).get("c", str)
    with pytest.raises(ConfigError, match="^x is required; add it to the file$"):
        outer.get("x", str)
    assert outer.get("x", str, None) is None


def test_the_file_is_named_once_known(tmp_path: Path) -> None:
    error = table("a = 1").error("a", "must be 2")
    assert str(error) == "t.a must be 2"
    assert str(error.in_file(tmp_path / "c.toml")) == f"{tmp_path / 'c.toml'}: t.a must be 2"
    assert str(error.in_file("other.toml")) == f"{tmp_path / 'c.toml'}: t.a must be 2"


@dataclass(frozen=True, slots=True)
class Example:
    name: str
    port: int = setting(8080, low=1, high=65535)
    timeout: float = setting(30.0, low=0.5, high=600)
    secure: bool = True
    level: str = setting("info", choices=("debug", "info"))
    key_file: Path | None = setting(None, must_exist=True)
    groups: tuple[str, ...] = ()
    derived: int = setting(0, read=False)


def test_build_takes_defaults_from_the_dataclass(tmp_path: Path) -> None:
    got = build(Example, Table({"name": "n"}, "e", config_keys(Example)), tmp_path)
    assert got == Example("n")
    assert config_keys(Example, "extra") == {"name", "port", "timeout", "secure", "level", "key_file", "groups", "extra"}


def test_build_reads_every_kind(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("x")
    data = {"name": "n", "port": 1, "timeout": 2, "secure": False, "level": "debug", "key_file": "k", "groups": ["g"]}
    got = build(Example, Table(data, "e", config_keys(Example)), tmp_path, derived=7)
    assert got == Example("n", 1, 2.0, False, "debug", tmp_path / "k", ("g",), 7)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "e.name is required"),
        ({"name": "n", "port": 0}, "e.port must be between 1 and 65535"),
        ({"name": "n", "port": 80.0}, "e.port must be an integer"),
        ({"name": "n", "timeout": True}, "e.timeout must be a number"),
        ({"name": "n", "secure": 1}, "e.secure must be a bool"),
        ({"name": "n", "level": "loud"}, "e.level must be one of: debug, info"),
        ({"name": "n", "key_file": "nope"}, "e.key_file: "),
        ({"name": "n", "groups": "g"}, "e.groups must be a list"),
        ({"name": "n", "derived": 1}, "e.derived is not a known setting"),
    ],
)
def test_reject_through_build(tmp_path: Path, data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(Example, Table(data, "e", config_keys(Example)), tmp_path)
    assert str(info.value).startswith(message)


def test_required_is_a_sentinel() -> None:
    assert repr(REQUIRED) == "REQUIRED"


def test_config_error_is_in_the_one_error_tree() -> None:
    assert issubclass(ConfigError, LocalError) and issubclass(ConfigError, SluiceError)
    assert issubclass(ConfigError, ValueError)


def test_there_is_one_config_error_class_in_the_tree() -> None:
    """Every configuration reader raises policy.config.ConfigError: no package defines its own."""
    found = []
    for package in ("policy", "cluster", "appliance"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and (node.name.endswith("ConfigError") or node.name in ("SettingsError",)):
                    found.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert found == ["policy/config.py:ConfigError"]
