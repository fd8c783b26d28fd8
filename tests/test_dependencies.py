"""Every run-time dependency is imported at run time (the test tools live in the ``test`` extra)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Distribution name -> the module idhub imports; None: used without an import of ours (a backend).
MODULES = {
    "uvicorn": "uvicorn",
    "pydantic-settings": "pydantic_settings",
    "sqlalchemy": "sqlalchemy",
    "libpass": "passlib",
    "argon2-cffi": None,  # passlib's argon2 backend, loaded by passlib itself
    "aiosqlite": None,  # SQLAlchemy's sqlite+aiosqlite driver, loaded by the engine URL
    "prometheus-client": "prometheus_client",
}


def test_every_runtime_dependency_is_imported_by_idhub() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    sources = "\n".join(path.read_text() for path in (ROOT / "idhub").rglob("*.py"))
    unused = []
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
        module = MODULES.get(name, name.replace("-", "_"))
        if module is None:
            continue
        if not re.search(rf"^\s*(from|import) {re.escape(module)}\b", sources, re.M):
            unused.append(name)
    assert not unused, f"declared but never imported at run time: {unused}"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert project["license"] == "Apache-2.0"
