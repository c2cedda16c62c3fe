"""`desmigratif scheduler run-due` and `scheduler list` as an operator runs them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.test_cli import run

SUNDAY_HK = "2026-12-06T11:00:00Z"  # Sunday 19:00 in Hong Kong, where the demo parent is


def _checkins(db: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT status, idempotency_key FROM outbox WHERE "
                            "idempotency_key LIKE 'parent_checkin:%'").fetchall()
    finally:
        conn.close()


def test_run_due_sends_once_and_list_shows_the_jobs(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[database]\nurl = "sqlite:///var/t.db"\n')
    assert run("demo", "--config", str(conf), cwd=tmp_path).returncode == 0

    listed = run("scheduler", "list", "--config", str(conf), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "reminder parent_checkin: parent at sun 19:00" in listed.stdout
    assert "job outbox_retention: every 10 min" in listed.stdout
    assert "total:" in listed.stdout.splitlines()[-1]

    first = run("scheduler", "run-due", "--at", SUNDAY_HK, "--config", str(conf), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "parent_checkin: 1" in first.stdout.splitlines()
    assert _checkins(tmp_path / "var" / "t.db") == [("sent", _key(tmp_path))]

    again = run("--config", str(conf), "scheduler", "run-due", "--at", "2026-12-06T19:00:00+08:00",
                cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "parent_checkin: 0" in again.stdout.splitlines()
    assert len(_checkins(tmp_path / "var" / "t.db")) == 1

    bad = run("scheduler", "run-due", "--at", "2026-12-06 19:00", "--config", str(conf),
              cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--at" in bad.stderr


def _key(tmp_path: Path) -> str:
    conn = sqlite3.connect(tmp_path / "var" / "t.db")
    try:
        (parent_id,) = conn.execute("SELECT id FROM member WHERE role = 'parent'").fetchone()
    finally:
        conn.close()
    return f"parent_checkin:{parent_id}:2026-12-06"
