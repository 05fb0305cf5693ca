"""IsolationForest ``score_samples`` from the trees as numpy arrays, with scikit-learn's results.

``IsolationForest.score_samples`` (scikit-learn 1.9) validates its input and
then calls each tree's ``apply`` through joblib. With the shipped model of
100 trees that took about 18 ms per call even for one row (measured on a
shared 2-core machine). The incremental anomaly state scores a few closed
days per chunk, so this fixed cost dominated its update.

``ForestScorer`` keeps every tree's nodes in flat arrays and runs the steps
of ``IsolationForest._compute_score_samples``: the cast to float32, each
row's walk from the root to a leaf (a missing value goes where the node
sends missing values), the leaf depths added tree after tree, and the same
normalisation. The results are therefore equal to the last bit
(tests/test_iforest_scores.py checks this).

Saved beside a model (``save``), the arrays score without importing
scikit-learn, SciPy or skops, which took about a second of every
``fairuse score`` run.
"""

from __future__ import annotations

import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

# The fitted attributes the fast path reads. They are private to scikit-learn, so an estimator
# without them (another scikit-learn version) is scored by ``score_samples`` instead.
_PRIVATE_ATTRIBUTES = ("_decision_path_lengths", "_average_path_length_per_tree", "_max_samples", "_max_features")
# scikit-learn's child index of a leaf.
_LEAF = -1
_ARRAYS = ("left", "right", "feature", "threshold", "missing_left", "leaf_depth", "roots")
# The dtype of each saved array, as ``from_estimator`` makes them. Any other dtype is rejected
# before use: an integer ``missing_left``, for one, sends a walk back to a node it already left.
_DTYPES = {
    "features": np.dtype(np.int64),
    "denominator": np.dtype(np.float64),
    "left": np.dtype(np.int64),
    "right": np.dtype(np.int64),
    "feature": np.dtype(np.int64),
    "threshold": np.dtype(np.float64),
    "missing_left": np.dtype(bool),
    "leaf_depth": np.dtype(np.float64),
    "roots": np.dtype(np.int64),
}
# scikit-learn grows each tree of an IsolationForest to at most ceil(log2(max_samples)) levels,
# so 64 levels cover any max_samples. A deeper saved tree is rejected, which bounds every walk.
MAX_DEPTH = 64
# Rows times trees walked at once. The walk keeps a few int64 values per entry, so this
# bounds its memory to tens of MB, whatever the number of rows.
_WALK_ENTRIES = 1 << 20

_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ForestFileError(ValueError):
    """A saved forest that cannot be read or does not contain consistent trees."""


@dataclass(frozen=True, slots=True, eq=False)
class ForestScorer:
    """The nodes of every tree of one fitted IsolationForest, in flat arrays.

    Node ``i`` of the forest splits on ``feature[i]`` at ``threshold[i]``, and
    its children are ``left[i]`` and ``right[i]`` (forest-wide indexes, -1 for
    a leaf). ``leaf_depth[i]`` is a leaf's depth plus the expected depth of
    the training samples left in it, minus one. ``roots`` contains each tree's
    first node, in the order the trees' depths are added.
    """

    features: int
    denominator: float
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    leaf_depth: np.ndarray
    roots: np.ndarray
    # scikit-learn's fitted trees, when built from an estimator: their ``apply`` is written in
    # C and found the leaves of 15,000 rows in 28 ms, against 90 ms for the numpy walk.
    fitted: tuple = ()

    @classmethod
    def from_estimator(cls, estimator: IsolationForest) -> ForestScorer:
        """Return the arrays of ``estimator``, which must pass ``fast_path_fits``."""
        from sklearn.ensemble._iforest import _average_path_length

        trees = [tree.tree_ for tree in estimator.estimators_]
        sizes = np.array([tree.node_count for tree in trees], dtype=np.int64)
        roots = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        left, right = [], []
        for root, tree in zip(roots, trees):
            is_leaf = tree.children_left == _LEAF
            left.append(np.where(is_leaf, _LEAF, tree.children_left + root))
            right.append(np.where(is_leaf, _LEAF, tree.children_right + root))
        # Summed as scikit-learn sums them, so each value is the same float.
        leaf_depth = [
            lengths + averages - 1.0
            for lengths, averages in zip(estimator._decision_path_lengths, estimator._average_path_length_per_tree)
        ]
        return cls(
            features=int(estimator.n_features_in_),
            denominator=float(len(trees) * _average_path_length([estimator._max_samples])[0]),
            left=np.concatenate(left).astype(np.int64),
            right=np.concatenate(right).astype(np.int64),
            # A leaf's feature is negative in scikit-learn, so 0 takes its place and every lookup stays in range.
            feature=np.concatenate([np.maximum(tree.feature, 0) for tree in trees]).astype(np.int64),
            threshold=np.concatenate([tree.threshold for tree in trees]).astype(np.float64),
            missing_left=np.concatenate([tree.missing_go_to_left for tree in trees]).astype(bool),
            leaf_depth=np.concatenate(leaf_depth).astype(np.float64),
            roots=roots,
            fitted=tuple(trees),
        )

    def save(self, path: Path) -> None:
        """Write the arrays to ``path`` as an uncompressed ``.npz`` file, which loads without pickle."""
        with path.open("wb") as handle:
            np.savez(
                handle,
                features=np.int64(self.features),
                denominator=np.float64(self.denominator),
                **{name: getattr(self, name) for name in _ARRAYS},
            )

    @classmethod
    def load(cls, path: Path) -> ForestScorer:
        """Read arrays that ``save`` wrote, or raise ForestFileError when they are unreadable or inconsistent.

        Every member's dtype and shape are checked against the file's size
        before it is read, so a file cannot make the load allocate more
        memory than it contains.
        """
        try:
            _check_members(path)
            with np.load(path, allow_pickle=False) as saved:
                values = {name: saved[name] for name in _DTYPES}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ForestFileError(f"{path}: not a saved forest ({error})") from error
        for name in ("features", "denominator"):
            if values[name].dtype != _DTYPES[name] or values[name].ndim != 0:
                raise ForestFileError(f"{path}: {name} is not one {_DTYPES[name]} value")
        scorer = cls(
            features=int(values.pop("features")),
            denominator=float(values.pop("denominator")),
            **values,
        )
        try:
            scorer.check()
        except ForestFileError as error:
            raise ForestFileError(f"{path}: {error}") from error
        return scorer

    def check(self) -> None:
        """Raise ForestFileError unless the arrays are one forest of trees with ``save``'s dtypes.

        Each node must be reached from exactly one root, children must have
        higher indexes than their parents, and no tree may be deeper than
        ``MAX_DEPTH``, so every walk ends within ``MAX_DEPTH`` steps.
        """
        for name in _ARRAYS:
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != _DTYPES[name] or array.ndim != 1:
                raise ForestFileError(f"{name} is not a 1-D {_DTYPES[name]} array")
        nodes = len(self.left)
        if any(len(getattr(self, name)) != nodes for name in _ARRAYS[:-1]) or not len(self.roots):
            raise ForestFileError("the node arrays differ in length, or there is no tree")
        if ((self.left == _LEAF) != (self.right == _LEAF)).any():
            raise ForestFileError("a node has one child")
        for name in ("left", "right"):
            children = getattr(self, name)
            if ((children != _LEAF) & ((children <= np.arange(nodes)) | (children >= nodes))).any():
                raise ForestFileError(f"a {name} child index points outside its tree")
        if ((self.feature < 0) | (self.feature >= self.features)).any() or ((self.roots < 0) | (self.roots >= nodes)).any():
            raise ForestFileError("a feature or root index is out of range")
        if np.isnan(self.threshold).any() or not np.isfinite(self.leaf_depth).all():
            raise ForestFileError("a threshold is NaN or a leaf depth is not finite")
        if not (np.isfinite(self.denominator) and self.denominator >= 0):
            raise ForestFileError(f"the denominator {self.denominator} is not a finite number >= 0")
        self._check_tree_shapes(nodes)

    def _check_tree_shapes(self, nodes: int) -> None:
        """Raise ForestFileError unless every node is reached once, from one root, within ``MAX_DEPTH`` levels."""
        reached = np.zeros(nodes, dtype=np.int64)
        level = self.roots
        for _ in range(MAX_DEPTH + 1):
            reached += np.bincount(level, minlength=nodes)
            # A node reached twice would double the levels below it, so stop at the first one.
            if reached.max() > 1:
                raise ForestFileError("a node is reached from two parents or roots")
            inner = level[self.left[level] != _LEAF]
            level = np.concatenate((self.left[inner], self.right[inner]))
            if not len(level):
                break
        else:
            raise ForestFileError(f"a tree is deeper than {MAX_DEPTH} levels")
        if not reached.all():
            raise ForestFileError("a node is reached from no root")

    @property
    def trees(self) -> int:
        return len(self.roots)

    def fits(self, features: np.ndarray) -> bool:
        """Return whether ``features`` is a non-empty 2-D array with ``self.features`` columns."""
        shape = np.shape(features)
        return len(shape) == 2 and shape[1] == self.features and shape[0] > 0

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        """Return ``IsolationForest.score_samples`` of ``features`` (rows of ``self.features`` values)."""
        rows = np.ascontiguousarray(features, dtype=np.float32)
        depths = np.zeros(len(rows))
        # Rows are scored in parts to bound the walk's memory. Each row's sum is unchanged.
        step = max(1, _WALK_ENTRIES // self.trees)
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            leaf_depths = self.leaf_depth[self.leaves(part)].reshape(self.trees, len(part))
            part_depths = depths[start : start + len(part)]
            for tree_depths in leaf_depths:
                part_depths += tree_depths
        # A denominator of 0 gives the score 1, as in scikit-learn.
        scores = 2 ** -np.divide(depths, self.denominator, out=np.ones_like(depths), where=self.denominator != 0)
        return -scores

    def leaves(self, rows: np.ndarray) -> np.ndarray:
        """Return the leaf each row (float32) reaches in each tree: tree 0's for every row, then tree 1's, and so on."""
        if self.fitted:
            return np.concatenate([tree.apply(rows) + root for tree, root in zip(self.fitted, self.roots)])

        # All walks advance one level per step, and those at a leaf drop out. A child's
        # index is always above its parent's (``check``), so every step goes deeper.
        count = len(rows)
        values = rows.ravel()
        is_leaf = self.left == _LEAF
        children = np.stack((self.left, self.right), axis=1).ravel()
        nodes = np.repeat(self.roots, count)
        row_start = np.tile(np.arange(count, dtype=np.int64) * self.features, self.trees)
        any_missing = bool(np.isnan(values).any())
        walking = np.flatnonzero(~is_leaf[nodes])
        while len(walking):
            at = nodes[walking]
            value = values[row_start[walking] + self.feature[at]]
            # float32 against the float64 threshold, compared in float64 as in scikit-learn.
            go_right = ~(value <= self.threshold[at])
            if any_missing:
                go_right = np.where(np.isnan(value), ~self.missing_left[at], go_right)
            at = children[2 * at + go_right]
            nodes[walking] = at
            walking = walking[~is_leaf[at]]
        return nodes


def _check_members(path: Path) -> None:
    """Raise ForestFileError unless ``path`` is a zip of stored ``.npy`` members whose data fits in the file.

    A compressed member, or a header that declares more data than the member
    contains, could make ``np.load`` allocate far more memory than the file's size.
    """
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ForestFileError(f"member {info.filename} is compressed, but save writes stored members only")
            if info.file_size > size:
                raise ForestFileError(f"member {info.filename} declares more data than the file contains")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    raise ForestFileError(f"member {info.filename} has .npy format {version}, not 1.0 or 2.0")
            if int(np.prod(shape, dtype=object)) * dtype.itemsize > info.file_size:
                raise ForestFileError(f"member {info.filename} declares shape {shape}, more data than it contains")


def score_samples(estimator: IsolationForest, features: np.ndarray) -> np.ndarray:
    """Return ``estimator.score_samples(features)``, through ``ForestScorer`` where the estimator allows it.

    The fast path needs the private fitted attributes, every feature in every
    tree (``max_features`` 1.0) and a dense 2-D array with the fitted number
    of features. Anything else goes to ``estimator.score_samples``, which also
    raises scikit-learn's errors for invalid input.
    """
    scorer = _SCORERS.get(estimator)
    if scorer is None:
        if not fast_path_fits(estimator):
            return estimator.score_samples(features)
        scorer = _SCORERS[estimator] = ForestScorer.from_estimator(estimator)

    if not scorer.fits(features):
        return estimator.score_samples(features)
    return scorer.score_samples(features)


def fast_path_fits(estimator: IsolationForest) -> bool:
    """Return whether ``ForestScorer`` can score for ``estimator``: every feature in every tree."""
    if not all(hasattr(estimator, name) for name in _PRIVATE_ATTRIBUTES):
        return False
    return int(estimator._max_features) == int(estimator.n_features_in_)
