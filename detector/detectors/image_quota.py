"""image_quota: images on a text plan beyond its rolling weekly window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detector.detectors.base import Finding, at_or_after, escalations, findings_from_rows, from_period_start
from detector.features import PreparedEvents

DAY = 86400.0
WEEK = 7 * DAY


@dataclass(frozen=True, slots=True)
class ImageQuotaDetector:
    """Flag text-plan keys whose images in any rolling 7 days pass the plan's window.

    Image packages are entitled to images and are never flagged here. A
    finding is made per key and UTC day at the request that first went over,
    and again each time the overage grows by a step (see ``escalations``).
    """

    reason: str = "image_quota"
    version: str = "1"

    def detect(self, prepared: PreparedEvents, since: float | None = None) -> list[Finding]:
        """Return the findings, or with ``since`` those detected from ``since`` on (see ``Detector``)."""
        events = prepared.events
        subjects = prepared.subjects
        if events.empty:
            return []

        subject = events["subject"].to_numpy()
        text_plan = subjects["is_text_plan"].to_numpy()[subject]
        images = events["images"].to_numpy()
        mask = text_plan & (images > 0)
        if not mask.any():
            return []

        rolling = prepared.sum_in_window(images.astype(np.float64), WEEK, mask)
        window = subjects["weekly_images"].to_numpy()[subject[mask]].astype(np.float64)
        over = rolling > window
        recent = from_period_start(events["ts"].to_numpy()[mask], since, DAY)
        if recent is not None:
            over &= recent
        if not over.any():
            return []

        rows = quota_rows(
            subject=subject[mask][over],
            ts=events["ts"].to_numpy()[mask][over],
            images_7d=rolling[over],
            weekly_images=window[over],
        )
        first = at_or_after(escalations(rows, ["subject", "day"]), since)
        return self.quota_findings(prepared, first)

    def quota_findings(self, prepared: PreparedEvents, rows: pd.DataFrame) -> list[Finding]:
        """Build findings from the escalation rows of ``quota_rows``, whose ``subject`` codes index ``prepared.subjects``."""
        rows = rows.copy()
        rows["window_start"] = rows["ts"] - WEEK
        rows["window_end"] = rows["ts"]
        return findings_from_rows(
            prepared,
            rows,
            reason=self.reason,
            origin=f"{self.reason}/{self.version}",
            evidence_columns={
                "images_7d": "images_7d",
                "weekly_images": "weekly_images",
            },
            window="rolling 7 days",
            thresholds={"images_over": "the plan's weekly_images"},
        )


def quota_rows(*, subject: np.ndarray, ts: np.ndarray, images_7d: np.ndarray, weekly_images: np.ndarray) -> pd.DataFrame:
    """Return the rows of image requests over the weekly window, with their UTC ``day``, score, impact and ``detected_at``."""
    rows = pd.DataFrame({"subject": subject, "ts": ts, "images_7d": images_7d, "weekly_images": weekly_images})
    rows["day"] = (rows["ts"] // DAY).astype(np.int64)
    rows["detected_at"] = rows["ts"]
    allowance = np.maximum(rows["weekly_images"], 1.0)
    rows["impact"] = rows["images_7d"] / allowance
    rows["score"] = np.clip(50 + 50 * (rows["images_7d"] - allowance) / allowance, 0, 100)
    return rows
