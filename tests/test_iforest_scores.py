"""IsolationForest scores without scikit-learn's per-tree overhead: equal to ``score_samples`` to the last bit."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from detector.iforest_scores import ForestScorer, score_samples
from detector.model_registry import load_model

SHIPPED = load_model().estimator


def _rows(count: int, seed: int) -> np.ndarray:
    """Return rows of 13 features on scales from 0.01 to 1000, as the key-day features spread."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, 13)) * rng.choice([0.01, 1.0, 1000.0], size=(count, 13))


@pytest.mark.parametrize("count", [1, 2, 7, 300, 3000])
def test_shipped_model_scores_equal(count):
    rows = _rows(count, seed=count)

    np.testing.assert_array_equal(score_samples(SHIPPED, rows), SHIPPED.score_samples(rows))


def extreme_rows() -> np.ndarray:
    """Return rows with a missing value, infinities, a value beyond float32 and zeros."""
    rows = _rows(6, seed=1)
    rows[0, 0] = np.nan
    rows[1, 3] = np.inf
    rows[2, 5] = -np.inf
    rows[3, :] = 1e300
    rows[4, :] = 0.0
    return rows


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_extreme_and_missing_values_equal():
    rows = extreme_rows()

    np.testing.assert_array_equal(score_samples(SHIPPED, rows), SHIPPED.score_samples(rows))


def test_fast_path_is_taken():
    scorer = ForestScorer.from_estimator(SHIPPED)
    rows = _rows(5, seed=2)

    assert scorer.trees == len(SHIPPED.estimators_)
    np.testing.assert_array_equal(scorer.score_samples(rows), SHIPPED.score_samples(rows))


def test_feature_subsampling_falls_back():
    training = _rows(200, seed=3)
    forest = IsolationForest(n_estimators=20, max_features=0.5, random_state=0).fit(training)
    rows = _rows(10, seed=4)

    np.testing.assert_array_equal(score_samples(forest, rows), forest.score_samples(rows))


def test_forest_of_one_sample():
    forest = IsolationForest(n_estimators=5, random_state=0).fit(_rows(1, seed=5))
    rows = _rows(3, seed=6)

    np.testing.assert_array_equal(score_samples(forest, rows), forest.score_samples(rows))


def test_wrong_feature_count_raises():
    with pytest.raises(ValueError, match="features"):
        score_samples(SHIPPED, np.zeros((2, 5)))
