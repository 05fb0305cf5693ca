"""The gateway file: what it sets, and the errors that name the value and the fix."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from detector.cli import main
from detector.plans import ConfigError
from detector.readers.gateways import gateway_settings, load_gateways
from detector.store import open_store
from workers.enforce import build_enforcer


def write(tmp_path, text: str):
    path = tmp_path / "gateways.toml"
    path.write_text(text)
    return path


def test_file_settings_and_overrides(tmp_path):
    path = write(tmp_path, '[gateways.shop]\nkind = "newapi"\ndatabase_url = "sqlite:///a.db"\nquota_per_usd = 1000\n'
                           '[gateways.shop.plans]\nvip = "coding"\n')

    settings = gateway_settings("newapi", "shop", path, credits_per_usd=2.0)

    assert settings.database_url == "sqlite:///a.db"
    assert settings.quota_per_usd == 1000
    assert settings.credits_per_usd == 2.0
    assert settings.plan_of("vip") == "coding"
    assert settings.plan_of("other") == "other"
    assert settings.plan_of("") == "default"


@pytest.mark.parametrize(("text", "message"), [
    ('[gateways.shop]\nkind = "kong"\n', "kind = 'kong'; use one of newapi, oneapi, litellm"),
    ('[gateways.shop]\nkind = "newapi"\nquota_per_usd = 0\n', "quota_per_usd must be a finite number above 0, got 0"),
    ('[gateways.shop]\nkind = "newapi"\nquota_per_usd = inf\n', "quota_per_usd must be a finite number above 0, got inf"),
    ('[gateways.shop]\nkind = "newapi"\nquota_per_usd = nan\n', "quota_per_usd must be a finite number above 0, got nan"),
    ('[gateways.shop]\nkind = "newapi"\nquota_per_usd = -5\n', "quota_per_usd must be a finite number above 0, got -5"),
    ('[gateways.shop]\nkind = "newapi"\nquota_per_usd = "lots"\n',
     "quota_per_usd = 'lots' is not a number; write a number without quotes"),
    ('[gateways.shop]\nkind = "newapi"\ncredits_per_usd = inf\n', "credits_per_usd must be a finite number above 0, got inf"),
    ('[gateways.shop]\nkind = "newapi"\n[gateways.shop.plans]\ndefault = ""\n',
     "[gateways.shop].plans: default = '' is empty; name a plan of the catalogue"),
    ('[gateways.shop]\nkind = "newapi"\nquota_per_dollar = 5\n',
     "[gateways.shop]: unknown key 'quota_per_dollar'; did you mean 'quota_per_usd'? valid keys: kind, database_url"),
    ('[gateways.shop]\nkind = "newapi"\ndatabase_url = 5\n', "database_url = 5 is not a database URL"),
    ('[gateways.shop]\nkind = "newapi"\n[gateways.shop.plans]\nvip = 3\n', "must map gateway groups to plan names"),
    ('[gateways.shop]\nkind = "newapi"\ndefault_endpoint = "chat"\n', "default_endpoint must be a path"),
    ("[other]\n", "no [gateways.NAME] tables found"),
    ("[gateways.shop\n", "invalid TOML"),
])
def test_bad_file_names_problem(tmp_path, text, message):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_gateways(path)


ENFORCE = '[gateways.shop]\nkind = "newapi"\n[gateways.shop.enforce]\n'


@pytest.mark.parametrize(("line", "message"), [
    ("attempts = 0", "attempts must be a whole number of 1 or more, got 0; e.g. attempts = 4"),
    ("attempts = -3", "attempts must be a whole number of 1 or more, got -3"),
    ('attempts = "x"', "attempts must be a whole number of 1 or more, got 'x'"),
    ("timeout_seconds = -1", "timeout_seconds must be a finite number above 0, got -1"),
    ("timeout_seconds = 0", "timeout_seconds must be a finite number above 0, got 0"),
    ("backoff_seconds = -1", "backoff_seconds must be a finite number 0 or above, got -1"),
    ('backoff_seconds = "1s"', "backoff_seconds = '1s' is not a number"),
    ('api_url = "not a url"', "api_url = 'not a url' is not an http:// or https:// address with a host"),
    ('api_url = "ftp://127.0.0.1:3000"', "api_url = 'ftp://127.0.0.1:3000' is not an http:// or https://"),
    ('api_url = "http://"', "api_url = 'http://' is not an http:// or https:// address with a host"),
    ('api_url = "http://127.0.0.1:99999"', "api_url = 'http://127.0.0.1:99999' is not an http://"),
    ('admin_user_id = "root"', "admin_user_id must be the admin's numeric user id, got 'root'; e.g. admin_user_id = 1"),
    ('dry_run = "yes"', "dry_run must be true or false, got 'yes'"),
    ("master_key_env = 'X'", "[gateways.shop].enforce: unknown key 'master_key_env'; did you mean 'access_token_env'? valid keys: api_url"),
    ("acess_token_env = 'X'", "did you mean 'access_token_env'?"),
])
def test_bad_enforce_table_names_problem(tmp_path, line, message):
    path = write(tmp_path, ENFORCE + line + "\n")

    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        load_gateways(path)

    assert str(path) in str(raised.value)


def test_enforce_command_reports_bad_file(tmp_path, sqlite_url):
    path = write(tmp_path, ENFORCE + 'api_url = "http://127.0.0.1:1"\nattempts = "x"\n')

    result = CliRunner().invoke(main, ["enforce", "--config", str(path), "--db", sqlite_url])

    assert result.exit_code == 2
    assert "attempts must be a whole number of 1 or more, got 'x'" in result.output
    assert "Traceback" not in result.output


def test_quota_override_must_be_finite():
    with pytest.raises(ConfigError, match=re.escape("command line: quota_per_usd must be a finite number above 0, got inf")):
        gateway_settings("newapi", None, None, quota_per_usd=float("inf"))


def test_kind_must_match_table(tmp_path):
    path = write(tmp_path, '[gateways.shop]\nkind = "oneapi"\n')

    with pytest.raises(ConfigError, match=r"\[gateways\.shop\] has kind = 'oneapi', not 'newapi'"):
        gateway_settings("newapi", "shop", path)


@pytest.mark.parametrize(("enforce", "message"), [
    ({}, "api_url is missing"),
    ({"api_url": "http://127.0.0.1:1", "access_token_env": "NO_SUCH_VARIABLE_FOR_TEST"},
     "environment variable NO_SUCH_VARIABLE_FOR_TEST is not set"),
    ({"api_url": "http://127.0.0.1:1"}, "access_token_env is missing"),
])
def test_enforce_table_checked(sqlite_url, enforce, message):
    settings = gateway_settings("newapi", None, None, database_url=sqlite_url, enforce=enforce)

    with pytest.raises(ConfigError, match=message):
        build_enforcer(settings, open_store(sqlite_url))


def test_newapi_needs_admin_user_id(sqlite_url, monkeypatch):
    monkeypatch.setenv("TOKEN_FOR_TEST", "secret")
    settings = gateway_settings("newapi", None, None, database_url=sqlite_url,
                                enforce={"api_url": "http://127.0.0.1:1", "access_token_env": "TOKEN_FOR_TEST"})

    with pytest.raises(ConfigError, match="admin_user_id is missing"):
        build_enforcer(settings, open_store(sqlite_url))


def test_import_plan_option_checked(sqlite_url):
    result = CliRunner().invoke(main, ["import", "newapi", "--from", sqlite_url, "--db", sqlite_url, "--plan", "vip"])

    assert result.exit_code == 2
    assert "expected GROUP=PLAN, got 'vip'" in result.output


def test_import_missing_table_named(sqlite_url):
    result = CliRunner().invoke(main, ["import", "oneapi", "--from", sqlite_url, "--db", sqlite_url])

    assert result.exit_code == 2
    assert "table 'logs' not found" in result.output


def test_import_missing_sqlite_file_named(sqlite_url, tmp_path):
    missing = tmp_path / "no-such-folder" / "one-api.db"

    result = CliRunner().invoke(main, ["import", "oneapi", "--from", f"sqlite:///{missing}", "--db", sqlite_url])

    assert result.exit_code == 2
    assert f"no such file {missing}" in result.output
    assert not missing.exists()
