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

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, overload
from urllib.parse import urlsplit

from policy.config import ConfigError, Table, build, config_keys, default, setting

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


@dataclass(frozen=True, slots=True)
class TrustedHeaderSettings:
    proxies: tuple[Network, ...]
    user_header: str = setting("x-remote-user", max_length=64)  # header names: lower case once read
    groups_header: str | None = setting(None, max_length=64)
    groups_separator: str = setting(",", max_length=4)
    email_header: str | None = setting(None, max_length=64)
    name_header: str | None = setting(None, max_length=64)
    issuer: str = setting("proxy", max_length=512)
    logout_url: str | None = setting(None, max_length=1024)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    database: Path | None = None
    public_url: str | None = setting(None, max_length=1024)
    session_secret_file: Path | None = setting(None, must_exist=True)
    cookie_secure: bool = True
    cookie_samesite: str = setting("lax", choices=("lax", "strict"))
    session_lifetime: float = setting(8 * 3600.0, low=60, high=7 * 86400)
    groups_max_age: float = setting(30 * 86400.0, low=60, high=366 * 86400)
    key_max_days: int = setting(365, low=1, high=3650)
    trusted_header: TrustedHeaderSettings | None = None
    # PostgreSQL instead of the SQLite file (several replicas): a file holding the DSN.
    database_dsn_file: Path | None = setting(None, must_exist=True)

    @property
    def has_database(self) -> bool:
        return self.database is not None or self.database_dsn_file is not None


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str = setting(max_length=1024)
    client_id: str = setting(max_length=256)
    client_secret_file: Path | None = setting(None, must_exist=True)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    algorithms: tuple[str, ...] = setting(("RS256", "ES256"), max_items=len(ALLOWED_ALGORITHMS))
    leeway: float = setting(30.0, low=0, high=300)
    claims: ClaimNames = field(default_factory=ClaimNames)
    rp_logout: bool = True
    api_audience: str | None = setting(None, max_length=256)
    api_scope: str | None = setting(None, max_length=256)


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


@overload
def _header(table: Table, key: str, value: str) -> str: ...
@overload
def _header(table: Table, key: str, value: None) -> None: ...
def _header(table: Table, key: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.lower()
    if not set(value) <= _HEADER_CHARS:
        raise table.error(key, "must be a header name (letters, digits and '-')")
    return value


def _trusted_header(data: Any, where: str) -> TrustedHeaderSettings:
    table = Table(data, where, config_keys(TrustedHeaderSettings))
    proxies: list[Network] = []
    for entry in table.strings("proxies"):
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise table.error("proxies", f": {entry!r} is not an address or CIDR network") from None
        if network.prefixlen == 0:
            raise table.error("proxies", f": {entry!r} trusts every address; list the proxies' own addresses")
        proxies.append(network)
    settings: TrustedHeaderSettings = build(TrustedHeaderSettings, table, proxies=tuple(proxies))
    if settings.logout_url is not None and not settings.logout_url.startswith("/"):
        check_url(settings.logout_url, f"{where}.logout_url")
    if "#" in settings.issuer:
        raise table.error("issuer", "must not contain '#'")
    return dataclasses.replace(
        settings,
        user_header=_header(table, "user_header", settings.user_header),
        groups_header=_header(table, "groups_header", settings.groups_header),
        email_header=_header(table, "email_header", settings.email_header),
        name_header=_header(table, "name_header", settings.name_header),
    )


def _auth(data: Any, base: Path) -> AuthSettings:
    table = Table(data, "auth", config_keys(AuthSettings))
    trusted = table.data.get("trusted_header")
    auth: AuthSettings = build(
        AuthSettings, table, base, trusted_header=None if trusted is None else _trusted_header(trusted, "auth.trusted_header")
    )
    if auth.database is not None and not auth.database.parent.is_dir():
        raise table.error("database", f": the folder {auth.database.parent} does not exist; create it or name another")
    if auth.database_dsn_file is not None:
        if auth.database is not None:
            raise ConfigError("auth.database and auth.database_dsn_file are alternatives: set one", key="auth.database")
        try:
            read_secret_file(auth.database_dsn_file, "auth.database_dsn_file", 1)
        except ValueError as exc:
            raise ConfigError(str(exc), key="auth.database_dsn_file") from None
    public_url = auth.public_url
    if public_url is not None:
        public_url = check_url(public_url, "auth.public_url", origin_only=True)
    if not auth.cookie_secure and (public_url is None or not is_loopback_http(public_url)):
        raise table.error("cookie_secure", "= false is only for a loopback http public_url (local testing)")
    return dataclasses.replace(auth, public_url=public_url)


def _oidc(data: Any, base: Path) -> OidcSettings:
    table = Table(data, "oidc", config_keys(OidcSettings))
    claims_table = Table(table.get("claims", dict, {}), "oidc.claims", config_keys(ClaimNames))
    claims = ClaimNames(*(claims_table.text(key, default(ClaimNames, key), 128) for key in ("email", "name", "groups")))
    oidc: OidcSettings = build(OidcSettings, table, base, claims=claims)
    issuer = check_url(oidc.issuer, "oidc.issuer")
    if urlsplit(issuer).query:
        raise table.error("issuer", "must not have a query")
    if "openid" not in oidc.scopes or not all(s.isascii() and " " not in s for s in oidc.scopes):
        raise table.error("scopes", "must include 'openid' and be single words")
    bad = [a for a in oidc.algorithms if a not in ALLOWED_ALGORITHMS]
    if bad:
        raise table.error("algorithms", f": {bad[0]!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_ALGORITHMS))})")
    return oidc


def parse_identity(data: dict[str, Any], base: Path) -> IdentitySettings:
    """The identity settings in the top-level ``data``; raises ConfigError."""
    auth = _auth(data.get("auth", {}), base)
    oidc = None if "oidc" not in data else _oidc(data["oidc"], base)
    access = None
    unsafe_allow_all = False
    if "access" in data:
        table = Table(data["access"], "access", {"policy", "unsafe_allow_all"})
        access = table.path("policy", base, None, must_exist=True)
        unsafe_allow_all = table.get("unsafe_allow_all", bool, default(IdentitySettings, "unsafe_allow_all"))
        if access is not None and unsafe_allow_all:
            raise ConfigError("access: set either policy or unsafe_allow_all, not both")
    settings = IdentitySettings(auth, oidc, access, unsafe_allow_all)
    if settings.users_sign_in:
        if not auth.has_database:
            raise ConfigError(
                "auth.database (or auth.database_dsn_file) is required when users sign in ([oidc] or [auth.trusted_header])"
            )
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
