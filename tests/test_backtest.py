"""fairuse backtest: what a candidate policy or model would change on stored history."""

import json

import pytest
from click.testing import CliRunner

from detector.cli import main
from tests.model_helpers import small_history, train_versions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    simulation, _ = small_history(tmp_path_factory.mktemp("backtest"), keys=150, days=4, seed=2)
    return simulation


@pytest.fixture
def candidate_policy(tmp_path):
    """The shipped policy without the shared-key review and with any automation load suspended."""
    from importlib import resources

    text = resources.files("detector.config").joinpath("policy.toml").read_text("utf-8")
    text = text.replace('name = "default"', 'name = "candidate"')
    text = text.replace('min_impact = 2\naction = "review"', 'min_impact = 1000\naction = "review"')
    text = text.replace('min_score = 60\nmin_impact = 1.5\naction = "throttle"', 'min_score = 0\nmin_impact = 0\naction = "suspend"')
    path = tmp_path / "candidate.toml"
    path.write_text(text, "utf-8")
    return path


def _changes(output):
    report = json.loads(output)
    return {(change["change"], change["reason"], change["action"]): change for change in report["changes"]}


def test_backtest_events_lists_changes(history, candidate_policy, sqlite_url):
    result = CliRunner().invoke(
        main, ["backtest", "--policy", str(candidate_policy), "--since", "7d", "--db", sqlite_url, "--json",
               str(history.events_path)],
    )

    assert result.exit_code == 0, result.output
    changes = _changes(result.output)
    gone = changes[("gone", "key_sharing", "review")]
    new = changes[("new", "automation", "suspend")]
    assert gone["subjects"] >= 1
    assert new["subjects"] >= 1
    assert all(example.startswith("key:") for example in gone["examples"] + new["examples"])
    assert "policy/candidate-" in json.loads(result.output)["candidate"]


def test_backtest_stored_findings(history, candidate_policy, sqlite_url):
    scored = CliRunner().invoke(main, ["score", str(history.events_path), "--db", sqlite_url, "--no-model"])
    assert scored.exit_code == 0, scored.output

    result = CliRunner().invoke(main, ["backtest", "--policy", str(candidate_policy), "--db", sqlite_url, "--json"])

    assert result.exit_code == 0, result.output
    changes = _changes(result.output)
    assert changes[("gone", "key_sharing", "review")]["subjects"] >= 1
    assert changes[("new", "automation", "suspend")]["subjects"] >= 1


def test_backtest_same_policy_changes_nothing(history, sqlite_url):
    result = CliRunner().invoke(main, ["backtest", "--db", sqlite_url, "--json", str(history.events_path)])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["changes"] == []
    assert report["unchanged"] > 0


def test_backtest_candidate_model(history, sqlite_url, tmp_path, monkeypatch):
    models_dir = train_versions(tmp_path / "train", tmp_path / "models", versions=("cand",))
    monkeypatch.setenv("FAIRUSE_MODELS_DIR", str(models_dir))

    result = CliRunner().invoke(
        main, ["backtest", "--model", "cand", "--db", sqlite_url, "--json", str(history.events_path)]
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["candidate"].startswith("iforest-cand")


def test_backtest_model_without_events_rejected(sqlite_url):
    result = CliRunner().invoke(main, ["backtest", "--model", "2026.12.04", "--db", sqlite_url])

    assert result.exit_code == 2
    assert "--model needs event files" in result.output


def test_backtest_invalid_since_rejected(history, sqlite_url):
    result = CliRunner().invoke(main, ["backtest", "--since", "a week", "--db", sqlite_url, str(history.events_path)])

    assert result.exit_code == 2
    assert "--since: invalid duration 'a week'" in result.output
