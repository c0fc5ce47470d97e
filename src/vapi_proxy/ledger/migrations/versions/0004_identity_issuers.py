"""Identity keys name the JWT issuer: `jwt:<sub>` becomes `jwt:<issuer>:<sub>`.

Before, a `sub` at one configured issuer was the same caller as that `sub` at another: it read
the other's calls, continued their chats and shared their limits. Rows written then came from
one issuer (a single-issuer deployment) or from several that could not be told apart; the
issuer they are given is the one the upgrade is told (`jwt_issuers` in the Alembic config's
attributes: the proxy's jwt methods, or `vapi-proxy db upgrade --jwt-issuer`). With stored JWT
identities and not exactly one issuer to give them, the upgrade stops and says what to do.

Rewritten: `calls` (and their `identity_hash`), `idempotency_keys`, `identity_blocks`, and the
SQL limits tables when they live in this database (counter, slot and hold keys). The admin audit
trail keeps the keys it recorded. Redis counters are not here: see CHANGELOG/docs.

Revision ID: 0004
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from vapi_proxy.auth.identity import (
    from_legacy_jwt_key,
    identity_hash,
    limit_key_from_legacy,
    limit_key_to_legacy,
    to_legacy_jwt_key,
)
from vapi_proxy.ledger.migrate import MigrationInputError

revision = "0004"
down_revision = "0006"
branch_labels = None
depends_on = None

ISSUERS_ATTRIBUTE = "jwt_issuers"

_IDENTITY_COLUMNS = (
    ("calls", "identity_key"),
    ("idempotency_keys", "identity_key"),
    ("identity_blocks", "identity_key"),
)
_LIMIT_COLUMNS = (
    ("limit_counters", "key"),
    ("limit_slots", "key"),
    ("limit_reservations", "holds"),
)


def _where(table: str, column: str) -> tuple[sa.TableClause, sa.ColumnClause[Any], Any]:
    """The table, the column and which of its rows hold legacy JWT keys."""
    col: sa.ColumnClause[Any] = sa.column(column)
    t = sa.table(table, col, sa.column("identity_hash"))
    pattern = "jwt:%" if column == "identity_key" else "%i=jwt:%"
    return t, col, col.like(pattern)


def _legacy_rows(conn: sa.Connection, tables: set[str]) -> int:
    found = 0
    for table, column in _IDENTITY_COLUMNS + _LIMIT_COLUMNS:
        if table in tables:
            t, _col, legacy = _where(table, column)
            query = sa.select(sa.func.count()).select_from(t).where(legacy)
            found += int(conn.execute(query).scalar_one())
    return found


def _issuer(conn: sa.Connection, tables: set[str]) -> tuple[bool, str | None]:
    """(whether there is anything to rewrite, the issuer to give it)."""
    issuers = context.config.attributes.get(ISSUERS_ATTRIBUTE)
    if issuers is not None and len(issuers) == 1:
        return True, issuers[0]
    found = _legacy_rows(conn, tables)
    if not found:
        return False, None
    configured = "no jwt method is known" if not issuers else f"{len(issuers)} jwt methods"
    raise MigrationInputError(
        f"the ledger holds {found} row(s) keyed by JWT `sub` alone, from before callers were "
        f"keyed by issuer, and {configured}: name the issuer those callers came from with "
        "`vapi-proxy db upgrade --config <proxy.yaml> --jwt-issuer <issuer>` (use '' for a "
        "jwt method without `issuer`), then start the proxy (docs/deployment.md)"
    )


def _rewrite(conn: sa.Connection, table: str, column: str, change: Callable[[str], str]) -> None:
    t, col, legacy = _where(table, column)
    rows = conn.execute(sa.select(col).distinct().where(legacy)).all()
    pairs = [(old, change(old)) for (old,) in rows]
    pairs = [(old, new) for old, new in pairs if new != old]
    if not pairs:
        return
    values: dict[str, Any] = {column: sa.bindparam("new")}
    if table == "calls":
        values["identity_hash"] = sa.bindparam("h")
    statement = t.update().where(col == sa.bindparam("old")).values(values)
    conn.execute(
        statement, [{"old": old, "new": new, "h": identity_hash(new)} for old, new in pairs]
    )


def _migrate(to_new: bool) -> None:
    conn = op.get_bind()
    tables = set(sa.inspect(conn).get_table_names())
    identity: Callable[[str], str] = to_legacy_jwt_key
    limit: Callable[[str], str] = limit_key_to_legacy
    if to_new:
        needed, issuer = _issuer(conn, tables)
        if not needed:
            return

        def identity(key: str) -> str:
            return from_legacy_jwt_key(key, issuer)

        def limit(key: str) -> str:
            return limit_key_from_legacy(key, issuer)

    for table, column in _IDENTITY_COLUMNS:
        if table in tables:
            _rewrite(conn, table, column, identity)
    for table, column in _LIMIT_COLUMNS:
        if table in tables:
            _rewrite(conn, table, column, limit)


def upgrade() -> None:
    _migrate(to_new=True)


def downgrade() -> None:
    # Fails (a primary-key clash) if two issuers' callers share a `sub`: they cannot go back to
    # one key each.
    _migrate(to_new=False)
