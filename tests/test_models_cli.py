"""fairuse models list, show and shadow, as an analyst runs them."""

import pytest
from click.testing import CliRunner

from detector.cli import main
from detector.store import open_store
from detector.store.model_assignments import SHADOW, ModelAssignments
from tests.model_helpers import copy_models, corrupt, train_versions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_versions(tmp_path_factory.mktemp("history"), tmp_path_factory.mktemp("trained"))


@pytest.fixture
def models_dir(trained, tmp_path, monkeypatch):
    folder = copy_models(trained, tmp_path / "models")
    monkeypatch.setenv("FAIRUSE_MODELS_DIR", str(folder))
    return folder


def _run(*arguments):
    return CliRunner().invoke(main, list(arguments))


def test_list_shows_roles(models_dir, sqlite_url):
    assert _run("models", "activate", "v1", "--db", sqlite_url).exit_code == 0
    assert _run("models", "shadow", "v2", "--db", sqlite_url).exit_code == 0

    result = _run("models", "list", "--db", sqlite_url)

    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.output.splitlines() if line.startswith("│")}
    assert rows == {"v1": "active", "v2": "shadow"}


def test_show_reports_rejected_artifact(models_dir):
    corrupt(models_dir, "v1")

    result = _run("models", "show", "v1")

    assert result.exit_code == 1
    assert '"version": "v1"' in result.output
    assert "artifact rejected" in result.output


def test_show_unknown_version(models_dir):
    result = _run("models", "show", "v9")

    assert result.exit_code == 2
    assert "model version 'v9' not found; have ['v1', 'v2']" in result.output


def test_shadow_policy_stored_and_stopped(models_dir, sqlite_url, tmp_path):
    policy = tmp_path / "candidate.toml"
    policy.write_text('[policy]\nname = "candidate"\n\n[[rules]]\nreason = "anomaly"\naction = "review"\nduration = "1d"\n', "utf-8")
    assignments = ModelAssignments(open_store(sqlite_url).engine)

    started = _run("models", "shadow", "--policy", str(policy), "--db", sqlite_url, "--by", "analyst")
    assert started.exit_code == 0, started.output
    running = assignments.current(SHADOW)
    assert running.version is None
    assert running.policy_name == "candidate.toml"
    assert 'name = "candidate"' in running.policy_toml

    stopped = _run("models", "shadow", "--stop", "--db", sqlite_url)
    assert stopped.exit_code == 0, stopped.output
    assert not assignments.current(SHADOW).is_set


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((), "name a model VERSION, a --policy FILE, or both"),
        (("v1", "--stop"), "--stop takes no VERSION or --policy"),
        (("v9",), "model version 'v9' not found"),
    ],
)
def test_shadow_invalid_request_rejected(models_dir, sqlite_url, arguments, message):
    result = _run("models", "shadow", *arguments, "--db", sqlite_url)

    assert result.exit_code == 2
    assert message in result.output
    assert ModelAssignments(open_store(sqlite_url).engine).current(SHADOW) is None


def test_shadow_invalid_policy_rejected(models_dir, sqlite_url, tmp_path):
    policy = tmp_path / "broken.toml"
    policy.write_text('[[rules]]\nreason = "anomaly"\naction = "ban"\n', "utf-8")

    result = _run("models", "shadow", "--policy", str(policy), "--db", sqlite_url)

    assert result.exit_code == 2
    assert "action: expected one of" in result.output
    assert ModelAssignments(open_store(sqlite_url).engine).current(SHADOW) is None
