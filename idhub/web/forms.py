"""Strict parsing of HTML form posts and query strings."""

from __future__ import annotations

from fastapi import Request

from idhub.formdata import decode_pairs

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024
MAX_FIELDS = 100


class BadForm(Exception):
    """The body is not a well-formed urlencoded form."""


class FormTooLarge(Exception):
    """The body is larger than a page accepts; the pages' boundary answers 413 (RFC 9110 §15.5.14).

    Not a :class:`BadForm`, so the pages that turn a malformed form into a 400 let it through.
    """


def group(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Group parameters by name; empty values count as omitted (RFC 6749 §3.1).

    NUL characters are refused outright: no parameter needs one and databases reject them.
    """
    grouped: dict[str, list[str]] = {}
    for name, value in items:
        if "\x00" in name or "\x00" in value:
            raise BadForm("NUL character in a parameter")
        if value != "":
            grouped.setdefault(name, []).append(value)
    return grouped


async def read_form(request: Request, *, max_bytes: int = MAX_FORM_BYTES) -> dict[str, list[str]]:
    """Return the urlencoded body grouped by name; any other content type yields no fields.

    A body over ``max_bytes`` raises :class:`FormTooLarge`, whether its declared length says so
    up front or a chunked body grows past the limit while it is read.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise FormTooLarge
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise FormTooLarge
    try:
        items = decode_pairs(body, max_fields=MAX_FIELDS)
    except ValueError as exc:
        raise BadForm("malformed form") from exc
    return group(items)


def read_query(request: Request) -> dict[str, list[str]]:
    """Return the query parameters grouped by name."""
    try:
        items = decode_pairs(request.scope.get("query_string", b""), max_fields=MAX_FIELDS)
    except ValueError as exc:
        raise BadForm("malformed query") from exc
    return group(items)


async def read_params(request: Request) -> dict[str, list[str]]:
    """Return a GET's query or a POST's form (endpoints that take both, OIDC Core §3.1.2.1)."""
    return read_query(request) if request.method in ("GET", "HEAD") else await read_form(request)


def single(fields: dict[str, list[str]], name: str) -> str | None:
    """Return the one value of ``name``; a repeated field is malformed (RFC 6749 §3.1)."""
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadForm(f"{name} is repeated")
    return values[0]
