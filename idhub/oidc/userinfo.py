"""Placeholder: the userinfo endpoint router (being built)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["oidc"])
