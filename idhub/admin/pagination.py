"""Cursor pagination of admin lists: keyset on a stable order, so page 5,000 costs what page 1 costs.

A cursor is opaque to callers: the sort key of the last item served, as URL-safe base64 of a JSON array.
It carries no authority (it only says where to continue within what the caller may already list), so it is
not signed; it is parsed strictly, and anything malformed is a 400 problem rather than a silent restart.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import orjson

from idhub.admin.problems import Problem

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR = 512


def encode_cursor(key: Sequence[Any]) -> str:
    """Return the cursor that continues after an item whose sort key is ``key``."""
    return base64.urlsafe_b64encode(orjson.dumps([str(part) for part in key])).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, parts: int) -> list[str] | None:
    """Return the sort key a cursor continues after (``None`` for the first page), or raise 400."""
    if cursor is None or cursor == "":
        return None
    if len(cursor) > MAX_CURSOR:
        raise Problem(400, "the cursor is not valid", kind="bad-cursor")
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise Problem(400, "the cursor is not valid", kind="bad-cursor") from exc
    if not isinstance(key, list) or len(key) != parts or not all(isinstance(part, str) for part in key):
        raise Problem(400, "the cursor is not valid", kind="bad-cursor")
    return key


def page_body(items: list[dict[str, Any]], next_key: Sequence[Any] | None) -> dict[str, Any]:
    """Return a list answer: the items and the cursor of the next page (``null`` on the last one)."""
    return {"items": items, "next_cursor": encode_cursor(next_key) if next_key is not None else None}
