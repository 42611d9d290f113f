"""One registry of error codes (policy/codes.py), held to the source by reading it.

Every code Sluice raises or answers with (found with ``ast``: the code given to a
constructor of the ``policy.errors`` tree, a class's own ``code``, the code of
``error_response``/``error_body``, and codes that reach those through a variable
or a helper's parameter) is registered with its own message; every registered
code is raised somewhere; and an answer built from a literal status and code
uses the registry's status.  Codes relayed from elsewhere are the only ones a
client may see with the generic message: their places are listed in RELAYED.
"""

from __future__ import annotations

import ast
import collections
import functools
from collections.abc import Iterator
from pathlib import Path

from appliance.api.errors import error_body
from appliance.quotas.policy import LIMIT_NAMES
from policy.codes import CODES

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("policy", "cluster", "appliance")
ANSWER_FUNCTIONS = {"error_response": 1, "error_body": 1}  # name: the position of the code
CODE_POSITION = {"QuotaExceeded": 3}  # (limit, scope, retry_after, code): see test_quota_codes

# Codes that come from the other side, as text: a gate's ERROR payload or GOAWAY frame
# (relayed with the gate's status, or prefixed gate_), a code that an error carries on.
RELAYED = {
    ("appliance/transport/replies.py", "RelayedError"),
    ("appliance/transport/replies.py", "TransportError"),
    ("cluster/gate/session.py", "PeerError"),
    ("appliance/api/errors.py", "error_body"),
    ("appliance/api/errors.py", "error_response"),
    ("appliance/api/openai.py", "error_body"),
    ("appliance/auth/oidc.py", "LoginFailed"),  # id_token_<the token's reason>
    ("cluster/standin/_audio.py", "AudioError"),  # the form parser's code, carried on
}


@functools.cache
def _modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(ROOT)): ast.parse(path.read_text(), str(path))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _error_classes(modules: dict[str, ast.Module]) -> dict[str, ast.ClassDef]:
    """Every class that descends from SluiceError, by name."""
    classes = {n.name: n for tree in modules.values() for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    return {name: classes[name] for name in _branch(classes, "SluiceError")}


def _branch(classes: dict[str, ast.ClassDef], root: str) -> set[str]:
    """``root`` and the classes below it (by name)."""
    branch = {root}
    grown = True
    while grown:
        grown = False
        for name, node in classes.items():
            if name not in branch and any(_name(base) in branch for base in node.bases):
                branch.add(name)
                grown = True
    return branch


def _scopes(tree: ast.Module) -> Iterator[tuple[ast.AST, list[ast.AST]]]:
    """(node, the functions it is in, innermost first, then the module)."""

    def walk(node: ast.AST, scopes: list[ast.AST]) -> Iterator[tuple[ast.AST, list[ast.AST]]]:
        for child in ast.iter_child_nodes(node):
            yield child, scopes
            inner = [child, *scopes] if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scopes
            yield from walk(child, inner)

    return walk(tree, [tree])


def _bindings(name: str, scopes: list[ast.AST]) -> list[ast.expr]:
    """What ``name`` is bound to, in the innermost scope that binds it."""
    for scope in scopes:
        statements = ast.walk(scope) if not isinstance(scope, ast.Module) else iter(scope.body)
        found = [
            sub.value
            for sub in statements
            if isinstance(sub, (ast.Assign, ast.AnnAssign))
            and sub.value is not None
            and any(
                isinstance(t, ast.Name) and t.id == name for t in (sub.targets if isinstance(sub, ast.Assign) else [sub.target])
            )
        ]
        found += [  # `status, code = helper(...)`: the helper's literal returns, at that place
            ret
            for sub in ast.walk(scope)
            if isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Call)
            for target in sub.targets
            if isinstance(target, ast.Tuple)
            for index, element in enumerate(target.elts)
            if isinstance(element, ast.Name) and element.id == name
            for ret in _returns(_name(sub.value.func), index, scopes[-1])
        ]
        if found:
            return found
    return []


def _returns(function: str | None, index: int, module: ast.AST) -> list[ast.expr]:
    return [
        node.value.elts[index]
        for f in ast.walk(module)
        if isinstance(f, ast.FunctionDef) and f.name == function
        for node in ast.walk(f)
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple)
    ]


def _literals(node: ast.expr, scopes: list[ast.AST]) -> list[str] | None:
    """The strings ``node`` can be (None, for "no code", left out): a literal, either arm of
    a conditional, a name bound only to such, a value of a dict literal; None when it
    cannot be told."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str | None):
        return [node.value] if node.value is not None else []
    if isinstance(node, ast.IfExp):
        arms = [_literals(node.body, scopes), _literals(node.orelse, scopes)]
        return None if None in arms else [s for arm in arms for s in arm]  # type: ignore[union-attr]
    if isinstance(node, ast.Dict):
        return _all([_literals(value, scopes) for value in node.values])
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        return _all([_literals(bound, scopes) for bound in _bindings(node.value.id, scopes) or [node]])
    if isinstance(node, ast.Name):
        bound = _bindings(node.id, scopes)
        return _all([_literals(value, scopes) for value in bound]) if bound else None
    return None


def _all(found: list[list[str] | None]) -> list[str] | None:
    return None if None in found else [s for strings in found for s in strings]  # type: ignore[union-attr]


def _parameter(node: ast.expr, scope: ast.AST) -> int | None:
    """The position of the parameter ``node`` names in the function ``scope``."""
    if isinstance(node, ast.Name) and isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
        names = [a.arg for a in scope.args.args]
        if node.id in names:
            return names.index(node.id)
    return None


def _code_argument(call: ast.Call, position: int) -> ast.expr | None:
    if len(call.args) > position:
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == "code"), None)


@functools.cache
def collect() -> tuple[dict[str, set[str]], list[str], list[tuple[str, int, str]]]:
    """(code: where it is raised; places whose code cannot be told; (place, status, code) of answers)."""
    modules = _modules()
    classes = _error_classes(modules)
    carriers = {name: 0 for name in classes if name not in _branch(classes, "InternalError")}
    carriers |= ANSWER_FUNCTIONS | CODE_POSITION  # callables taking a code, and where
    codes: dict[str, set[str]] = collections.defaultdict(set)
    for name, node in classes.items():
        for statement in node.body:
            if (
                isinstance(statement, ast.Assign)
                and isinstance(statement.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == "code" for t in statement.targets)
            ):
                codes[statement.value.value].add(f"class {name}")
    unknown: dict[tuple[str, str], str] = {}
    answers: list[tuple[str, int, str]] = []
    grown = True
    while grown:  # a helper that passes its parameter on as a code carries codes too
        grown = False
        unknown.clear()
        for path, tree in modules.items():
            for node, scopes in _scopes(tree):
                if not isinstance(node, ast.Call) or (callee := _name(node.func)) not in carriers:
                    continue
                argument = _code_argument(node, carriers[callee])
                if argument is None:
                    continue
                where = f"{path}:{node.lineno}"
                position = _parameter(argument, scopes[0])
                if position is not None:
                    if scopes[0].name not in carriers:  # type: ignore[attr-defined]
                        carriers[scopes[0].name] = position  # type: ignore[attr-defined]
                        grown = True
                    continue
                values = _literals(argument, scopes)
                if values is not None:
                    for value in values:
                        codes[value].add(where)
                    status = node.args[0] if callee in ANSWER_FUNCTIONS and node.args else None
                    if isinstance(status, ast.Constant) and isinstance(status.value, int):
                        answers += [(where, status.value, value) for value in values]
                    continue
                unknown[(path, callee)] = where
    return codes, sorted(where for key, where in unknown.items() if key not in RELAYED), answers


def test_every_code_raised_is_registered() -> None:
    codes, _, _ = collect()
    missing = {code: sorted(places) for code, places in codes.items() if code not in CODES}
    assert not missing, f"codes raised but not in policy/codes.py: {missing}"


def test_every_place_that_raises_a_code_names_it() -> None:
    """A code built at run time cannot be checked: only the listed relays may do it."""
    _, unknown, _ = collect()
    assert not unknown, f"codes that cannot be told from the source (use a literal): {unknown}"


def test_the_registry_has_no_dead_codes() -> None:
    codes, _, _ = collect()
    quota = {f"{name}_exceeded" for name in LIMIT_NAMES}
    dead = sorted(set(CODES) - set(codes) - quota)
    assert not dead, f"codes in policy/codes.py that nothing raises: {dead}"


def test_quota_codes_are_registered() -> None:
    """QuotaExceeded names its code after the limit that refused."""
    for name in LIMIT_NAMES:
        assert f"{name}_exceeded" in CODES


def test_answers_use_the_registered_status() -> None:
    _, _, answers = collect()
    wrong = [(where, status, code) for where, status, code in answers if CODES[code].status != status]
    assert not wrong, f"answers whose status is not the registry's: {wrong}"


def _class_constant(classes: dict[str, ast.ClassDef], name: str, attribute: str) -> object:
    """``attribute`` of the class ``name``, from its own body or its nearest base's."""
    node = classes.get(name)
    if node is None:
        return None
    for statement in node.body:
        if (
            isinstance(statement, ast.Assign)
            and isinstance(statement.value, ast.Constant)
            and any(isinstance(t, ast.Name) and t.id == attribute for t in statement.targets)
        ):
            return statement.value.value
    for base in node.bases:
        found = _class_constant(classes, _name(base) or "", attribute)
        if found is not None:
            return found
    return None


def test_each_error_class_has_its_codes_status() -> None:
    """A class's own code is registered with the status the class answers with."""
    classes = _error_classes(_modules())
    wrong = []
    for name, node in classes.items():
        if any(
            isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "code" for t in s.targets) for s in node.body
        ):
            code, status = _class_constant(classes, name, "code"), _class_constant(classes, name, "status")
            if CODES[code].status != status:  # type: ignore[index]
                wrong.append((name, code, status, CODES[code].status))  # type: ignore[index]
    assert not wrong, f"(class, code, its status, the registry's): {wrong}"


def test_every_code_has_its_own_message() -> None:
    generic = {"The request was rejected.", "The request could not be served."}
    messages = collections.Counter(entry.message for entry in CODES.values())
    for code, entry in CODES.items():
        rendered = error_body(entry.status, code).decode()
        assert entry.message not in generic and entry.message in rendered.replace('\\"', '"'), code
        assert messages[entry.message] == 1, f"{code} shares its message with another code"
        assert 400 <= entry.status <= 599 and entry.message.endswith("."), code


def test_reject_raising_the_base_error_itself() -> None:
    """Each failure has its own class (``SluiceError`` is only ever a base)."""
    bare = [
        f"{path}:{node.lineno}"
        for path, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _name(node.func) == "SluiceError"
    ]
    assert not bare, f"SluiceError raised directly (use or add a subclass in policy/errors.py): {bare}"
