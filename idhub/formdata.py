"""Decode ``application/x-www-form-urlencoded`` data strictly; shared by every surface that reads forms."""

from __future__ import annotations

from urllib.parse import unquote_plus


def decode_pairs(raw: bytes, *, max_fields: int) -> list[tuple[str, str]]:
    """Split urlencoded ``raw`` into name/value pairs, in order, repeats kept.

    Hand-rolled instead of ``urllib.parse.parse_qsl`` because the token endpoint runs it on every
    request and the common case (no escapes) needs no decoding; escapes go through ``unquote_plus``
    with invalid UTF-8 refused. Raises ``ValueError`` on malformed input or too many fields.
    """
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if not text:
        return []
    parts = text.split("&")
    if len(parts) > max_fields:
        raise ValueError("too many parameters")
    pairs: list[tuple[str, str]] = []
    for part in parts:
        if not part:
            continue
        name, _sep, value = part.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name, errors="strict")
        if "%" in value or "+" in value:
            value = unquote_plus(value, errors="strict")
        pairs.append((name, value))
    return pairs
