"""The admin REST API under ``{PUBLIC_URL}/admin/v1``: thin routes over the domain services, RFC 9457 errors."""
