"""Small trained models and registry set-ups shared by the model tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from detector.model_registry import metadata_checksum, save_model
from detector.plans import load_plans
from detector.readers import read_events
from detector.simulate import simulate_traffic
from detector.training import build_training_set, fit_model


def small_history(folder: Path, keys: int = 120, days: int = 3, seed: int = 4):
    """Simulate a few days of traffic; return the simulation and its events frame."""
    simulation = simulate_traffic(folder, keys=keys, days=days, seed=seed)
    return simulation, read_events([simulation.events_path]).frame


def train_versions(folder: Path, models_dir: Path, versions=("v1", "v2")) -> Path:
    """Write one small trained candidate per version name to ``models_dir`` and return it."""
    simulation, history = small_history(folder)
    labels = pd.read_csv(simulation.labels_path, dtype=str, keep_default_na=False)
    abusive = set(labels.loc[labels["is_abuse"] == "1", "key_id"])
    training = build_training_set(history, load_plans(), abusive)
    for number, version in enumerate(versions):
        model = fit_model(training, version=version, seed=number + 1, n_estimators=50)
        save_model(model.estimator, model.metadata, models_dir)
    return models_dir


def copy_models(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def corrupt(models_dir: Path, version: str) -> None:
    """Flip one byte in the middle of a version's skops file."""
    path = models_dir / f"iforest-{version}.skops"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite_metadata(models_dir: Path, version: str, **changes) -> None:
    """Change metadata fields and reseal the metadata checksum, as a careless retrain might."""
    path = models_dir / f"iforest-{version}.json"
    metadata = {**json.loads(path.read_text("utf-8")), **changes}
    metadata["metadata_sha256"] = metadata_checksum(metadata)
    path.write_text(json.dumps(metadata), "utf-8")
