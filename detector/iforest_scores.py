"""IsolationForest ``score_samples`` without scikit-learn's per-call and per-tree overhead, with equal results.

``IsolationForest.score_samples`` (scikit-learn 1.9) validates its input and
then calls each tree's ``apply`` through joblib. With the shipped model of
100 trees that took about 18 ms per call even for one row (measured on a
shared 2-core machine). The incremental anomaly state scores a few closed
days per chunk, so this fixed cost dominated its update.
``ForestScorer`` runs the steps of ``IsolationForest._compute_score_samples``:
the cast to float32, the low-level ``tree_.apply`` of each tree in order,
the depths added tree after tree, and the same normalisation. The results
are therefore equal to the last bit (tests/test_iforest_scores.py checks this).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

# The fitted attributes the fast path reads. They are private to scikit-learn, so an estimator
# without them (another scikit-learn version) is scored by ``score_samples`` instead.
_PRIVATE_ATTRIBUTES = ("_decision_path_lengths", "_average_path_length_per_tree", "_max_samples", "_max_features")

_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ForestScorer:
    """The trees and per-leaf depths of one fitted IsolationForest, ready to score rows."""

    def __init__(self, estimator: IsolationForest) -> None:
        from sklearn.ensemble._iforest import _average_path_length

        self.features = int(estimator.n_features_in_)
        self.trees = [tree.tree_ for tree in estimator.estimators_]
        # Per leaf: its depth plus the expected depth of the training samples left in it, minus one,
        # summed in the order scikit-learn adds them, so each value is the same float.
        self.leaf_depths = [
            lengths + averages - 1.0
            for lengths, averages in zip(estimator._decision_path_lengths, estimator._average_path_length_per_tree)
        ]
        self.denominator = len(self.trees) * _average_path_length([estimator._max_samples])

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        """Return ``IsolationForest.score_samples`` of ``features`` (rows of ``self.features`` values)."""
        rows = np.ascontiguousarray(features, dtype=np.float32)
        depths = np.zeros(len(rows))
        for tree, leaf_depths in zip(self.trees, self.leaf_depths):
            depths += leaf_depths[tree.apply(rows)]
        # A denominator of 0 gives the score 1, as in scikit-learn.
        scores = 2 ** -np.divide(depths, self.denominator, out=np.ones_like(depths), where=self.denominator != 0)
        return -scores


def score_samples(estimator: IsolationForest, features: np.ndarray) -> np.ndarray:
    """Return ``estimator.score_samples(features)``, through ``ForestScorer`` where the estimator allows it.

    The fast path needs the private fitted attributes, every feature in every
    tree (``max_features`` 1.0) and a dense 2-D array with the fitted number
    of features. Anything else goes to ``estimator.score_samples``, which also
    raises scikit-learn's errors for invalid input.
    """
    scorer = _SCORERS.get(estimator)
    if scorer is None:
        if not _fast_path_fits(estimator):
            return estimator.score_samples(features)
        scorer = _SCORERS[estimator] = ForestScorer(estimator)

    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != scorer.features or not len(features):
        return estimator.score_samples(features)
    return scorer.score_samples(features)


def _fast_path_fits(estimator: IsolationForest) -> bool:
    if not all(hasattr(estimator, name) for name in _PRIVATE_ATTRIBUTES):
        return False
    return int(estimator._max_features) == int(estimator.n_features_in_)
