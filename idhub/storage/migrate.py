"""Run Alembic migrations programmatically (``idhub migrate``, ``idhub serve`` on SQLite)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


def migrations_dir() -> Path:
    """Locate the Alembic scripts: in the wheel (``idhub/_migrations``) or the source tree."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("Alembic migrations not found")


def alembic_config(database_url: str) -> Config:
    """Build an Alembic config pointing at ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the database at ``database_url`` to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the database at ``database_url`` to ``revision`` (an empty database a restore takes back)."""
    command.downgrade(alembic_config(database_url), revision)


def lineage(revision: str) -> list[str]:
    """Return ``revision`` and every revision below it, newest first; ``[]`` when this code does not know it."""
    from alembic.script import ScriptDirectory
    from alembic.script.revision import ResolutionError
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    try:
        return [found.revision for found in script.iterate_revisions(revision, "base")]
    except (CommandError, ResolutionError):
        return []
