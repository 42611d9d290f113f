"""Who is calling and what they may use: sign-in, tokens, API keys, the group policy.

* :mod:`.base` -- the interfaces the API depends on (Principal, Authenticator, AccessPolicy).
* :mod:`.chain` -- the API's authenticator: trusted header, then the Bearer credential by its shape.
* :mod:`.oidc`, :mod:`.provider`, :mod:`.tokens` -- OpenID Connect sign-in (authlib, PKCE),
  discovery and key sets with rotation, JWT verification (pyjwt).
* :mod:`.trusted_header` -- identity from an authenticating reverse proxy, from its addresses only.
* :mod:`.api_keys` (in memory: the demo, ``[[api_keys]]``), :mod:`.keystore` (persistent: SQLite or PostgreSQL, :mod:`._db`),
  :mod:`.users` (the groups a key acts with), :mod:`.sessions`, :mod:`.session_cookie`.
* :mod:`.access` -- the group policy file; :mod:`.web` -- the account pages; :mod:`.admin` -- ``sluice keys``.
* :mod:`.config` -- the ``[auth]``, ``[oidc]`` and ``[access]`` settings; :mod:`.build` -- wiring.
"""
