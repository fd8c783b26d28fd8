"""OpenID Connect provider / OAuth 2.0 authorization server."""
