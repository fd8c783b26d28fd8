"""SCIM 2.0 service provider (RFC 7643 core schema, RFC 7644 protocol) under ``{issuer}/scim/v2``."""
