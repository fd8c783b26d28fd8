"""Render the server-side HTML pages (Jinja2, autoescaped) with their security headers."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from idhub.tenants.service import TenantInfo

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# Pages load nothing but their own stylesheet; no scripts at all. ``frame-ancestors`` repeats the
# metrics middleware's anti-framing rule because this header replaces its CSP. ``form-action`` is
# left open on purpose: browsers apply it to the redirect back to the client after a form POST.
PAGE_CSP = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "cache-control": "no-store",
    "pragma": "no-cache",
    "content-security-policy": PAGE_CSP,
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    """Return the Jinja2 environment (built on first use, never at import time)."""
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(template: str, *, tenant: TenantInfo | None, status: int = 200, **values: object) -> HTMLResponse:
    """Render ``template`` as a no-store HTML page."""
    html = environment().get_template(template).render(tenant=tenant, **values)
    return HTMLResponse(html, status_code=status, headers=dict(PAGE_HEADERS))


def error_page(message: str, *, tenant: TenantInfo | None, status: int = 400) -> HTMLResponse:
    """Render the error page; used whenever redirecting back to a client is not safe."""
    return render_page("error.html", tenant=tenant, status=status, message=message)
