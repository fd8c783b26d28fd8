"""OAuth 2.0 / OIDC client registrations."""
