"""Core table handles of the directory, for statements that read and write without the ORM.

List pages, filters and bulk writes are plain SELECTs and INSERTs: the ORM's compile, identity-map and
loading steps would be pure overhead there.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from idhub.storage.models import Group, GroupMember, User, UserValue

USERS = cast(Table, User.__table__)
USER_VALUES = cast(Table, UserValue.__table__)
GROUPS = cast(Table, Group.__table__)
GROUP_MEMBERS = cast(Table, GroupMember.__table__)
