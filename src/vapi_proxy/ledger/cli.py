"""`vapi-proxy db …` and `vapi-proxy usage …`: parsers and runners the main CLI wires in.

Both read the database URL from `--database-url` or `VAPI_PROXY_DATABASE_URL`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

from vapi_proxy.ledger.records import UsageRow

# SQLAlchemy, Alembic and the ledger are imported in the functions that use them: the main CLI
# builds these parsers for every command, `serve` included, and its supervisor stays small.

ENV_URL = "VAPI_PROXY_DATABASE_URL"
COLUMNS = ["identity", "tenant", "kind", "calls", "ended", "minutes", "cost_usd"]


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"ledger database (sqlite:///path.db or postgresql://…); default ${ENV_URL}",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="read the database from this proxy config's `ledger.url` "
        "(default: $VAPI_PROXY_CONFIG when no URL is given)",
    )


def _url(args: argparse.Namespace) -> str:
    # The config loader is heavier: imported lazily. Only the `ledger:` section is read, so
    # these commands run without the server's secrets (webhook or JWT secrets).
    from vapi_proxy.ledger.engine import redact
    from vapi_proxy.settings import ConfigError, load_ledger_settings, sqlite_folder_problem

    url = args.database_url or os.environ.get(ENV_URL)
    config = getattr(args, "config", None) or os.environ.get("VAPI_PROXY_CONFIG")
    if not url and config:
        url = load_ledger_settings(config).url
    if not url:
        raise SystemExit(f"no database: pass --database-url or --config, or set {ENV_URL}")
    problem = sqlite_folder_problem(url)
    if problem is not None:
        raise ConfigError([f"database {redact(url)}: {problem}"])
    return str(url)


def _jwt_issuers(args: argparse.Namespace) -> list[str | None] | None:
    """What migration 0004 needs: the operator's `--jwt-issuer`, or the config's jwt methods."""
    if args.jwt_issuer is not None:
        return [args.jwt_issuer or None]
    config = getattr(args, "config", None) or os.environ.get("VAPI_PROXY_CONFIG")
    if not config:
        return None
    from vapi_proxy.auth.config import jwt_issuers_in
    from vapi_proxy.settings import read_config_file

    return jwt_issuers_in(read_config_file(config))


def configure_db_parser(parser: argparse.ArgumentParser) -> None:
    """`db upgrade [--revision R]` and `db current`."""
    sub = parser.add_subparsers(dest="db_command", required=True)
    up = sub.add_parser("upgrade", help="migrate the ledger database to the latest schema")
    _add_url(up)
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.add_argument(
        "--jwt-issuer",
        default=None,
        help="the issuer that callers stored before identities named their issuer came from "
        "(default: the one jwt method of --config; '' for a jwt method without issuer)",
    )
    cur = sub.add_parser("current", help="print the database's schema revision")
    _add_url(cur)


@contextmanager
def _one_line(url: str, command: str) -> Iterator[None]:
    """A database that cannot be opened is one line naming it (password hidden), exit 1: these
    are operators' commands, and a driver's traceback says less than the URL and the reason."""
    from sqlalchemy.exc import SQLAlchemyError

    from vapi_proxy.ledger.engine import redact

    try:
        yield
    except (OSError, ValueError, RuntimeError, SQLAlchemyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        password = _password(url)
        if password:
            reason = reason.replace(password, "***")
        raise SystemExit(f"vapi-proxy {command}: {redact(url)}: {reason}") from None


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        password: str | None = make_url(url).password
        return password
    except Exception:  # an unparsable URL has no password to hide
        return None


def run_db(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    url = _url(args)
    with _one_line(url, f"db {args.db_command}"):
        return _run_db(args, url, out)


def _run_db(args: argparse.Namespace, url: str, out: TextIO) -> int:
    from vapi_proxy.ledger.engine import Database, redact
    from vapi_proxy.ledger.migrate import (
        MigrationInputError,
        current_revision,
        head_revision,
        upgrade,
    )

    if args.db_command == "upgrade":
        try:
            rev = upgrade(url, args.revision, jwt_issuers=_jwt_issuers(args))
        except MigrationInputError as exc:
            print(f"vapi-proxy db upgrade: {exc}", file=sys.stderr)
            return 1
        print(f"ledger at revision {rev} ({redact(url)})", file=out)
        return 0

    async def show() -> str | None:
        db = Database(url)
        try:
            return await current_revision(db)
        finally:
            await db.aclose()

    rev = asyncio.run(show())
    head = head_revision()
    state = "up to date" if rev == head else f"behind (head is {head})"
    print(f"{rev or 'empty'}: {state}", file=out)
    return 0 if rev == head else 1


def _date(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def configure_usage_parser(parser: argparse.ArgumentParser) -> None:
    """`usage [--identity ID] [--tenant T] [--since DATE] [--until DATE] [--format F]`."""
    _add_url(parser)
    parser.add_argument(
        "--identity",
        help="one identity key, e.g. api_key:ci or jwt:<issuer, percent-encoded>:<sub>",
    )
    parser.add_argument("--tenant", help="one tenant")
    parser.add_argument("--since", type=_date, help="calls created at or after (UTC if no zone)")
    parser.add_argument("--until", type=_date, help="calls created before (UTC if no zone)")
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table")


def _cells(row: UsageRow) -> list[str]:
    return [
        row.identity_key,
        row.tenant or "",
        row.kind,
        str(row.calls),
        str(row.ended),
        f"{row.minutes:.2f}",
        f"{row.cost_usd:.4f}",
    ]


def usage_report(rows: list[UsageRow]) -> dict[str, Any]:
    """Usage as JSON-ready data: one item per row and the totals (CLI and admin endpoint)."""
    items = [
        {
            "identity": r.identity_key,
            "tenant": r.tenant,
            "kind": r.kind,
            "calls": r.calls,
            "ended": r.ended,
            "minutes": r.minutes,
            "cost_usd": r.cost_usd,
        }
        for r in rows
    ]
    totals = {
        "calls": sum(r.calls for r in rows),
        "ended": sum(r.ended for r in rows),
        "minutes": round(sum(r.minutes for r in rows), 4),
        "cost_usd": round(sum(r.cost_usd for r in rows), 6),
    }
    return {"rows": items, "total": totals}


def render_usage(rows: list[UsageRow], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(usage_report(rows), indent=2) + "\n"
    report = usage_report(rows)["total"]
    total = UsageRow(
        "TOTAL", None, "", report["calls"], report["ended"], report["minutes"], report["cost_usd"]
    )
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(_cells(r) for r in rows)
        return buf.getvalue()
    table = [COLUMNS, *(_cells(r) for r in rows), _cells(total)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    numeric = {3, 4, 5, 6}

    def fmt_line(line: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    lines = [fmt_line(table[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt_line(line) for line in table[1:-1]]
    lines += ["  ".join("-" * w for w in widths), fmt_line(table[-1])]
    return "\n".join(lines) + "\n"


def run_usage(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    from vapi_proxy.ledger.store import Ledger

    out = out or sys.stdout
    url = _url(args)

    async def fetch() -> list[UsageRow]:
        ledger = Ledger.from_url(url)
        try:
            await ledger.start(auto_migrate=False)
            return await ledger.usage(
                identity_key=args.identity, tenant=args.tenant, since=args.since, until=args.until
            )
        finally:
            await ledger.aclose()

    with _one_line(url, "usage"):
        rows = asyncio.run(fetch())
    out.write(render_usage(rows, args.format))
    return 0
