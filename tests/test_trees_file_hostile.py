"""Trees files that pass their checksum but were written by hand: each is rejected on load, never run."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from detector import iforest_scores
from detector.iforest_scores import MAX_DEPTH, ForestFileError, ForestScorer
from tests.test_iforest_scores import SHIPPED, _rows


def _arrays() -> dict[str, np.ndarray]:
    scorer = ForestScorer.from_estimator(SHIPPED)
    arrays = {name: getattr(scorer, name) for name in iforest_scores._ARRAYS}
    return {"features": np.int64(scorer.features), "denominator": np.float64(scorer.denominator), **arrays}


def _write(tmp_path, arrays, *, compress=False):
    path = tmp_path / "hostile.trees.npz"
    (np.savez_compressed if compress else np.savez)(path, **arrays)
    return path


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [b"", b"PK\x03\x04truncated", _npy(np.arange(5))],
    ids=["empty", "truncated-zip", "plain-npy"],
)
def test_unreadable_file_rejected(tmp_path, content):
    path = tmp_path / "hostile.trees.npz"
    path.write_bytes(content)

    with pytest.raises(ForestFileError, match="not a saved forest"):
        ForestScorer.load(path)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("features", np.array([13, 13])),
        ("denominator", np.array([1.0, 2.0])),
        ("left", "float"),
        ("feature", "float"),
        ("roots", "bool"),
        ("threshold", "str"),
        ("missing_left", "int"),
        ("left", "2d"),
        ("left", "0d"),
    ],
)
def test_wrong_dtype_or_shape_rejected(tmp_path, name, value):
    arrays = _arrays()
    original = arrays[name]
    if isinstance(value, str):
        value = {
            "float": lambda: original.astype(np.float64),
            "bool": lambda: np.ones(len(original), dtype=bool),
            "str": lambda: original.astype("U8"),
            "int": lambda: original.astype(np.int64),
            "2d": lambda: np.stack([original, original], axis=1),
            "0d": lambda: np.int64(-1),
        }[value]()
    arrays[name] = value

    with pytest.raises(ForestFileError):
        ForestScorer.load(_write(tmp_path, arrays))


def test_integer_missing_left_never_loops(tmp_path):
    """An int64 missing_left of 1 sent a walk at a missing value back to the node it left, forever."""
    arrays = _arrays()
    arrays["missing_left"] = arrays["missing_left"].astype(np.int64)

    with pytest.raises(ForestFileError, match="missing_left"):
        ForestScorer.load(_write(tmp_path, arrays))


@pytest.mark.parametrize(
    ("name", "value"),
    [("threshold", np.nan), ("leaf_depth", np.inf), ("denominator", np.nan), ("denominator", -1.0)],
)
def test_values_that_silence_the_model_rejected(tmp_path, name, value):
    arrays = _arrays()
    arrays[name] = np.full_like(arrays[name], value)

    with pytest.raises(ForestFileError):
        ForestScorer.load(_write(tmp_path, arrays))


def test_node_with_one_child_rejected(tmp_path):
    arrays = _arrays()
    right = arrays["right"].copy()
    right[0] = -1
    arrays["right"] = right

    with pytest.raises(ForestFileError, match="one child"):
        ForestScorer.load(_write(tmp_path, arrays))


def test_repeated_roots_rejected(tmp_path):
    """Many roots naming one tree would make scoring allocate that many entries per row."""
    arrays = _arrays()
    arrays["roots"] = np.zeros(100_000, dtype=np.int64)

    with pytest.raises(ForestFileError, match="two parents or roots"):
        ForestScorer.load(_write(tmp_path, arrays))


def test_deep_tree_rejected(tmp_path):
    # Node 2k splits into the leaf 2k + 1 and node 2k + 2: one chain of MAX_DEPTH + 1 splits.
    splits = MAX_DEPTH + 1
    nodes = 2 * splits + 1
    left = np.full(nodes, -1, dtype=np.int64)
    right = np.full(nodes, -1, dtype=np.int64)
    left[0:-1:2] = np.arange(2, nodes, 2)
    right[0:-1:2] = np.arange(1, nodes, 2)
    arrays = {
        "features": np.int64(13), "denominator": np.float64(100.0), "left": left, "right": right,
        "feature": np.zeros(nodes, np.int64), "threshold": np.zeros(nodes), "missing_left": np.zeros(nodes, bool),
        "leaf_depth": np.ones(nodes), "roots": np.zeros(1, np.int64),
    }

    with pytest.raises(ForestFileError, match="deeper than"):
        ForestScorer.load(_write(tmp_path, arrays))


def test_compressed_member_rejected(tmp_path):
    """A deflated member of zeros loads into about 1000 times the file's size."""
    path = _write(tmp_path, _arrays(), compress=True)

    with pytest.raises(ForestFileError, match="compressed"):
        ForestScorer.load(path)


def test_header_larger_than_data_rejected(tmp_path):
    arrays = _arrays()
    path = tmp_path / "hostile.trees.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)})
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            data = header.getvalue() + bytes(64) if name == "left" else _npy(array)
            archive.writestr(f"{name}.npy", data)

    with pytest.raises(ForestFileError, match="more data than it contains"):
        ForestScorer.load(path)


def test_many_rows_score_in_bounded_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(iforest_scores, "_WALK_ENTRIES", 1000)
    path = tmp_path / "forest.trees.npz"
    ForestScorer.from_estimator(SHIPPED).save(path)
    rows = _rows(2500, seed=21)
    rows[7, 2] = np.nan

    scores = ForestScorer.load(path).score_samples(rows)

    np.testing.assert_array_equal(scores, SHIPPED.score_samples(rows))


def test_shipped_trees_pass_the_checks():
    from detector.model_registry import load_model

    assert load_model().trees is not None
