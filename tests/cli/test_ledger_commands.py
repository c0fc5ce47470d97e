"""`vapi-proxy db` and `usage` as a user runs them: the ledger only, one line when it fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import run_cli


def test_db_upgrade_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    done = run_cli("db", "upgrade", "--database-url", f"sqlite:///{tmp_path}/no/such/ledger.db")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"the folder {tmp_path}/no/such does not exist" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2  # the heading and the one problem


def test_usage_and_db_read_only_the_ledger_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"ledger: {{url: 'sqlite:///{tmp_path}/ledger.db'}}\n"
        "auth: {methods: [{type: jwt, secret_env: UNSET_JWT_SECRET, algorithms: [HS256]}]}\n"
        "webhooks: {verify: [{type: bearer, secret_env: UNSET_WEBHOOK_SECRET}]}\n"
    )
    done = run_cli("db", "upgrade", "--config", str(config))
    assert done.returncode == 0, done.stderr
    done = run_cli("usage", "--config", str(config), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert '"calls": 0' in done.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["usage", "--database-url", "postgresql://app:hunter2-secret@127.0.0.1:1/x"],
            "vapi-proxy usage: postgresql://app:***@127.0.0.1:1/x: ",
        ),
        (
            ["db", "upgrade", "--database-url", "postgresql://app:hunter2-secret@127.0.0.1:1/x"],
            "vapi-proxy db upgrade: postgresql://app:***@127.0.0.1:1/x: ",
        ),
        (["usage", "--database-url", "mysql://x/y"], "unsupported database 'mysql'"),
    ],
)
def test_a_database_that_cannot_be_opened_is_one_line(argv: list[str], expected: str) -> None:
    done = run_cli(*argv)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert expected in done.stderr
    assert "hunter2-secret" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_usage_on_an_unmigrated_ledger_says_to_upgrade(tmp_path: Path) -> None:
    done = run_cli("usage", "--database-url", f"sqlite:///{tmp_path}/new.db")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "run `vapi-proxy db upgrade`" in done.stderr
