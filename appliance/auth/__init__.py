"""Who is calling: API keys now; OIDC sessions, JWT and trusted headers beside them."""
