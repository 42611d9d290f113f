"""Strict JSON request bodies and the route policy that checks them.

Two halves, both run per request by the gate (the security boundary) and by the
appliance (for friendly early errors):

* :func:`parse_json` turns bytes into a JSON object and accepts only strict,
  unambiguous JSON: UTF-8 without a byte order mark, no trailing bytes, no
  duplicate keys, no NaN or infinities, no numbers beyond what any API field
  means, no lone surrogates, bounded nesting.
* :func:`load_routes` reads ``routes.toml`` (the route policy as data),
  validates the policy itself once, and compiles every route's schema into
  checker closures, so a request is checked without looking at the TOML again.
  :meth:`Route.check` parses, checks and re-serializes a body into a
  :class:`CheckedBody`: the backend only ever sees the gate's own bytes.

Every rejection raises :class:`~policy.errors.BodyRejected` with a short fixed
code and never the offending input: 400 for bodies that are not acceptable
JSON, 413 for bodies over the route's limit, 422 for JSON that breaks the
route's policy.  Codes:

================================= ====== ============================================
code                              status meaning
================================= ====== ============================================
``body_too_large``                413    more bytes than the route allows
``byte_order_mark``               400    starts with a UTF-8 byte order mark
``bad_encoding``                  400    not valid UTF-8
``invalid_json``                  400    not JSON (syntax)
``trailing_data``                 400    bytes after the JSON value
``duplicate_key``                 400    an object names a key twice
``bad_number``                    400    NaN, infinity, overflow, too many digits
``bad_string``                    400    a lone surrogate (``"\\ud800"``)
``too_deep``                      400    nesting deeper than the parser's bound
``not_object``                    400    the top level is not an object
``unknown_field``                 422    a field the policy does not list
``missing_field``                 422    a required field is absent
``wrong_type``                    422    a value of the wrong JSON type
``out_of_range``                  422    a number outside its range
``too_long``                      422    a string, array or map over its bound
``too_short``                     422    a string or array under its bound
``bad_value``                     422    a string outside its enum, prefix, pattern
``too_deep``                      422    a free-form document nested too deep
``stream_not_allowed``            422    ``"stream": true`` on a route without it
``stream_options_without_stream`` 422    ``stream_options`` without streaming
``store_not_supported``           422    Responses: ``store`` other than false
``server_state_not_supported``    422    Responses: a field that needs server state
================================= ====== ============================================

A route may name a ``dialect`` (``"responses"``, policy/_responses.py): rules
of one API family beyond its schema, such as refusing server-side state.

A route with ``body = "multipart"`` takes ``multipart/form-data`` instead of
JSON (policy/multipart.py, with its own codes): one audio file part
(``file_field``, at most ``max_file_bytes``) and fields checked by the same
schema after their text is typed (policy/_forms.py).  The gate forwards a form
it wrote itself, with its own boundary.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from .errors import BodyRejected, Disallowed

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_NUMBER_CHARS",
    "MAX_ROUTE_BODY_BYTES",
    "MAX_MODEL_CHARS",
    "SEALING_OVERHEAD",
    "DEFAULT_ROUTES_PATH",
    "RESPONSES",
    "CheckedBody",
    "Route",
    "RouteTable",
    "parse_json",
    "load_routes",
]

from ._forms import SCALAR_KINDS, form_body, form_object
from ._limits import (
    _BACKEND_PATH_RE,
    _METHODS,
    _NOT_JSON,
    _POLICY,
    _ROUTE_ID_RE,
    _TOO_LARGE,
    DEFAULT_ROUTES_PATH,
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    MAX_MODEL_CHARS,
    MAX_NUMBER_CHARS,
    MAX_ROUTE_BODY_BYTES,
    SEALING_OVERHEAD,
)
from ._responses import DIALECTS, RESPONSES, SERVER_STATE_FIELDS, forward_responses, prepare_responses
from ._schema import _ROUTE_KEYS, _Check, _Compiler, _fail
from ._strict_json import _ENCODER, _as_bytes, _decode, _serialize, parse_json
from .grammar import MAX_BODY_BYTES
from .multipart import FormSpec, boundary_of, parse_form

# ---------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------

# Route keys that may be left out.
_OPTIONAL_ROUTE_KEYS = frozenset({"dialect", "body", "file_field", "max_file_bytes"})
_BODY_KINDS = frozenset({"json", "multipart"})
# What the gate asks of every streamed request: the final usage, and usage so
# far on each chunk, so that a stream cut short is metered with what it delivered.
_FORCED_USAGE: Final = {"include_usage": True, "continuous_usage_stats": True}


@dataclass(frozen=True, slots=True)
class CheckedBody:
    """A body that passed its route's policy, and what the gate needs from it.

    ``body`` is the gate's own compact re-serialization, never the client's
    bytes.  It holds the prompt, so it stays out of ``repr`` (and logs).
    """

    model: str
    stream: bool
    # Whether the client asked for the final usage chunk of a stream
    # (stream_options.include_usage); the forwarded body may force it on.
    include_usage: bool
    # max_completion_tokens, else max_tokens, else max_output_tokens (Responses);
    # None when the client set none.
    max_tokens: int | None
    body: bytes = field(repr=False)
    # Whether the client asked for usage so far on every chunk
    # (stream_options.continuous_usage_stats); the forwarded body may force it on.
    continuous_usage: bool = False
    # The forwarded body's media type (a form's names the gate's own boundary).
    content_type: str = "application/json"
    # Seconds of audio in a form's file, where its container header says (else None).
    audio_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One route of the policy: where it goes and the compiled check of its bodies."""

    id: str
    path: str
    method: str
    max_body_bytes: int
    stream_allowed: bool
    max_depth: int
    _check: _Check = field(repr=False, compare=False)
    # The API family's own rules beyond the schema (policy/_responses.py), or None.
    dialect: str | None = None
    # Form routes: what the form may hold, and the schema kind of each part name.
    form: FormSpec | None = None
    _kinds: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def check_form(self, data: bytes, *, content_type: str | None = None, force_usage: bool = False) -> CheckedBody:
        """Parse a form route's body (``content_type`` names the boundary when known), type and check
        its fields, and write the gate's own form.  With ``force_usage``, a stream asks the
        backend for its usage (``stream_include_usage``)."""
        if self.form is None:
            raise BodyRejected("bad_content_type", 415)
        data = _as_bytes(data)
        if len(data) > self.max_body_bytes:
            raise BodyRejected("body_too_large", _TOO_LARGE)
        boundary = boundary_of(content_type) if content_type is not None else None
        form = parse_form(data, self.form, boundary)
        obj = form_object(form, self._kinds)
        self._check(obj)
        stream = obj.get("stream") is True
        include_usage = obj.get("stream_include_usage") is True
        if include_usage and not stream:
            raise BodyRejected("stream_options_without_stream", _POLICY)
        if force_usage and stream:
            obj = {**obj, "stream_include_usage": True}
        body, media = form_body(obj, form, self.form.file_field)
        return CheckedBody(
            obj["model"], stream, include_usage, None, body, content_type=media, audio_seconds=form.file.audio.seconds
        )

    def max_request_bytes(self, sealed: bool) -> int:
        """The most bytes a request to this route may declare: the one limit that
        the appliance (reading the client's body) and the gate (reading the
        ``call`` or ``sealed`` line) both apply.  A sealed request may add
        :data:`SEALING_OVERHEAD`, within the grammar's ``MAX_BODY_BYTES``."""
        if not sealed:
            return self.max_body_bytes
        return min(self.max_body_bytes + SEALING_OVERHEAD, MAX_BODY_BYTES)

    def check(self, data: bytes, *, force_usage: bool = False) -> CheckedBody:
        """Parse ``data`` as strict JSON, check it against this route, re-serialize it.

        With ``force_usage``, a streamed request's forwarded body has
        ``stream_options.include_usage`` and ``continuous_usage_stats`` set to
        true (the gate meters every stream, also one cut short);
        :attr:`CheckedBody.include_usage` and ``continuous_usage`` still say
        what the client asked for, so the gate knows what to pass on.

        Raises :class:`~policy.errors.BodyRejected` (codes in the module doc).
        A form route's body goes to :meth:`check_form`.
        """
        if self.form is not None:
            return self.check_form(data, force_usage=force_usage)
        obj = _decode(_as_bytes(data), self.max_body_bytes)
        if self.dialect == RESPONSES:
            obj = prepare_responses(obj)
        if not self.stream_allowed and obj.get("stream") is True:
            raise BodyRejected("stream_not_allowed", _POLICY)
        # The compiled schema bounds the depth: it only descends into the
        # structure it names, and free-form ("json") nodes count their levels.
        self._check(obj)
        stream = obj.get("stream") is True
        options = obj.get("stream_options")
        if options is not None and not stream:
            raise BodyRejected("stream_options_without_stream", _POLICY)
        include_usage = options is not None and options.get("include_usage") is True
        continuous = options is not None and options.get("continuous_usage_stats") is True
        limit = obj.get("max_completion_tokens")
        if limit is None:
            limit = obj.get("max_tokens")
        if limit is None:
            limit = obj.get("max_output_tokens")
        if self.dialect == RESPONSES:
            # Usage always comes in the stream's response.completed event.
            return CheckedBody(obj["model"], stream, stream, limit, _serialize(forward_responses(obj)))
        if force_usage and stream and not (include_usage and continuous):
            obj = {**obj, "stream_options": {**(options or {}), **_FORCED_USAGE}}
        # Serializing also refuses lone surrogates (they cannot be UTF-8).
        return CheckedBody(obj["model"], stream, include_usage, limit, _serialize(obj), continuous)

    def with_model(self, data: bytes, model: str, *, content_type: str | None = None) -> bytes:
        """``data`` (already checked) naming ``model`` instead: an alias resolved by the appliance.

        A JSON body is re-serialized as :meth:`serialize` does; a form is written
        again with a boundary of its own (the gate reads it from the first line).
        """
        if self.form is None:
            return self.serialize({**_decode(_as_bytes(data), self.max_body_bytes), "model": model})
        form = parse_form(_as_bytes(data), self.form, boundary_of(content_type) if content_type is not None else None)
        obj = {**form_object(form, self._kinds), "model": model}
        self._check(obj)
        return form_body(obj, form, self.form.file_field)[0]

    def serialize(self, obj: Mapping[str, Any]) -> bytes:
        """The compact encoding of ``obj``, checked against this route as if it came in.

        For bodies built in code (the appliance's own requests): the result is
        exactly what :meth:`check` would forward.  Raises
        :class:`~policy.errors.BodyRejected`; a value JSON cannot hold at all
        (a set, bytes) is a programming error and raises ``TypeError``.
        """
        failure = None
        try:
            data = _ENCODER.encode(obj).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (a ValueError too: test it first)
            failure = "bad_string"
        except ValueError:  # NaN or an infinity
            failure = "bad_number"
        if failure is not None:
            raise BodyRejected(failure, _NOT_JSON)
        return self.check(data).body


@dataclass(frozen=True, slots=True, eq=False)
class RouteTable:
    """The routes of one policy file, by id."""

    routes: Mapping[str, Route]

    def get(self, route_id: str) -> Route:
        """The route ``route_id``; an unknown id raises ``Disallowed("unknown_route")``."""
        route = self.routes.get(route_id) if type(route_id) is str else None
        if route is None:
            raise Disallowed("unknown_route")
        return route

    @property
    def ids(self) -> tuple[str, ...]:
        """The route ids, in the order the policy file lists them."""
        return tuple(self.routes)


def load_routes(path: str | os.PathLike[str] | None = None) -> RouteTable:
    """Read, validate and compile a route policy (default: ``routes.toml`` beside this module).

    The policy is checked whole before anything uses it: unknown keys and
    schema keywords, missing or inconsistent bounds, unresolvable or looping
    refs and ambiguous unions raise ``ValueError`` naming the key.
    """
    source = Path(path) if path is not None else DEFAULT_ROUTES_PATH
    with open(source, "rb") as f:
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{source.name}: not valid TOML: {exc}") from None
    name = source.name
    for key in doc:
        if key not in ("types", "routes"):
            _fail(f"{name}: {key}", "unknown top-level key (expected types, routes)")
    types = doc.get("types", {})
    if not isinstance(types, dict):
        _fail(f"{name}: types", "must be a table of named schemas")
    routes = doc.get("routes")
    if not isinstance(routes, dict) or not routes:
        _fail(f"{name}: routes", "must be a non-empty table of routes")
    compiler = _Compiler(types, name)
    # Every named type is validated, used or not, at the shallowest depth.
    for type_name in types:
        compiler.compile({"ref": type_name}, f"types.{type_name}", 1, MAX_JSON_DEPTH)
    table = {route_id: _route(compiler, route_id, spec) for route_id, spec in routes.items()}
    return RouteTable(MappingProxyType(table))


def _route(compiler: _Compiler, route_id: str, spec: Any) -> Route:
    """Validate one [routes.<id>] table and compile its body schema."""
    where = f"routes.{route_id}"
    fail = compiler.fail
    if _ROUTE_ID_RE.fullmatch(route_id) is None:
        fail(where, "a route id is 1 to 32 lowercase letters, digits or _, starting with a letter")
    if not isinstance(spec, dict):
        fail(where, "must be a table")
    for key in spec:
        if key not in _ROUTE_KEYS and key not in _OPTIONAL_ROUTE_KEYS:
            fail(f"{where}.{key}", "unknown route key")
    dialect = spec.get("dialect")
    if dialect is not None and dialect not in DIALECTS:
        fail(f"{where}.dialect", f"must be one of {sorted(DIALECTS)}")
    for key in sorted(_ROUTE_KEYS):
        if key not in spec:
            fail(f"{where}.{key}", "required")
    path = spec["path"]
    if type(path) is not str or _BACKEND_PATH_RE.fullmatch(path) is None:
        fail(f"{where}.path", "must be an absolute /v1/... path of plain segments")
    method = spec["method"]
    if method not in _METHODS:
        fail(f"{where}.method", f"must be one of {sorted(_METHODS)}")
    max_body = spec["max_body_bytes"]
    if type(max_body) is not int or not 1 <= max_body <= MAX_ROUTE_BODY_BYTES:
        fail(f"{where}.max_body_bytes", f"must be an integer from 1 to {MAX_ROUTE_BODY_BYTES}")
    stream = spec["stream"]
    if type(stream) is not bool:
        fail(f"{where}.stream", "must be true or false")
    max_depth = spec["max_depth"]
    if type(max_depth) is not int or not 1 <= max_depth <= MAX_JSON_DEPTH:
        fail(f"{where}.max_depth", f"must be an integer from 1 to {MAX_JSON_DEPTH}")
    body = compiler.compile(
        {"type": "object", "fields": spec["fields"], "required": spec["required"]},
        where,
        1,
        max_depth,
    )
    fields = body.children
    model = fields.get("model")
    if model is None or "model" not in body.required:
        fail(f"{where}.required", "every route requires the field 'model'")
    if model.kind != "string" or model.nullable:
        fail(f"{where}.fields.model", "must be a string that is not nullable")
    if model.max_length is None or model.max_length > MAX_MODEL_CHARS:
        fail(f"{where}.fields.model", f"max_length must be at most {MAX_MODEL_CHARS}")
    body_kind = spec.get("body", "json")
    if body_kind not in _BODY_KINDS:
        fail(f"{where}.body", f"must be one of {sorted(_BODY_KINDS)}")
    form: FormSpec | None = None
    kinds: Mapping[str, str] = MappingProxyType({})
    if body_kind == "multipart":
        form, kinds = _form_spec(compiler, where, spec, max_body, stream, body)
    else:
        for key in ("file_field", "max_file_bytes"):
            if key in spec:
                fail(f"{where}.{key}", 'only for body = "multipart"')
        if dialect == RESPONSES:
            for key in SERVER_STATE_FIELDS:
                if key in fields:
                    fail(f"{where}.fields.{key}", "a server-state field: the responses dialect refuses it")
        if stream and dialect == RESPONSES:
            flag = fields.get("stream")
            if flag is None or flag.kind != "boolean":
                fail(f"{where}.fields.stream", "a streaming route needs a boolean 'stream' field")
            if "stream_options" in fields:
                fail(f"{where}.fields.stream_options", "responses report usage in the stream themselves")
        elif stream:
            flag, options = fields.get("stream"), fields.get("stream_options")
            if flag is None or flag.kind != "boolean":
                fail(f"{where}.fields.stream", "a streaming route needs a boolean 'stream' field")
            usage = options.children.get("include_usage") if options is not None else None
            if options is None or options.kind != "object" or usage is None or usage.kind != "boolean":
                fail(
                    f"{where}.fields.stream_options",
                    "a streaming route needs an object with a boolean 'include_usage'",
                )
        else:
            for key in ("stream", "stream_options"):
                if key in fields:
                    fail(f"{where}.fields.{key}", "listed on a route with stream = false")
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            limit = fields.get(key)
            if limit is not None and limit.kind != "integer":
                fail(f"{where}.fields.{key}", "must be an integer")
    return Route(
        id=route_id,
        path=path,
        method=method,
        max_body_bytes=max_body,
        stream_allowed=stream,
        max_depth=max_depth,
        _check=body.check,
        dialect=dialect,
        form=form,
        _kinds=kinds,
    )


def _form_spec(
    compiler: _Compiler, where: str, spec: dict[str, Any], max_body: int, stream: bool, body: Any
) -> tuple[FormSpec, Mapping[str, str]]:
    """Validate the form keys of a ``body = "multipart"`` route: its form, and each part's schema kind."""
    fail = compiler.fail
    if "dialect" in spec:
        fail(f"{where}.dialect", "not for form routes")
    file_field = spec.get("file_field")
    if type(file_field) is not str or not file_field.isidentifier() or not file_field.islower():
        fail(f"{where}.file_field", "required: the file part's name (lowercase letters, digits, _)")
    if file_field in body.children:
        fail(f"{where}.file_field", "names a field that is also in fields")
    max_file = spec.get("max_file_bytes")
    if type(max_file) is not int or not 1 <= max_file <= max_body:
        fail(f"{where}.max_file_bytes", "required: an integer from 1 to max_body_bytes")
    kinds: dict[str, str] = {}
    for name, node in body.children.items():
        if node.kind == "array" and node.item is not None and node.item.kind in SCALAR_KINDS:
            kinds[f"{name}[]"] = node.item.kind
        elif node.kind in SCALAR_KINDS:
            kinds[name] = node.kind
        else:
            fail(f"{where}.fields.{name}", "a form field is a string, number, boolean or an array of them")
    if stream:
        for key in ("stream", "stream_include_usage"):
            flag = body.children.get(key)
            if flag is None or flag.kind != "boolean":
                fail(f"{where}.fields.{key}", "a streaming form route needs this boolean field")
    else:
        for key in ("stream", "stream_include_usage"):
            if key in body.children:
                fail(f"{where}.fields.{key}", "listed on a route with stream = false")
    form = FormSpec(
        fields=frozenset(k for k in kinds if not k.endswith("[]")),
        repeated=frozenset(k for k in kinds if k.endswith("[]")),
        file_field=file_field,
        max_file_bytes=max_file,
    )
    return form, MappingProxyType(kinds)
