"""Development helper: rewrite the initial migration from the models (only until the first release).

Usage: ``python migrations/dev_regenerate.py`` (needs a PostgreSQL database named ``regen``).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg
from alembic import command

from idhub.storage.migrate import alembic_config

URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/regen"
VERSIONS = Path(__file__).parent / "versions"


async def _reset() -> None:
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/regen")
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    await conn.close()


def main() -> None:
    """Regenerate ``versions/*-initial_schema.py`` as revision 0001."""
    asyncio.run(_reset())
    for old in VERSIONS.glob("*initial_schema.py"):
        old.unlink()
    cfg = alembic_config(URL)
    cfg.set_main_option("file_template", "2026_11_28_1434-initial_schema")
    command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
    path = VERSIONS / "2026_11_28_1434-initial_schema.py"
    text = path.read_text()
    text = text.replace("idhub.storage.base.UTCDateTime(timezone=True)", "sa.DateTime(timezone=True)")
    text = re.sub(r"\nimport idhub\.storage\.base\n", "\n", text)
    path.write_text(text)
    asyncio.run(_reset())


if __name__ == "__main__":
    main()
