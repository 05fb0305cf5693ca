"""The request ids a partition has seen within a horizon of event time, to drop a gateway's repeated requests.

Each ``request_id`` is kept as a 64-bit hash (``pandas.util.hash_pandas_object``)
with its event time. Hashes sit in sorted runs: each batch adds one, and
once there are more than ``max_runs`` they are merged into one, dropping
those older than ``horizon`` seconds before the partition's newest event.
A lookup bisects every run, so a batch costs its own events times the
number of runs, not the number of hashes kept.

A hash older than the horizon may be kept until the next merge, so a
repeat somewhat older than the horizon can still be dropped. Two distinct
ids share a 64-bit hash with a chance of about n²/2⁶⁵ for n ids kept, so
6 million ids (10 minutes at 10,000 requests a second) drop a request
wrongly with a chance of about 1e-6.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_HORIZON = 600.0


class RepeatedRequests:
    """Hashes of the request ids seen in the last ``horizon`` seconds of event time."""

    def __init__(self, horizon: float = DEFAULT_HORIZON, max_runs: int = 16) -> None:
        self.horizon = horizon
        self.max_runs = max_runs
        # Sorted hashes, and the newest event time of each run.
        self.runs: list[np.ndarray] = []
        self.run_times: list[np.ndarray] = []
        self.newest = -np.inf

    def __len__(self) -> int:
        return sum(len(run) for run in self.runs)

    def first_seen(self, frame: pd.DataFrame) -> np.ndarray:
        """Return a mask of the rows of ``frame`` whose ``request_id`` was not seen before, and remember them.

        Within ``frame``, the first row of an id counts as new and later ones as repeats.
        """
        if frame.empty:
            return np.zeros(0, dtype=bool)
        hashes = pd.util.hash_pandas_object(frame["request_id"], index=False).to_numpy()
        ts = frame["ts"].to_numpy(dtype=np.float64)

        fresh = ~self._contains(hashes)
        fresh &= ~pd.Series(hashes).duplicated().to_numpy()
        self._add(hashes[fresh], ts[fresh])
        return fresh

    def _contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        for run in self.runs:
            positions = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            found |= run[positions] == hashes
        return found

    def _add(self, hashes: np.ndarray, ts: np.ndarray) -> None:
        if not len(hashes):
            return
        self.newest = max(self.newest, float(ts.max()))
        order = np.argsort(hashes, kind="stable")
        self.runs.append(hashes[order])
        self.run_times.append(ts[order])
        if len(self.runs) > self.max_runs:
            self._merge()

    def _merge(self) -> None:
        """Merge every run into one, without the hashes older than the horizon."""
        hashes = np.concatenate(self.runs)
        ts = np.concatenate(self.run_times)
        kept = ts >= self.newest - self.horizon
        hashes, ts = hashes[kept], ts[kept]
        order = np.argsort(hashes, kind="stable")
        self.runs = [hashes[order]]
        self.run_times = [ts[order]]
