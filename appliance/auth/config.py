"""The ``[auth]``, ``[oidc]`` and ``[access]`` sections of the appliance configuration.

Validated once, at start; every error names the key and the fix.  Secrets
(the session signing key, the OIDC client secret) are named by path.

```toml
[auth]
database = "/var/lib/sluice/auth.sqlite3"       # API keys, users' groups, web sessions
# database_dsn_file = "/etc/sluice/db.dsn"      # or: PostgreSQL, shared by several replicas (a libpq DSN
#                                               # with its password, in a file); instead of `database`
public_url = "https://llm.example.org"          # this appliance as browsers reach it (origin only)
session_secret_file = "/etc/sluice/session.key" # at least 32 random characters; signs the cookie
cookie_secure = true          # false is accepted only for a loopback http public_url (local testing)
cookie_samesite = "lax"       # or "strict" (the OIDC callback is a cross-site redirect: lax)
session_lifetime = 28800      # seconds a web sign-in lasts (absolute)
groups_max_age = 2592000      # an API key stops working when its owner's groups are older (30 days)
key_max_days = 365            # the longest expiry a user may give a key from the web

[auth.trusted_header]         # a reverse proxy that authenticates (e.g. mod_auth_openidc)
proxies = ["10.0.0.5/32"]     # only these peer addresses may send the headers
user_header = "X-Remote-User"
groups_header = "X-Remote-Groups"     # optional; split on groups_separator
groups_separator = ","
email_header = "X-Remote-Email"       # optional
name_header = "X-Remote-Name"         # optional
issuer = "https://sso.example.org/realms/research"   # user ids are "<issuer>#<header value>"
logout_url = "https://llm.example.org/redirect_uri?logout=https%3A%2F%2Fllm.example.org%2F"

[oidc]
issuer = "https://sso.example.org/realms/research"
client_id = "sluice"
client_secret_file = "/etc/sluice/oidc-client-secret"   # optional: a public client uses PKCE alone
scopes = ["openid", "email", "profile"]
algorithms = ["RS256", "ES256"]  # never "none" or HS*
leeway = 30                      # seconds of clock skew allowed on exp, nbf, iat
claims = { email = "email", name = "name", groups = "groups" }
rp_logout = true                 # log out at the provider too, where it offers end_session_endpoint
api_audience = "sluice-api"      # accept Bearer JWT access tokens with this audience on /v1
api_scope = "sluice"             # optional: and with this scope

[access]
policy = "/etc/sluice/access.toml"   # which groups may use which models (default: deny all)
# unsafe_allow_all = true            # UNSAFE: every caller may use every model (logged at every start)
```
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from .access import AccessPolicyError, load_access_policy
from .identity import ClaimNames
from .secret import read_secret_file
from .tokens import ALLOWED_ALGORITHMS

__all__ = [
    "AuthSettings",
    "ConfigError",
    "IdentitySettings",
    "OidcSettings",
    "TrustedHeaderSettings",
    "check_url",
    "is_loopback_http",
    "parse_identity",
]

# The packaged default group policy: no groups, so every model is denied.
DEFAULT_ACCESS_POLICY: Final = Path(__file__).resolve().parent.parent.parent / "policy" / "access.toml"

_HEADER_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class TrustedHeaderSettings:
    proxies: tuple[Network, ...]
    user_header: str = "x-remote-user"
    groups_header: str | None = None
    groups_separator: str = ","
    email_header: str | None = None
    name_header: str | None = None
    issuer: str = "proxy"
    logout_url: str | None = None


@dataclass(frozen=True, slots=True)
class AuthSettings:
    database: Path | None = None
    public_url: str | None = None
    session_secret_file: Path | None = None
    cookie_secure: bool = True
    cookie_samesite: str = "lax"
    session_lifetime: float = 8 * 3600.0
    groups_max_age: float = 30 * 86400.0
    key_max_days: int = 365
    trusted_header: TrustedHeaderSettings | None = None
    # PostgreSQL instead of the SQLite file (several replicas): a file holding the DSN.
    database_dsn_file: Path | None = None

    @property
    def has_database(self) -> bool:
        return self.database is not None or self.database_dsn_file is not None


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret_file: Path | None = None
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 30.0
    claims: ClaimNames = field(default_factory=ClaimNames)
    rp_logout: bool = True
    api_audience: str | None = None
    api_scope: str | None = None


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    auth: AuthSettings = AuthSettings()
    oidc: OidcSettings | None = None
    # None: no [access] section (see appliance.auth.build for what that means).
    access_policy: Path | None = None
    # [access] unsafe_allow_all = true: every caller may use every model (named unsafe, logged at start).
    unsafe_allow_all: bool = False

    @property
    def users_sign_in(self) -> bool:
        """Whether people sign in (OIDC or a trusted proxy), so groups decide access."""
        return self.oidc is not None or self.auth.trusted_header is not None


class Table:
    """Typed access to one TOML table, with errors that name the key."""

    def __init__(self, data: Any, where: str, allowed: set[str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]} is not a known setting (known: {', '.join(sorted(allowed))})")
        self.data, self.where = data, where

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise ConfigError(f"{self.where}.{key} is required")
            return default
        value = self.data[key]
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise ConfigError(f"{self.where}.{key} must be a {kind.__name__}")
        return value

    def number(self, key: str, kind: type, low: float, high: float, default: Any) -> Any:
        value = self.get(key, kind, default)
        if not low <= value <= high:
            raise ConfigError(f"{self.where}.{key} must be between {low} and {high}")
        return value

    def text(self, key: str, default: Any = ..., max_length: int = 1024) -> Any:
        value = self.get(key, str, default)
        if isinstance(value, str) and not (0 < len(value) <= max_length and value.isprintable()):
            raise ConfigError(f"{self.where}.{key} must be 1 to {max_length} printable characters")
        return value

    def strings(self, key: str, default: Any = ..., max_items: int = 64) -> Any:
        value = self.get(key, list, default)
        if isinstance(value, list):
            if not 0 < len(value) <= max_items or not all(isinstance(v, str) and v and v.isprintable() for v in value):
                raise ConfigError(f"{self.where}.{key} must be a list of 1 to {max_items} non-empty strings")
            return tuple(value)
        return value

    def path(self, key: str, base: Path, default: Any = ..., must_exist: bool = True) -> Any:
        value = self.text(key, default)
        if not isinstance(value, str):
            return value
        path = base / value
        if must_exist and not path.is_file():
            raise ConfigError(f"{self.where}.{key}: {path} does not exist")
        return path


def is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "") in ("127.0.0.1", "localhost", "::1")


def check_url(url: str, where: str, *, origin_only: bool = False) -> str:
    """``url`` if it is https (or http to a loopback host, for tests) with a host and no fragment."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        raise ConfigError(f"{where} is not a URL") from None
    if not parts.hostname or parts.fragment or "#" in url or parts.username or parts.password:
        raise ConfigError(f"{where} must be a URL with a host, without credentials or a fragment")
    if parts.scheme != "https" and not is_loopback_http(url):
        raise ConfigError(f"{where} must be https (http only to 127.0.0.1/localhost, for tests)")
    if origin_only and (parts.path not in ("", "/") or parts.query):
        raise ConfigError(f"{where} must be an origin only, like https://llm.example.org")
    return url.rstrip("/") if origin_only else url


def _header(table: Table, key: str, default: str | None) -> str | None:
    value: str | None = table.text(key, default, max_length=64)
    if value is None:
        return None
    value = value.lower()
    if not set(value) <= _HEADER_CHARS:
        raise ConfigError(f"{table.where}.{key} must be a header name (letters, digits and '-')")
    return value


def _trusted_header(data: Any, where: str) -> TrustedHeaderSettings:
    table = Table(data, where, {"proxies", "user_header", "groups_header", "groups_separator", "email_header",
                                "name_header", "issuer", "logout_url"})
    proxies: list[Network] = []
    for entry in table.strings("proxies"):
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"{where}.proxies: {entry!r} is not an address or CIDR network") from None
        if network.prefixlen == 0:
            raise ConfigError(f"{where}.proxies: {entry!r} trusts every address; list the proxies' own addresses")
        proxies.append(network)
    separator = table.text("groups_separator", ",", max_length=4)
    logout_url = table.text("logout_url", None)
    if logout_url is not None and not logout_url.startswith("/"):
        check_url(logout_url, f"{where}.logout_url")
    issuer = table.text("issuer", "proxy", max_length=512)
    if "#" in issuer:
        raise ConfigError(f"{where}.issuer must not contain '#'")
    return TrustedHeaderSettings(
        tuple(proxies), _header(table, "user_header", "x-remote-user") or "x-remote-user",
        _header(table, "groups_header", None), separator, _header(table, "email_header", None),
        _header(table, "name_header", None), issuer, logout_url,
    )


def _auth(data: Any, base: Path) -> AuthSettings:
    table = Table(data, "auth", {"database", "public_url", "session_secret_file", "cookie_secure", "cookie_samesite",
                                 "session_lifetime", "groups_max_age", "key_max_days", "trusted_header",
                                 "database_dsn_file"})
    database = table.path("database", base, None, must_exist=False)
    if database is not None and not database.parent.is_dir():
        raise ConfigError(f"auth.database: the folder {database.parent} does not exist")
    dsn_file = table.path("database_dsn_file", base, None)
    if dsn_file is not None and database is not None:
        raise ConfigError("auth.database and auth.database_dsn_file are alternatives: set one")
    if dsn_file is not None:
        try:
            read_secret_file(dsn_file, "auth.database_dsn_file", 1)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    public_url = table.text("public_url", None)
    if public_url is not None:
        public_url = check_url(public_url, "auth.public_url", origin_only=True)
    secure = table.get("cookie_secure", bool, True)
    if not secure and (public_url is None or not is_loopback_http(public_url)):
        raise ConfigError("auth.cookie_secure = false is only for a loopback http public_url (local testing)")
    samesite = table.get("cookie_samesite", str, "lax")
    if samesite not in ("lax", "strict"):
        raise ConfigError("auth.cookie_samesite must be 'lax' or 'strict'")
    trusted = table.data.get("trusted_header")
    return AuthSettings(
        database, public_url, table.path("session_secret_file", base, None), secure, samesite,
        table.number("session_lifetime", float, 60, 7 * 86400, 8 * 3600.0),
        table.number("groups_max_age", float, 60, 366 * 86400, 30 * 86400.0),
        table.number("key_max_days", int, 1, 3650, 365),
        None if trusted is None else _trusted_header(trusted, "auth.trusted_header"),
        dsn_file,
    )


def _oidc(data: Any, base: Path) -> OidcSettings:
    table = Table(data, "oidc", {"issuer", "client_id", "client_secret_file", "scopes", "algorithms", "leeway",
                                 "claims", "rp_logout", "api_audience", "api_scope"})
    issuer = check_url(table.text("issuer"), "oidc.issuer")
    if urlsplit(issuer).query:
        raise ConfigError("oidc.issuer must not have a query")
    scopes = table.strings("scopes", ("openid", "email", "profile"))
    if "openid" not in scopes or not all(s.isascii() and " " not in s for s in scopes):
        raise ConfigError("oidc.scopes must include 'openid' and be single words")
    algorithms = table.strings("algorithms", ("RS256", "ES256"), max_items=len(ALLOWED_ALGORITHMS))
    bad = [a for a in algorithms if a not in ALLOWED_ALGORITHMS]
    if bad:
        raise ConfigError(f"oidc.algorithms: {bad[0]!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_ALGORITHMS))})")
    claims_table = Table(table.get("claims", dict, {}), "oidc.claims", {"email", "name", "groups"})
    claims = ClaimNames(
        claims_table.text("email", "email", 128), claims_table.text("name", "name", 128),
        claims_table.text("groups", "groups", 128),
    )
    return OidcSettings(
        issuer,
        table.text("client_id", max_length=256),
        table.path("client_secret_file", base, None),
        scopes, algorithms, table.number("leeway", float, 0, 300, 30.0), claims,
        table.get("rp_logout", bool, True),
        table.text("api_audience", None, 256), table.text("api_scope", None, 256),
    )


def parse_identity(data: dict[str, Any], base: Path) -> IdentitySettings:
    """The identity settings in the top-level ``data``; raises ConfigError."""
    auth = _auth(data.get("auth", {}), base)
    oidc = None if "oidc" not in data else _oidc(data["oidc"], base)
    access = None
    unsafe_allow_all = False
    if "access" in data:
        table = Table(data["access"], "access", {"policy", "unsafe_allow_all"})
        access = table.path("policy", base, None)
        unsafe_allow_all = table.get("unsafe_allow_all", bool, False)
        if access is not None and unsafe_allow_all:
            raise ConfigError("access: set either policy or unsafe_allow_all, not both")
    settings = IdentitySettings(auth, oidc, access, unsafe_allow_all)
    if settings.users_sign_in:
        if not auth.has_database:
            raise ConfigError("auth.database (or auth.database_dsn_file) is required when users sign in "
                              "([oidc] or [auth.trusted_header])")
        for key in ("public_url", "session_secret_file"):
            if getattr(auth, key) is None:
                raise ConfigError(f"auth.{key} is required when users sign in ([oidc] or [auth.trusted_header])")
    # Read what start-up will read, so that a bad file is reported here, by its key.
    checks = [(auth.session_secret_file, "auth.session_secret_file", 32)]
    if oidc is not None:
        checks.append((oidc.client_secret_file, "oidc.client_secret_file", 1))
    for path, what, length in checks:
        if path is not None:
            try:
                read_secret_file(path, what, length)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    if access is not None:
        try:
            load_access_policy(access)
        except AccessPolicyError as exc:
            raise ConfigError(f"access.policy: {exc}") from None
    return settings
