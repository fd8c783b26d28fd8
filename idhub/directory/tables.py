"""Core table handles of the directory (re-exported from :mod:`idhub.storage.tables`).

List pages, filters and bulk writes are plain SELECTs and INSERTs: the ORM's compile, identity-map and
loading steps would be pure overhead there.
"""

from __future__ import annotations

from idhub.storage.tables import GROUP_MEMBERS, GROUPS, USER_VALUES, USERS

__all__ = ["GROUPS", "GROUP_MEMBERS", "USERS", "USER_VALUES"]
