"""Versioned IsolationForest artifacts: a skops file, its trees as arrays, and JSON metadata.

An artifact is two or three files in the models folder. ``iforest-VERSION.skops`` is
the fitted estimator in skops format, which loads without running pickled
code. ``iforest-VERSION.trees.npz`` contains the same trees as numpy arrays
(``ForestScorer``), which score without importing scikit-learn. Artifacts
saved before these files existed have none, and score through the
estimator. ``iforest-VERSION.json`` contains the version, feature names in order,
threshold, training window, metrics, library versions, the SHA-256 of the
skops file and of the trees file and, for artifacts written by ``fairuse train``, the SHA-256 of the
metadata itself, the training range of each feature and the detector
thresholds the model was evaluated with.

Artifacts written by ``fairuse train`` are marked ``"candidate": true``. No
worker scores with one until ``fairuse models activate`` records it as active.
"""

from __future__ import annotations

import hashlib
import logging
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.features.keyday import KEYDAY_FEATURES
from detector.iforest_scores import ForestFileError, ForestScorer, fast_path_fits, score_samples

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

logger = logging.getLogger(__name__)

MODELS_ENV = "FAIRUSE_MODELS_DIR"
_PREFIX = "iforest-"
# The metadata field with the SHA-256 of the trees file, in artifacts that have one.
TREES_CHECKSUM = "trees_sha256"


class ModelError(RuntimeError):
    """An artifact that is missing, altered or built for other features."""


class AnomalyModel:
    """A loaded IsolationForest with the metadata it was saved with.

    A model read from an artifact with a trees file (see ``load_model``)
    scores from those arrays, and reads its skops file, which imports
    scikit-learn, only when ``estimator`` is first used.
    """

    __slots__ = ("metadata", "trees", "_estimator", "_skops_path")

    def __init__(
        self,
        estimator: IsolationForest | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        trees: ForestScorer | None = None,
        skops_path: Path | None = None,
    ) -> None:
        self.metadata: dict[str, Any] = metadata if metadata is not None else {}
        self.trees = trees
        self._estimator = estimator
        self._skops_path = skops_path

    @property
    def estimator(self) -> IsolationForest:
        """The fitted IsolationForest, read from the skops file on first use."""
        if self._estimator is None and self._skops_path is not None:
            self._estimator = _read_estimator(self._skops_path)
        return self._estimator

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def threshold(self) -> float:
        """Anomaly score (``-score_samples``) above which a key-day is anomalous."""
        return float(self.metadata["threshold"])

    @property
    def thresholds(self) -> dict[str, dict[str, float]]:
        """Detector thresholds recalibrated with this model, by detector reason code."""
        return dict(self.metadata.get("thresholds", {}))

    def anomaly_scores(self, features: np.ndarray) -> np.ndarray:
        """Return the anomaly score: about 0.5 for ordinary rows, towards 1 for isolated ones.

        The score is ``-score_samples`` of the forest, raised for rows that lie
        outside the feature ranges seen in training (see ``range_scores``).
        """
        if self.trees is not None and self.trees.fits(features):
            scores = -self.trees.score_samples(features)
        else:
            scores = -score_samples(self.estimator, features)
        ranges = self.metadata.get("feature_ranges")
        if ranges:
            scores = np.maximum(scores, range_scores(features, ranges, self.threshold))
        return scores


def range_scores(features: np.ndarray, ranges: dict[str, Any], threshold: float) -> np.ndarray:
    """Score how far each row lies outside the training range of its most extreme feature.

    A forest cannot split on a feature that was constant in training, so a
    later extreme value of that feature changes nothing in its score. This
    check covers that case. A row more than ``tolerance`` scales beyond the
    training minimum or maximum of any guarded feature scores above ``threshold``,
    rising towards 1 the further out it lies. Rows inside the tolerance score
    0. The scale never falls below the feature's floor, so no division is by
    zero.
    """
    low = np.asarray(ranges["low"], dtype=np.float64)
    high = np.asarray(ranges["high"], dtype=np.float64)
    scale = np.asarray(ranges["scale"], dtype=np.float64)
    tolerance = float(ranges["tolerance"])

    above = (features - high) / scale
    below = (low - features) / scale
    guarded = np.asarray(ranges.get("guarded", [True] * len(low)), dtype=bool)
    excess = np.max(np.maximum(np.maximum(above, below), 0.0) * guarded, axis=1)
    beyond = excess > tolerance
    rising = 1.0 - 1.0 / (1.0 + np.maximum(excess - tolerance, 0.0))
    return np.where(beyond, threshold + (1.0 - threshold) * rising, 0.0)


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


def read_metadata(models_dir: Path, version: str) -> dict[str, Any]:
    """Return the JSON metadata of ``version`` without loading or checking the estimator."""
    path = models_dir / f"{_PREFIX}{version}.json"
    if not path.is_file():
        raise ModelError(f"{models_dir}: model version {version!r} not found; have {list_versions(models_dir)}")
    try:
        metadata = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: metadata is not valid JSON ({error}); restore or retrain the artifact") from error
    if not isinstance(metadata, dict):
        raise ModelError(f"{path}: metadata is a JSON {type(metadata).__name__}, not an object; restore or retrain the artifact")
    return metadata


def default_version(models_dir: Path) -> str | None:
    """Return the newest version that is not a candidate and passes its checks: the model used when none was activated.

    A newer artifact that was altered or damaged is passed over with a warning,
    so scoring falls back to the one before it instead of running without a model.
    """
    for version in reversed(list_versions(models_dir)):
        try:
            metadata = read_metadata(models_dir, version)
            if metadata.get("candidate", False):
                continue
            model_path = models_dir / f"{_PREFIX}{version}.skops"
            _check_artifact(model_path, metadata)
            _load_trees(model_path, metadata)
        except (ModelError, OSError) as error:
            logger.warning("model %s passed over: %s", version, error)
            continue
        return version
    return None


def load_model(models_dir: Path | None = None, version: str | None = None) -> AnomalyModel:
    """Load ``version`` (or ``default_version``) and check its checksums and feature names."""
    models_dir = models_dir or default_models_dir()
    versions = list_versions(models_dir)
    if version is None:
        version = default_version(models_dir)
        if version is None:
            raise ModelError(
                f"{models_dir}: no {_PREFIX}*.json artifact found that is not a candidate; "
                "run scripts/train_default_model.py, activate a version with `fairuse models activate`, "
                "or pass --no-model"
            )

    metadata_path = models_dir / f"{_PREFIX}{version}.json"
    model_path = models_dir / f"{_PREFIX}{version}.skops"
    if not metadata_path.is_file() or not model_path.is_file():
        raise ModelError(f"{models_dir}: model version {version!r} not found; have {versions}")

    metadata = read_metadata(models_dir, version)
    _check_artifact(model_path, metadata)
    trees = _load_trees(model_path, metadata)
    if trees is not None:
        return AnomalyModel(metadata=metadata, trees=trees, skops_path=model_path)
    return AnomalyModel(estimator=_read_estimator(model_path), metadata=metadata)


def _load_trees(model_path: Path, metadata: dict[str, Any]) -> ForestScorer | None:
    """Read the trees file of a checked artifact, or return None when its metadata names none."""
    if not metadata.get(TREES_CHECKSUM):
        return None
    try:
        return ForestScorer.load(trees_path(model_path))
    except ForestFileError as error:
        raise ModelError(f"{error}; retrain or restore the artifact") from error


def _read_estimator(model_path: Path) -> IsolationForest:
    """Read the fitted estimator of a checked skops file."""
    # Imported here: skops with scikit-learn and SciPy take about a second to import,
    # which commands that never read an estimator should not pay.
    import skops.io as sio

    try:
        trusted = sio.get_untrusted_types(file=model_path)
        return sio.load(model_path, trusted=trusted if _only_sklearn(trusted) else None)
    except Exception as error:  # noqa: BLE001 - skops raises many types for a file it cannot read
        raise ModelError(f"{model_path}: cannot load the estimator: {error}; retrain or restore the artifact") from error


def trees_path(model_path: Path) -> Path:
    """Return the path of the trees file beside the skops file ``model_path``."""
    return model_path.with_suffix(".trees.npz")


def save_model(
    estimator: IsolationForest, metadata: dict[str, Any], models_dir: Path
) -> Path:
    """Write an artifact pair and return the metadata path; the checksum is added here."""
    models_dir.mkdir(parents=True, exist_ok=True)
    version = metadata["version"]
    model_path = models_dir / f"{_PREFIX}{version}.skops"
    import skops.io as sio

    sio.dump(estimator, model_path)
    metadata = {**metadata, "sha256": _sha256(model_path), "format": "skops"}
    metadata.pop(TREES_CHECKSUM, None)
    if fast_path_fits(estimator):
        ForestScorer.from_estimator(estimator).save(trees_path(model_path))
        metadata[TREES_CHECKSUM] = _sha256(trees_path(model_path))

    metadata["metadata_sha256"] = metadata_checksum(metadata)
    metadata_path = models_dir / f"{_PREFIX}{version}.json"
    metadata_path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", "utf-8")
    return metadata_path


def metadata_checksum(metadata: dict[str, Any]) -> str:
    """Return the SHA-256 of the metadata's canonical JSON, leaving out ``metadata_sha256`` itself."""
    content = {name: value for name, value in metadata.items() if name != "metadata_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def _check_artifact(model_path: Path, metadata: dict[str, Any]) -> None:
    # NOTE: artifacts saved before metadata checksums existed carry none, so
    # only their skops file is checked.
    recorded = metadata.get("metadata_sha256")
    if recorded is not None and recorded != metadata_checksum(metadata):
        raise ModelError(
            f"{model_path.with_suffix('.json')}: metadata checksum does not match its content; "
            "the threshold or another field was edited by hand, retrain or restore the artifact"
        )
    actual = _sha256(model_path)
    if metadata.get("sha256") != actual:
        raise ModelError(
            f"{model_path}: checksum {actual[:12]}… does not match the metadata's "
            f"{str(metadata.get('sha256'))[:12]}…; the artifact was altered, retrain or restore it"
        )
    recorded_trees = metadata.get(TREES_CHECKSUM)
    if recorded_trees is not None:
        path = trees_path(model_path)
        actual = _sha256(path) if path.is_file() else "missing"
        if actual != recorded_trees:
            raise ModelError(
                f"{path}: checksum {actual[:12]}… does not match the metadata's {str(recorded_trees)[:12]}…; "
                "the trees file was altered or removed, retrain or restore the artifact"
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
