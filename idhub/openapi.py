"""Export the OpenAPI document exactly as the app serves it at ``/openapi.json``."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

from idhub.settings import Settings

# The document does not depend on settings; these only keep Settings from touching the environment's
# database or data folder (building the app performs no I/O: the lifespan is not run).
_PLACEHOLDER_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()


def export_openapi() -> dict[str, Any]:
    """Build an app and return its OpenAPI document (no database, no lifespan)."""
    from idhub.app import create_app

    with tempfile.TemporaryDirectory(prefix="idhub-openapi-") as data_dir:
        settings = Settings(
            environment="development",
            data_dir=Path(data_dir),
            database_url=f"sqlite+aiosqlite:///{Path(data_dir) / 'unused.db'}",
            master_key=_PLACEHOLDER_KEY,
        )
        return create_app(settings).openapi()


def render_openapi(document: dict[str, Any]) -> str:
    """Serialise ``document`` the way ``openapi/openapi.json`` is committed (sorted, indent 2, newline)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
