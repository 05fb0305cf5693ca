"""anomaly: per-key days that an IsolationForest isolates from ordinary traffic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detector.detectors.base import Finding, findings_from_rows
from detector.features import PreparedEvents, address_gaps
from detector.features.keyday import KEYDAY_FEATURES, keyday_features
from detector.model_registry import AnomalyModel


@dataclass(frozen=True, slots=True)
class AnomalyDetector:
    """Score each key-day with the loaded model; flag those above the model's threshold.

    The score maps the model's threshold to 50 and an anomaly score of
    ``ceiling`` to 100. Only closed days are scored: days that ended before
    the newest event in the input, because a day's features are complete only
    then, or before ``as_of`` when it is set. A finding is detected at the
    day's last request. So a batch never scores its input's last day, a stream
    scores a day once a later event of the same subject arrives, and the
    scheduled re-scoring job (``as_of`` = now) scores the days of quiet keys.

    ``detect`` takes no ``since`` (see ``Detector``), because a day's
    features cover the whole day and the newest event of the input decides
    which days are closed. Every pass therefore scores every closed day of
    its input.
    """

    model: AnomalyModel
    ceiling: float = 0.8
    # Epoch seconds up to which days count as closed; None means the newest event.
    as_of: float | None = None
    reason: str = "anomaly"

    @property
    def version(self) -> str:
        return self.model.version

    def evidence_gaps(self, prepared: PreparedEvents) -> dict[int, str]:
        """Return, by subject code, a note for subjects whose ``networks`` feature misses requests without an address."""
        return address_gaps(prepared, "networks feature")

    def detect(self, prepared: PreparedEvents) -> list[Finding]:
        rows = keyday_features(prepared)
        if rows.empty:
            return []
        newest = self.as_of if self.as_of is not None else float(prepared.events["ts"].max())
        return self.day_findings(prepared, rows[(rows["day"] + 1) * 86400.0 <= newest])

    def day_findings(self, prepared: PreparedEvents, rows: pd.DataFrame) -> list[Finding]:
        """Score closed key-days, ``rows`` of ``keyday_features``, and return findings for those above the threshold.

        Only ``prepared.subjects`` is read, for the names of the subjects that ``rows["subject"]`` codes.
        """
        if rows.empty:
            return []
        anomaly = self.model.anomaly_scores(rows[list(KEYDAY_FEATURES)].to_numpy(dtype=np.float64))
        flagged = anomaly > self.model.threshold
        if not flagged.any():
            return []
        return self.flagged_findings(prepared, rows[flagged].copy(), anomaly[flagged])

    def flagged_findings(self, prepared: PreparedEvents, rows: pd.DataFrame, anomaly: np.ndarray) -> list[Finding]:
        """Return the findings of the key-days in ``rows``, whose ``anomaly`` scores are above the model's threshold.

        ``rows`` is modified: the score, impact and detection time are added to it.
        """
        threshold = self.model.threshold
        rows["anomaly_score"] = anomaly
        span = max(self.ceiling - threshold, 1e-6)
        rows["score"] = np.clip(50 + 50 * (rows["anomaly_score"] - threshold) / span, 0, 100)
        rows["impact"] = np.maximum(rows["cost_vs_budget"], rows["requests_vs_expected"])
        rows["detected_at"] = rows["window_end"]

        evidence = {"anomaly_score": "anomaly_score", **{name: name for name in KEYDAY_FEATURES}}
        return findings_from_rows(
            prepared,
            rows,
            reason=self.reason,
            origin=f"{self.reason}/iforest-{self.version}",
            evidence_columns=evidence,
            window="UTC day",
            thresholds={"anomaly_score": threshold, "model_version": self.version},
        )
