"""The arrows between Sluice's packages (DESIGN.md "Packages"), checked by parsing imports.

Nothing is imported: every module of ``policy``, ``cluster``, ``appliance``
and ``sluice_sdk`` is read with :mod:`ast`, and each import statement becomes
an edge to the module it loads (``from pkg import name`` counts as
``pkg.name`` where that is a module, else as ``pkg``; relative imports are
resolved).  Each statement is marked by where it stands:

* ``module``: runs at import time (module body, class bodies, ``try`` blocks);
* ``typing``: under ``if TYPE_CHECKING:``, never run, yet a dependency of the design;
* ``deferred``: inside a function, run on first use (the gate's sealed path
  loads its crypto code so, and ``sluice_sdk`` its ``httpx2`` transport).

The rules:

* ``policy`` imports nothing from ``cluster``, ``appliance`` or ``sluice_sdk``,
  and ``cluster`` nothing from ``appliance`` (any kind of import);
* ``appliance`` never reaches the code that opens sealed requests: not
  directly (the SDK's gateway recipe, its private keys and replay guard, the
  request-opening names of its OHTTP module, the gate's sealed module and key
  ring), and not through anything it imports;
* the gate's import closure (``sluice-cluster gate``: ``cluster.cli``'s
  module-level imports, then ``cluster.gate.entry`` and everything it
  imports, of every kind) holds no module that starts a process, except the
  pass kick in :mod:`cluster.scheduler.trigger`;
* no import cycle, counting every edge: ``module``, ``typing`` and
  ``deferred`` alike.  A type-only or function-level import hides a cycle from
  the interpreter, not from the reader: the gate's ``forward`` -> ``sealed``
  (in a function) -> ``session`` -> ``forward`` (under ``TYPE_CHECKING``) was
  such a circle, and is why the shared interfaces now live in
  :mod:`cluster.gate.sinks`.  A module that must load something late still
  may; it just cannot be loaded back by it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT
from tests.security.test_no_dangerous_calls import PROCESS_PREFIXES, problems_in

TOPS = ("policy", "cluster", "appliance", "sluice_sdk")

# What opens sealed requests (decrypts what clients sealed to the gate): the appliance must never load it.
OPENING_MODULES = frozenset(
    {"sluice_sdk.gateway", "sluice_sdk.keys", "sluice_sdk.replay", "cluster.gate.sealed", "cluster.sealed_keys"}
)
# The gateway half of sluice_sdk.ohttp (the module also holds the client's sealing half).
OPENING_NAMES = frozenset(
    {"decapsulate_request", "decapsulate_chunked_request", "ChunkedRequestOpener", "ResponseSealer",
     "ChunkedResponseSealer", "KeyRing", "GatewayKey", "open_request"}
)  # fmt: skip

# Process starters the gate may import, each with its reason.
GATE_MAY_START = {
    # a ping kicks a detached scheduler pass (one account only), argv = the gate's own config path
    "cluster.scheduler.trigger",
}


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    kind: str  # "module", "typing" or "deferred"
    names: tuple[str, ...]
    line: int


def _files() -> Iterator[Path]:
    for top in TOPS:
        yield from sorted(p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    def __init__(self, name: str, package: str, modules: set[str]) -> None:
        self.name, self.package, self.modules = name, package, modules
        self.kind = "module"
        self.edges: list[Edge] = []

    def _within(self, kind: str, nodes: list[ast.stmt]) -> None:
        outer, self.kind = self.kind, kind if self.kind == "module" else self.kind
        for node in nodes:
            self.visit(node)
        self.kind = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._within("deferred", node.body)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._within("typing", node.body)
            self._within(self.kind, node.orelse)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.edges.append(Edge(self.name, alias.name, self.kind, (), node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        names = tuple(alias.name for alias in node.names)
        submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in self.modules]
        for target in submodules or [base]:
            self.edges.append(Edge(self.name, target, self.kind, names, node.lineno))
        if submodules and len(submodules) < len(names):
            self.edges.append(Edge(self.name, base, self.kind, names, node.lineno))


def import_graph() -> tuple[dict[str, Path], list[Edge]]:
    """Every module of TOPS by name, and every import edge out of them."""
    paths = {_module_name(p): p for p in _files()}
    edges: list[Edge] = []
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        visitor = _Imports(name, package, set(paths))
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        edges += visitor.edges
    return paths, edges


PATHS, EDGES = import_graph()


def _where(edge: Edge) -> str:
    return f"{PATHS[edge.source].relative_to(ROOT)}:{edge.line}: imports {edge.target}"


def _top(module: str) -> str:
    return module.split(".")[0]


def _closure(roots: set[str], edges: list[Edge]) -> set[str]:
    out: dict[str, set[str]] = {}
    for edge in edges:
        out.setdefault(edge.source, set()).add(edge.target)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(out.get(name, ()))
    return seen


def test_graph_is_found() -> None:
    """The parser really sees imports (else every rule below would hold vacuously)."""
    assert {"policy.grammar", "cluster.gate.entry", "appliance.app", "sluice_sdk.gateway"} <= set(PATHS)
    found = {(e.source, e.target, e.kind) for e in EDGES}
    assert ("cluster.gate.entry", "cluster.gate.session", "module") in found
    assert ("cluster.gate.forward", "cluster.gate.sealed", "deferred") in found
    assert ("sluice_sdk", "sluice_sdk.connect", "typing") in found


def test_policy_imports_no_other_package() -> None:
    wrong = [_where(e) for e in EDGES if _top(e.source) == "policy" and _top(e.target) in {"cluster", "appliance", "sluice_sdk"}]
    assert wrong == [], "\n".join(wrong)


def test_cluster_never_imports_appliance() -> None:
    wrong = [_where(e) for e in EDGES if _top(e.source) == "cluster" and _top(e.target) == "appliance"]
    assert wrong == [], "\n".join(wrong)


def test_appliance_never_imports_opening_code() -> None:
    wrong = [
        _where(e) for e in EDGES if _top(e.source) == "appliance"
        and (e.target in OPENING_MODULES or (_top(e.target) == "sluice_sdk" and OPENING_NAMES & set(e.names)))
    ]  # fmt: skip
    assert wrong == [], "\n".join(wrong)
    reached = _closure({name for name in PATHS if _top(name) == "appliance"}, EDGES)
    opened = reached & {"sluice_sdk.gateway", "cluster.gate.sealed", "cluster.sealed_keys"}
    assert opened == set(), f"the appliance reaches the code that opens sealed requests: {sorted(opened)}"


def _starts_processes(name: str) -> bool:
    path = PATHS[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = problems_in(path.read_text(encoding="utf-8"), name, package, processes_banned=True)
    return any("process" in problem for problem in found)


def gate_closure(edges: list[Edge]) -> set[str]:
    """What ``sluice-cluster gate`` may load: cli's module-level imports, then all of the gate's."""
    cli = {e.target for e in edges if e.source == "cluster.cli" and e.kind == "module"}
    return ({"cluster.cli"} | _closure({"cluster.gate.entry"} | cli, edges)) & set(PATHS)


def test_gate_starts_no_process_but_the_kick() -> None:
    closure = gate_closure(EDGES)
    assert {"cluster.gate.sealed", "cluster.scheduler.trigger", "cluster.routing"} <= closure
    starters = sorted(name for name in closure if _starts_processes(name) and name not in GATE_MAY_START)
    assert starters == [], f"the gate imports modules that start processes: {starters}"


def test_process_check_sees_starters() -> None:
    assert PROCESS_PREFIXES and all(_starts_processes(m) for m in ("cluster.scheduler.slurm", "cluster.scheduler.local"))


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    out: dict[str, list[str]] = {}
    for edge in edges:
        if edge.target in PATHS and edge.target != edge.source:
            out.setdefault(edge.source, []).append(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in out.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(PATHS):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    found = cycles(EDGES)
    assert found == [], f"import cycles: {found}"


def test_cycle_check_sees_a_cycle() -> None:
    loop = [Edge("cluster.gate.sinks", "cluster.gate.session", "deferred", (), 1)]
    assert cycles(EDGES + loop) == [["cluster.gate.session", "cluster.gate.sinks"]]
