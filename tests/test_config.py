"""Configuration: defaults, file, environment, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_need_no_file() -> None:
    cfg = load_config(env={})
    assert cfg.database.url.startswith("sqlite:///")
    assert cfg.server.simulator is True
    assert not cfg.telegram_enabled and not cfg.whatsapp_enabled


def test_example_config_loads_and_documents_every_key() -> None:
    import dataclasses
    import typing

    from bot.config import SECTIONS

    cfg = load_config(ROOT / "config.example.toml", env={})
    assert cfg.server.public_url == "https://bot.example.org"
    text = (ROOT / "config.example.toml").read_text()
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for f in dataclasses.fields(cls):
            if typing.get_origin(typing.get_type_hints(cls)[f.name]) is dict:
                assert f"[{section}.{f.name}]" in text
            else:
                assert f"\n{f.name} = " in text, f"[{section}] {f.name} is not documented"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[telegram]\ntoken = "from-file"\nwebhook_secret = "s3cret"\n')
    cfg = load_config(path, env={"DESMIGRATIF_TELEGRAM_TOKEN": "from-env",
                                 "DESMIGRATIF_SERVER_PORT": "9090"})
    assert cfg.telegram.token == "from-env"
    assert cfg.server.port == 9090
    assert cfg.telegram_enabled


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 8181\n")
    assert load_config(env={"DESMIGRATIF_CONFIG": str(path)}).server.port == 8181


def test_relative_sqlite_path_is_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "sqlite:///var/x.db"\n')
    assert load_config(path, env={}).database.url == f"sqlite:///{tmp_path}/var/x.db"


@pytest.mark.parametrize(("body", "env", "named"), [
    ("[server]\nprot = 1\n", {}, "[server] prot"),
    ("[sever]\nport = 1\n", {}, "[sever]"),
    ("[server]\nport = \"x\"\n", {}, "[server] port"),
    ("[server]\nport = 70000\n", {}, "[server] port"),
    ("", {"DESMIGRATIF_SERVER_PORT": "eighty"}, "DESMIGRATIF_SERVER_PORT"),
    ("[database]\nurl = \"mysql://x\"\n", {}, "[database] url"),
    ("[telegram]\ntoken = \"t\"\n", {}, "[telegram] webhook_secret"),
    ("[telegram]\ntoken = \"t\"\nwebhook_secret = \"bad secret!\"\n", {}, "webhook_secret"),
    ("[bot]\ndefault_timezone = \"Mars/Olympus\"\n", {}, "[bot] default_timezone"),
    ("[scheduler]\nparent_checkin = \"sunday 7pm\"\n", {}, "[scheduler] parent_checkin"),
    ("[server]\nsimulator = \"maybe\"\n", {}, "[server] simulator"),
    ("[bot]\ndefault_language = \"fr\"\n", {}, "[bot] default_language"),
    ("this is not toml", {}, "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path: Path, body: str, env: dict[str, str],
                                  named: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env)
    assert named in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml", env={})
