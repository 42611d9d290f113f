"""The bounds of request bodies and of the route policy, each with its reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------

# The deepest nesting parse_json accepts by default, and the most any route's
# max_depth may allow.  Real API bodies nest under 30 levels (a tool's JSON
# Schema is the deepest part); the C scanner recurses once per level and stops
# at Python's recursion limit anyway (RecursionError, caught as too_deep).
MAX_JSON_DEPTH: Final = 64

# The most digits an integer literal may have.  20 digits hold every signed
# and unsigned 64-bit value (seeds, token ids); more means nothing in any API
# field, and int() on long digit strings costs quadratic time.
MAX_INT_DIGITS: Final = 20

# The longest float literal: the shortest repr of any double is at most 24
# characters, so 64 leaves room for clients that print more digits.
MAX_NUMBER_CHARS: Final = 64

# The ceiling on any route's max_body_bytes, and so on any string or array
# bound in the policy: the same 8 MiB as the gate grammar's MAX_BODY_BYTES,
# which bounds the declared length of every body.
MAX_ROUTE_BODY_BYTES: Final = 8 * 1024 * 1024

# Bytes a sealed request may add to its route's limit: the RFC 9458 header
# and HPKE enc (about 40 bytes), the AEAD tag (16), the Binary HTTP framing of
# the inner request's method, path and headers (bounded by the client's few
# fields), and for chunked OHTTP a length and a tag per chunk (about 20 bytes
# per 16 KiB chunk, under 6 KiB for the largest route).  64 KiB covers all of
# it with room; the inner body is then checked against the route's own limit.
SEALING_OVERHEAD: Final = 64 * 1024

# The longest model name: request.abnf's `model-name` is 1 to 128 characters,
# and the body's model must be comparable with the one in the `call` line.
MAX_MODEL_CHARS: Final = 128

# The route policy that ships beside this module.
DEFAULT_ROUTES_PATH: Final = Path(__file__).with_name("routes.toml")

# Route ids as request.abnf spells them (lowercase words), and backend paths:
# absolute, under /v1, plain segments (no dots, no query, no escapes).
_ROUTE_ID_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
_BACKEND_PATH_RE: Final = re.compile(r"/v1(?:/[a-z0-9_\-]{1,64}){1,8}", re.ASCII)
_METHODS: Final = frozenset({"POST"})

# HTTP status hints of BodyRejected, by whose policy was broken.
_NOT_JSON: Final = 400
_TOO_LARGE: Final = 413
_POLICY: Final = 422

_UTF8_BOM: Final = b"\xef\xbb\xbf"
