"""The command line as an operator uses it: real subprocesses, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, cwd: Path, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("DESMIGRATIF_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=60, env=full_env)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "sqlite:///var/t.db"\n')
    return path


def test_db_upgrade_and_coordinator_token_on_last_line(conf: Path, tmp_path: Path) -> None:
    up = run("db", "upgrade", "--config", str(conf), cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    res = run("coordinator", "add", "--name", "Bu Sri", "--village", "Kuripan",
              "--whatsapp", "0812-3456-7890", "--config", str(conf), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip().splitlines()[-1]
    assert token.startswith("dm_") and len(token) > 30 and " " not in token
    # The same number can't belong to two people.
    again = run("--config", str(conf), "coordinator", "add", "--name", "X", "--village",
                "Kuripan", "--whatsapp", "+6281234567890", cwd=tmp_path)
    assert again.returncode != 0
    assert len(again.stderr.strip().splitlines()) == 1 and "whatsapp" in again.stderr


def test_coordinator_password_from_stdin(conf: Path, tmp_path: Path) -> None:
    short = run("coordinator", "add", "--name", "A", "--village", "V", "--password-stdin",
                "--config", str(conf), cwd=tmp_path, stdin="short\n")
    assert short.returncode != 0 and "password" in short.stderr
    ok = run("coordinator", "add", "--name", "A", "--village", "V", "--password-stdin",
             "--config", str(conf), cwd=tmp_path, stdin="a long passphrase\n")
    assert ok.returncode == 0, ok.stderr


def test_bad_config_is_one_line_and_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nprot = 1\n")
    res = run("db", "upgrade", "--config", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "[server] prot" in res.stderr


def test_missing_arguments_exit_nonzero(tmp_path: Path) -> None:
    res = run("coordinator", "add", "--name", "x", cwd=tmp_path)
    assert res.returncode != 0 and "--village" in res.stderr


def test_demo_and_chat_in_the_terminal(conf: Path, tmp_path: Path) -> None:
    demo = run("demo", "--config", str(conf), cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    carer_id = next(line.split()[0] for line in demo.stdout.splitlines() if " carer " in line)
    chat = run("chat", "--as", carer_id, "--config", str(conf), cwd=tmp_path,
               stdin="MENU\nBAHASA en\nMENU\n")
    assert chat.returncode == 0, chat.stderr
    assert "SAPA 129" in chat.stdout
    assert "What you can do here" in chat.stdout
    assert "TIPS" in chat.stdout
    # Running demo again changes nothing.
    assert run("demo", "--config", str(conf), cwd=tmp_path).returncode == 0


def test_chat_as_unknown_member(conf: Path, tmp_path: Path) -> None:
    res = run("chat", "--as", "999", "--config", str(conf), cwd=tmp_path, stdin="")
    assert res.returncode == 2 and "999" in res.stderr


def test_out_of_date_schema_is_refused(conf: Path, tmp_path: Path) -> None:
    import sqlite3

    assert run("db", "upgrade", "--config", str(conf), cwd=tmp_path).returncode == 0
    db = sqlite3.connect(tmp_path / "var" / "t.db")
    db.execute("UPDATE alembic_version SET version_num = 'old'")
    db.commit()
    db.close()
    res = run("demo", "--config", str(conf), cwd=tmp_path)
    assert res.returncode == 2 and "db upgrade" in res.stderr


def test_python_dash_m_and_console_script_agree(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "desmigratif"
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "serve" in res.stdout
