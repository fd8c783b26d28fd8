"""The directory: users, groups, memberships and their closure, entitlements, password hashing.

Every surface (SCIM, the CLI, the admin API, the broker) reads and changes people and groups through
:class:`Directory`, so each rule exists once.
"""

from __future__ import annotations

from dataclasses import dataclass

from idhub.directory.entitlements import Entitlements
from idhub.directory.groups import Groups
from idhub.directory.passwords import PasswordHasher
from idhub.directory.users import Users
from idhub.storage.uow import UnitOfWork


@dataclass(frozen=True, slots=True)
class Directory:
    """The directory's commands for one unit of work."""

    users: Users
    groups: Groups
    entitlements: Entitlements

    @classmethod
    def open(cls, uow: UnitOfWork, *, passwords: PasswordHasher, token_lifetime: int) -> Directory:
        """Return the directory acting in ``uow``; ``token_lifetime`` bounds how long a revocation must last."""
        return cls(users=Users(uow, passwords, token_lifetime), groups=Groups(uow), entitlements=Entitlements(uow))
