"""Versioned IsolationForest artifacts: a skops file and its JSON metadata.

An artifact is two files in the models folder. ``iforest-VERSION.skops`` is
the fitted estimator in skops format, which loads without running pickled
code. ``iforest-VERSION.json`` holds the version, feature names in order,
threshold, training window, metrics, library versions and the SHA-256 of the
skops file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.ensemble import IsolationForest

from detector.features.keyday import KEYDAY_FEATURES

MODELS_ENV = "FAIRUSE_MODELS_DIR"
_PREFIX = "iforest-"


class ModelError(RuntimeError):
    """An artifact that is missing, altered or built for other features."""


@dataclass(frozen=True, slots=True)
class AnomalyModel:
    """A loaded IsolationForest with the metadata it was saved with."""

    estimator: IsolationForest
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def threshold(self) -> float:
        """Anomaly score (``-score_samples``) above which a key-day is anomalous."""
        return float(self.metadata["threshold"])

    def anomaly_scores(self, features: np.ndarray) -> np.ndarray:
        """Return ``-score_samples``: about 0.5 for ordinary rows, towards 1 for isolated ones."""
        return -self.estimator.score_samples(features)


def default_models_dir() -> Path:
    """Return the models folder: ``$FAIRUSE_MODELS_DIR`` or ``models/`` beside the package."""
    configured = os.environ.get(MODELS_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[1] / "models"


def list_versions(models_dir: Path) -> list[str]:
    """Return the artifact versions in ``models_dir``, oldest first."""
    if not models_dir.is_dir():
        return []
    names = sorted(path.stem for path in models_dir.glob(f"{_PREFIX}*.json"))
    return [name.removeprefix(_PREFIX) for name in names]


def load_model(models_dir: Path | None = None, version: str | None = None) -> AnomalyModel:
    """Load ``version`` (or the newest) and check its checksum and feature names."""
    models_dir = models_dir or default_models_dir()
    versions = list_versions(models_dir)
    if version is None:
        if not versions:
            raise ModelError(
                f"{models_dir}: no {_PREFIX}*.json artifact found; "
                "run scripts/train_default_model.py or pass --no-model"
            )
        version = versions[-1]

    metadata_path = models_dir / f"{_PREFIX}{version}.json"
    model_path = models_dir / f"{_PREFIX}{version}.skops"
    if not metadata_path.is_file() or not model_path.is_file():
        raise ModelError(f"{models_dir}: model version {version!r} not found; have {versions}")

    metadata = json.loads(metadata_path.read_text("utf-8"))
    _check_artifact(model_path, metadata)
    trusted = sio.get_untrusted_types(file=model_path)
    estimator = sio.load(model_path, trusted=trusted if _only_sklearn(trusted) else None)
    return AnomalyModel(estimator=estimator, metadata=metadata)


def save_model(
    estimator: IsolationForest, metadata: dict[str, Any], models_dir: Path
) -> Path:
    """Write an artifact pair and return the metadata path; the checksum is added here."""
    models_dir.mkdir(parents=True, exist_ok=True)
    version = metadata["version"]
    model_path = models_dir / f"{_PREFIX}{version}.skops"
    sio.dump(estimator, model_path)

    metadata = {**metadata, "sha256": _sha256(model_path), "format": "skops"}
    metadata_path = models_dir / f"{_PREFIX}{version}.json"
    metadata_path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", "utf-8")
    return metadata_path


def _check_artifact(model_path: Path, metadata: dict[str, Any]) -> None:
    actual = _sha256(model_path)
    if metadata.get("sha256") != actual:
        raise ModelError(
            f"{model_path}: checksum {actual[:12]}… does not match the metadata's "
            f"{str(metadata.get('sha256'))[:12]}…; the artifact was altered, retrain or restore it"
        )
    features = tuple(metadata.get("features", ()))
    if features != KEYDAY_FEATURES:
        raise ModelError(
            f"{model_path}: trained on features {list(features)}, but this version computes "
            f"{list(KEYDAY_FEATURES)}; retrain the model"
        )


def _only_sklearn(types: list[str]) -> bool:
    """Accept the extra types skops reports only when they come from scikit-learn or numpy."""
    return all(name.startswith(("sklearn.", "numpy.")) for name in types)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
