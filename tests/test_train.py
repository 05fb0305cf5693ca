"""fairuse train: history, staff labels and simulated injections in; a checked candidate artifact out."""

import hashlib
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

from detector.cli import main
from detector.features.keyday import KEYDAY_FEATURES
from detector.model_registry import load_model
from detector.store import open_store
from detector.store.models import LabelRow
from detector.thresholds import load_thresholds
from tests.factories import record
from tests.model_helpers import small_history

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    simulation, _ = small_history(tmp_path_factory.mktemp("train"), keys=150, days=4, seed=3)
    return simulation


def _label(session, subject, verdict):
    session.add(LabelRow(
        subject_type="key", subject=subject, verdict=verdict, reasons=["anomaly"], staff="analyst",
        comment="", created_at=datetime.now(UTC),
    ))


@pytest.fixture
def labelled_store(history, database_url):
    labels = pd.read_csv(history.labels_path, dtype=str, keep_default_na=False)
    abusive = labels.loc[labels["is_abuse"] == "1", "key_id"].head(6).tolist()
    benign = labels.loc[labels["is_abuse"] == "0", "key_id"].head(10).tolist()
    with Session(open_store(database_url).engine) as session, session.begin():
        for key in abusive:
            _label(session, key, "abuse")
        for key in benign:
            _label(session, key, "benign")
    return database_url


def _train(history, database, models_dir, *extra):
    return CliRunner().invoke(main, [
        "train", str(history.events_path), "--db", database, "--models-dir", str(models_dir),
        "--version", "t1", "--injection-keys", "60", *extra,
    ])


def test_train_writes_checked_candidate(history, labelled_store, tmp_path):
    models_dir = tmp_path / "models"

    result = _train(history, labelled_store, models_dir, "--since", "3d")

    assert result.exit_code == 0, result.output
    metadata = json.loads((models_dir / "iforest-t1.json").read_text("utf-8"))
    skops_bytes = (models_dir / "iforest-t1.skops").read_bytes()
    assert metadata["version"] == "t1"
    assert metadata["candidate"] is True
    assert metadata["features"] == list(KEYDAY_FEATURES)
    assert metadata["sha256"] == hashlib.sha256(skops_bytes).hexdigest()
    assert 0.3 < metadata["threshold"] < 1.0
    assert metadata["libraries"]["scikit-learn"]
    window = metadata["training"]
    assert datetime.fromisoformat(window["window_end"]) - datetime.fromisoformat(window["window_start"]) <= timedelta(days=3)
    assert load_model(models_dir, "t1").version == "t1"


def test_train_evaluates_on_labels_and_injections(history, labelled_store, tmp_path):
    result = _train(history, labelled_store, tmp_path / "models")

    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "models" / "iforest-t1.json").read_text("utf-8"))["metrics"]
    staff = metrics["staff_labels"]
    assert staff["labelled_keys"] == 16
    assert staff["abuse_keys"] == 6
    assert 0.0 <= staff["roc_auc"] <= 1.0
    injected = metrics["simulated_injections"]
    assert set(injected["recall"]) >= {"bot", "cost_spike", "resold_key"}
    assert injected["benign_keys"] > 0


def test_train_keeps_thresholds_within_bounds(history, labelled_store, tmp_path):
    result = _train(history, labelled_store, tmp_path / "models")

    assert result.exit_code == 0, result.output
    metadata = json.loads((tmp_path / "models" / "iforest-t1.json").read_text("utf-8"))
    shipped = load_thresholds()
    for key, note in metadata["calibration"].items():
        section, name = key.split(".")
        value = metadata["thresholds"][section][name]
        assert shipped[section][name] <= value <= 2 * shipped[section][name], key
        assert note["value"] == value


def test_train_excludes_staff_abuse_from_benign(history, labelled_store, plans):
    from detector.model_evaluation import abusive_subjects, read_staff_labels
    from detector.readers import read_events
    from detector.training import build_training_set

    keys, accounts = abusive_subjects(read_staff_labels(open_store(labelled_store).engine))
    training = build_training_set(read_events([history.events_path]).frame, plans, keys, accounts)

    flagged = set(training.subject_names[~training.benign])
    assert len(keys) == 6
    assert flagged == keys & set(training.subject_names)


def test_train_existing_version_rejected(history, sqlite_url, tmp_path):
    assert _train(history, sqlite_url, tmp_path / "models", "--injection-keys", "0").exit_code == 0

    result = _train(history, sqlite_url, tmp_path / "models", "--injection-keys", "0")

    assert result.exit_code == 2
    assert "model version 't1' already exists" in result.output


def test_train_applies_thresholds_file(history, sqlite_url, tmp_path):
    candidate = tmp_path / "sharing.toml"
    candidate.write_text("[key_sharing]\nmin_components = 2\n", "utf-8")

    result = _train(history, sqlite_url, tmp_path / "models", "--injection-keys", "0", "--thresholds", str(candidate))

    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "models", "t1")
    assert model.thresholds["key_sharing"]["min_components"] == 2
    assert model.thresholds["key_sharing"]["min_switches"] == 3


def test_train_invalid_thresholds_rejected(history, sqlite_url, tmp_path):
    candidate = tmp_path / "bad.toml"
    candidate.write_text("[key_sharing]\nmin_friends = 2\n", "utf-8")

    result = _train(history, sqlite_url, tmp_path / "models", "--injection-keys", "0", "--thresholds", str(candidate))

    assert result.exit_code == 2
    assert "[key_sharing] min_friends: unknown threshold" in result.output
    assert not (tmp_path / "models" / "iforest-t1.json").exists()


def test_train_on_a_handful_of_key_days_rejected(sqlite_url, tmp_path):
    tiny = tmp_path / "tiny.jsonl"
    lines = [record(number, key="solo", ts=1795392000.0 + number * 60) for number in range(3)]
    tiny.write_text("".join(json.dumps(line) + "\n" for line in lines))

    result = _train(SimpleNamespace(events_path=tiny), sqlite_url, tmp_path / "models", "--injection-keys", "0")

    assert result.exit_code == 2
    assert "only 1 benign key-days" in result.output
    assert not (tmp_path / "models" / "iforest-t1.json").exists()
