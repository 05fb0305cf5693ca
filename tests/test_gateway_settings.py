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
    ('[gateways.shop]\nkind = "newapi"\nquota_per_usd = 0\n', "quota_per_usd must be above 0, got 0.0"),
    ('[gateways.shop]\nkind = "newapi"\n[gateways.shop.plans]\nvip = 3\n', "must map gateway groups to plan names"),
    ('[gateways.shop]\nkind = "newapi"\ndefault_endpoint = "chat"\n', "default_endpoint must be a path"),
    ("[other]\n", "no [gateways.NAME] tables found"),
    ("[gateways.shop\n", "invalid TOML"),
])
def test_bad_file_names_problem(tmp_path, text, message):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_gateways(path)


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
