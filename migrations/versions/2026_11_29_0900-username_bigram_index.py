"""username bigram index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:00:00

PostgreSQL only. SCIM ``co``/``sw``/``ew`` filters on ``userName`` were served by a ``pg_trgm`` index,
which cannot serve a needle shorter than three characters (``userName co "99"`` scanned the whole
table) and which a generic plan of the prepared statement picks even for such needles, scanning the
whole index. ``idhub_bigrams(username)`` is the set of the username's two-character substrings; a GIN
index over it answers ``idhub_bigrams(username) @> ARRAY[<the needle's bigrams>]`` for any needle of two
or more characters, and the query keeps its ``LIKE`` as the exact check.

The function is plain SQL (no extension): each ``regexp_replace`` cuts the string into two-character
pieces separated by U+0001, once from the first and once from the second character, so the two splits
together hold every bigram. Usernames never contain control characters (the directory's username
rule), so U+0001 cannot occur in one.
"""

from __future__ import annotations

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

BIGRAMS_FUNCTION = r"""
CREATE OR REPLACE FUNCTION idhub_bigrams(t text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
  SELECT string_to_array(regexp_replace(t, '..', '\&' || chr(1), 'g'), chr(1))
      || string_to_array(regexp_replace(substr(t, 2), '..', '\&' || chr(1), 'g'), chr(1))
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(BIGRAMS_FUNCTION)
    op.execute(
        'CREATE INDEX ix_user_username_bigrams ON "user" USING gin (idhub_bigrams(username)) '
        "WHERE deleted_at IS NULL"
    )
    op.drop_index('ix_user_username_trgm', table_name='user')


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(
        'ix_user_username_trgm', 'user', ['username'], unique=False,
        postgresql_using='gin', postgresql_ops={'username': 'gin_trgm_ops'},
    )
    op.drop_index('ix_user_username_bigrams', table_name='user')
    op.execute("DROP FUNCTION idhub_bigrams(text)")
