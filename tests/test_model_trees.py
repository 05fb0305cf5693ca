"""A model's trees saved as arrays: the same scores as scikit-learn, checked like the skops file, no scikit-learn import."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from detector.features.keyday import KEYDAY_FEATURES
from detector.iforest_scores import ForestFileError, ForestScorer
from detector.model_registry import (
    TREES_CHECKSUM,
    ModelError,
    _sha256,
    default_version,
    load_model,
    metadata_checksum,
    save_model,
    trees_path,
)
from tests.model_helpers import rewrite_metadata
from tests.test_iforest_scores import SHIPPED, _rows, extreme_rows


def _saved_scorer(estimator, tmp_path) -> ForestScorer:
    path = tmp_path / "forest.trees.npz"
    ForestScorer.from_estimator(estimator).save(path)
    return ForestScorer.load(path)


def _altered(scorer: ForestScorer, **arrays) -> ForestScorer:
    """Return ``scorer`` with some arrays replaced, walked in numpy as a loaded file would be."""
    values = {name: getattr(scorer, name) for name in scorer.__slots__}
    return ForestScorer(**{**values, **arrays, "fitted": ()})


def _tiny_artifact(models_dir, version="t1", max_features=1.0):
    forest = IsolationForest(n_estimators=8, max_features=max_features, random_state=0).fit(_rows(300, seed=9))
    metadata = {"version": version, "features": list(KEYDAY_FEATURES), "threshold": 0.5}
    save_model(forest, metadata, models_dir)
    return forest


@pytest.mark.parametrize("count", [1, 7, 3000])
def test_saved_trees_score_as_scikit_learn(tmp_path, count):
    scorer = _saved_scorer(SHIPPED, tmp_path)
    rows = _rows(count, seed=count + 100)

    assert scorer.fitted == ()
    np.testing.assert_array_equal(scorer.score_samples(rows), SHIPPED.score_samples(rows))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_saved_trees_score_extreme_values(tmp_path):
    scorer = _saved_scorer(SHIPPED, tmp_path)
    rows = extreme_rows()

    np.testing.assert_array_equal(scorer.score_samples(rows), SHIPPED.score_samples(rows))


def test_shipped_model_scores_without_scikit_learn():
    script = (
        "import sys, numpy as np\n"
        "from detector.model_registry import load_model\n"
        "model = load_model()\n"
        "scores = model.anomaly_scores(np.zeros((3, 13)))\n"
        "print(model.trees is not None, len(scores), sorted({'sklearn', 'skops', 'scipy'} & set(sys.modules)))\n"
    )
    output = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout

    assert output.split() == ["True", "3", "[]"]


def test_estimator_read_on_first_use():
    model = load_model()
    rows = _rows(50, seed=3)
    from_trees = model.anomaly_scores(rows)

    assert model._estimator is None
    assert isinstance(model.estimator, IsolationForest)
    np.testing.assert_array_equal(-model.estimator.score_samples(rows), -SHIPPED.score_samples(rows))
    np.testing.assert_array_equal(from_trees, model.anomaly_scores(rows))


def test_save_model_writes_checked_trees(tmp_path):
    forest = _tiny_artifact(tmp_path)
    rows = _rows(40, seed=11)

    model = load_model(tmp_path, "t1")

    metadata = json.loads((tmp_path / "iforest-t1.json").read_text("utf-8"))
    assert trees_path(tmp_path / "iforest-t1.skops").is_file()
    assert len(metadata[TREES_CHECKSUM]) == 64
    assert model.trees is not None
    np.testing.assert_array_equal(model.trees.score_samples(rows), forest.score_samples(rows))


@pytest.mark.parametrize("damage", ["flip", "remove"])
def test_altered_or_missing_trees_rejected(tmp_path, damage):
    _tiny_artifact(tmp_path)
    path = trees_path(tmp_path / "iforest-t1.skops")
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()

    with pytest.raises(ModelError, match="trees file was altered or removed"):
        load_model(tmp_path, "t1")


def test_artifact_without_trees_scores_through_estimator(tmp_path):
    forest = _tiny_artifact(tmp_path)
    metadata_path = tmp_path / "iforest-t1.json"
    metadata = json.loads(metadata_path.read_text("utf-8"))
    del metadata[TREES_CHECKSUM]
    metadata["metadata_sha256"] = metadata_checksum(metadata)
    metadata_path.write_text(json.dumps(metadata), "utf-8")
    trees_path(tmp_path / "iforest-t1.skops").unlink()
    rows = _rows(20, seed=12)

    model = load_model(tmp_path, "t1")

    assert model.trees is None
    np.testing.assert_array_equal(model.anomaly_scores(rows), -forest.score_samples(rows))


def test_feature_subsampling_saves_no_trees(tmp_path):
    _tiny_artifact(tmp_path, max_features=0.5)

    metadata = json.loads((tmp_path / "iforest-t1.json").read_text("utf-8"))

    assert TREES_CHECKSUM not in metadata
    assert not trees_path(tmp_path / "iforest-t1.skops").exists()
    assert load_model(tmp_path, "t1").trees is None


def test_tree_with_a_loop_rejected(tmp_path):
    scorer = ForestScorer.from_estimator(SHIPPED)
    left = scorer.left.copy()
    left[1] = 1  # node 1 would be its own child, and a walk through it would never end
    path = tmp_path / "loop.trees.npz"
    _altered(scorer, left=left).save(path)

    with pytest.raises(ForestFileError, match="left child index points outside its tree"):
        ForestScorer.load(path)


def test_file_that_is_no_forest_rejected(tmp_path):
    path = tmp_path / "broken.trees.npz"
    path.write_bytes(b"not a zip file")

    with pytest.raises(ForestFileError, match="not a saved forest"):
        ForestScorer.load(path)


def test_default_passes_over_broken_trees(tmp_path, caplog):
    _tiny_artifact(tmp_path, "t1")
    forest = _tiny_artifact(tmp_path, "t2")
    scorer = ForestScorer.from_estimator(forest)
    right = scorer.right.copy()
    right[0] = -1  # the root keeps its left child only
    path = trees_path(tmp_path / "iforest-t2.skops")
    _altered(scorer, right=right).save(path)
    rewrite_metadata(tmp_path, "t2", **{TREES_CHECKSUM: _sha256(path)})

    with caplog.at_level(logging.WARNING):
        chosen = default_version(tmp_path)

    assert chosen == "t1"
    assert "model t2 passed over" in caplog.text
    assert "one child" in caplog.text
