"""No way from request bytes to a shell, an interpreter, a deserializer or a process.

A static check over the AST of every module of ``cluster/`` and ``policy/``
(names are resolved through each module's imports, so ``import subprocess as
sp`` or ``from os import system`` do not hide a call):

* nowhere: ``eval``, ``exec``, the builtin ``compile``, ``os.system``,
  ``os.popen``, any ``subprocess`` call with ``shell=`` other than a literal
  False, ``asyncio.create_subprocess_shell``, ``pickle`` / ``marshal`` /
  ``shelve`` imports, ``yaml.load`` (and its unsafe variants), ``__import__``
  or ``importlib.import_module`` with a computed name, and ``getattr`` on
  ``os``, ``subprocess``, ``builtins`` or ``importlib`` (which would hide all
  of the above);
* in ``policy/``, ``cluster/gate/`` and every ``cluster`` module the gate
  imports (the gate's static import closure): no process at all -- no
  ``subprocess``, ``asyncio.create_subprocess_*``, ``os.exec*``,
  ``os.spawn*``, ``os.posix_spawn*``, ``os.fork*`` or ``pty`` call, and no
  ``import subprocess``.

Allowed, on purpose, and only in the four modules of ``PROCESS_ALLOWED``
(each with its reason there): Slurm's commands, local model servers, the
detached ``sluice-cluster scheduler --once`` pass that the gate kicks on a
ping, and the stand-in model server -- with argv from the operator's
configuration and the gate's own config path, never from request data.  Their
argv is reviewed in their own tests; here they may not use a shell either.
Of them, only the kick is in the gate's import closure
(``tests/security/test_layering.py`` holds it to that).

And in ``cluster/``, ``policy/`` and ``appliance/``: no ``assert`` statement
(``python -O`` strips them, so a security check must raise).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCANNED = ("cluster", "policy")
NO_ASSERT = ("cluster", "policy", "appliance")
# The only modules that may start processes (operator config, not request data).
PROCESS_ALLOWED = (
    # sbatch / squeue / scancel from an argv list, in a stripped environment; run by the scheduler's pass only.
    "cluster/scheduler/slurm.py",
    # the local backend's model servers (the embedded demo and the tests); run by the scheduler's pass only.
    "cluster/scheduler/local.py",
    # the gate's kick: a detached `sluice-cluster scheduler --once` whose argv is the gate's own config path.
    "cluster/scheduler/trigger.py",
    # the stand-in model server's own server process (demo and tests; never on a cluster's gate path).
    "cluster/standin/process.py",
)

BANNED_CALLS = {
    "eval": "eval",
    "exec": "exec",
    "compile": "the builtin compile",
    "builtins.eval": "eval",
    "builtins.exec": "exec",
    "builtins.compile": "the builtin compile",
    "os.system": "os.system",
    "os.popen": "os.popen",
    "asyncio.create_subprocess_shell": "a shell",
    "asyncio.subprocess.create_subprocess_shell": "a shell",
    "yaml.load": "yaml.load",
    "yaml.unsafe_load": "yaml.unsafe_load",
    "yaml.full_load": "yaml.full_load",
    "yaml.load_all": "yaml.load_all",
}
BANNED_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
DYNAMIC_IMPORTS = {"__import__", "builtins.__import__", "importlib.import_module", "importlib.__import__"}
HIDING_MODULES = {"os", "subprocess", "builtins", "importlib", "asyncio"}
PROCESS_PREFIXES = (
    "subprocess.",
    "asyncio.create_subprocess_",
    "asyncio.subprocess.create_subprocess_",
    "os.exec",
    "os.spawn",
    "os.posix_spawn",
    "os.fork",
    "os.forkpty",
    "pty.",
    "multiprocessing.",
)


def _modules(tops: tuple[str, ...]) -> Iterator[Path]:
    for top in tops:
        yield from sorted(p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _aliases(tree: ast.AST, package: str) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from every import in the module."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}" if base else alias.name
    return names


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def _package(path: Path) -> str:
    """The package a module's relative imports start from (its own, for an __init__.py)."""
    return ".".join(path.relative_to(ROOT).parts[:-1])


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def problems_in(source: str, where: str, package: str, *, processes_banned: bool) -> list[str]:
    """Every banned construct in ``source`` (a module of ``package``), as 'where:line: what'."""
    tree = ast.parse(source, where)
    aliases = _aliases(tree, package)
    found: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{where}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [_absolute(node, package)]
            if isinstance(node, ast.ImportFrom):
                modules += [f"{modules[0]}.{a.name}" for a in node.names]
            for module in modules:
                if module.split(".")[0] in BANNED_MODULES:
                    flag(node, f"imports {module} (a deserializer that runs code)")
                if processes_banned and module.split(".")[0] in ("subprocess", "pty", "multiprocessing"):
                    flag(node, f"imports {module} where no process may be started")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        if name in BANNED_CALLS:
            flag(node, f"calls {BANNED_CALLS[name]}")
        if name in DYNAMIC_IMPORTS and not (node.args and isinstance(node.args[0], ast.Constant)):
            flag(node, f"{name} with a computed module name")
        if name in ("getattr", "builtins.getattr") and node.args:
            target = _dotted(node.args[0], aliases)
            if target in HIDING_MODULES:
                flag(node, f"getattr on the module {target} (hides what is called)")
        if name.startswith(("subprocess.", "asyncio.create_subprocess_", "asyncio.subprocess.")):
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                    flag(node, f"{name} with shell={ast.unparse(keyword.value)}")
        if processes_banned and name.startswith(PROCESS_PREFIXES):
            flag(node, f"starts a process ({name}) where none may be started")
    return found


def _gate_closure() -> set[str]:
    """Every cluster/policy module the gate imports, directly or not (function-level imports too)."""
    paths = {_module_name(p): p for p in _modules(SCANNED)}
    seen: set[str] = set()
    todo = [name for name in paths if name == "cluster.gate" or name.startswith("cluster.gate.")]
    while todo:
        name = todo.pop()
        if name in seen or name not in paths:
            continue
        seen.add(name)
        path = paths[name]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = _package(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return seen


GATE_CLOSURE = _gate_closure()


def _processes_banned(path: Path) -> bool:
    rel = _rel(path)
    if rel in PROCESS_ALLOWED:
        return False
    return rel.startswith(("policy/", "cluster/gate/")) or _module_name(path) in GATE_CLOSURE


@pytest.mark.parametrize("path", list(_modules(SCANNED)), ids=_rel)
def test_no_dangerous_calls(path: Path) -> None:
    found = problems_in(path.read_text(encoding="utf-8"), _rel(path), _package(path), processes_banned=_processes_banned(path))
    assert found == []


def test_gate_closure_is_found() -> None:
    """The closure really follows the gate's imports (else the rule above would check nothing)."""
    assert {"cluster.gate.entry", "cluster.gate.session", "cluster.backend_client", "policy.grammar"} <= GATE_CLOSURE
    assert "cluster.standin.server" not in GATE_CLOSURE


@pytest.mark.parametrize("path", list(_modules(NO_ASSERT)), ids=_rel)
def test_no_assert_in_shipped_code(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    lines = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert lines == [], f"{_rel(path)}: assert at lines {lines} (stripped by python -O: raise instead)"


# -- the checker itself catches what it claims to -----------------------------------

CAUGHT = [
    "eval(data)",
    "exec(code)",
    "compile(src, 'f', 'exec')",
    "import builtins\nbuiltins.eval('1')",
    "import os\nos.system('ls')",
    "import os as o\no.popen('ls')",
    "from os import system\nsystem('ls')",
    "import subprocess\nsubprocess.run('ls', shell=True)",
    "import subprocess as sp\nsp.Popen(['ls'], shell=flag)",
    "from subprocess import check_output\ncheck_output('ls', shell=True)",
    "import asyncio\nasyncio.create_subprocess_shell('ls')",
    "import pickle",
    "from marshal import loads",
    "import yaml\nyaml.load(text)",
    "__import__(name)",
    "import importlib\nimportlib.import_module(name)",
    "import os\ngetattr(os, 'system')('ls')",
]
CAUGHT_WHERE_NO_PROCESS = [
    "import subprocess",
    "import asyncio\nasyncio.create_subprocess_exec('ls')",
    "from asyncio import create_subprocess_exec\ncreate_subprocess_exec('ls')",
    "import os\nos.execv('/bin/sh', ['sh'])",
    "import os\nos.posix_spawn('/bin/sh', ['sh'], {})",
    "import pty\npty.spawn('sh')",
]
ALLOWED = [
    "import re\nre.compile('x')",
    "self.compile(spec)",
    "__import__('uvloop')",
    "import json\njson.loads(b)",
    "import yaml\nyaml.safe_load(text)",
    "import subprocess\nsubprocess.run(['sbatch', path], shell=False)",
]


@pytest.mark.parametrize("source", CAUGHT)
def test_checker_catches(source: str) -> None:
    assert problems_in(source, "snippet", "cluster.scheduler", processes_banned=False)


@pytest.mark.parametrize("source", CAUGHT_WHERE_NO_PROCESS)
def test_checker_catches_processes_in_the_gate(source: str) -> None:
    assert problems_in(source, "snippet", "cluster.gate", processes_banned=True)
    assert not problems_in(source, "snippet", "cluster.scheduler", processes_banned=False)


@pytest.mark.parametrize("source", ALLOWED)
def test_checker_allows(source: str) -> None:
    assert problems_in(source, "snippet", "cluster.scheduler", processes_banned=False) == []
