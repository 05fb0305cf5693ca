"""image_quota from per-subject state: image requests of the last 7 days and the current UTC day's escalation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.detectors.image_quota import WEEK, ImageQuotaDetector, quota_rows
from detector.features.prepare import composite_time, trailing_sum
from detector.state.carried import CarriedRowsState
from detector.state.chunk import Chunk
from detector.state.escalation import escalations_after

class ImageQuotaState(CarriedRowsState):
    """Run ``ImageQuotaDetector`` chunk by chunk, carrying each subject's image requests of the last 7 days.

    Over chunks of a time-sorted input, the findings equal those of the batch
    detector over the whole input, except for the subjects reported in
    ``ChunkFindings.inexact``.
    """

    detector: ImageQuotaDetector
    retention = WEEK
    row_columns = {"ts": "float64", "images": "int64"}

    def new_rows(self, chunk: Chunk) -> pd.DataFrame:
        events = chunk.prepared.events
        images = events["images"].to_numpy()
        return pd.DataFrame(
            {
                "owner": events["subject"].to_numpy()[images > 0],
                "ts": events["ts"].to_numpy()[images > 0],
                "images": images[images > 0],
            }
        )

    def findings(self, chunk: Chunk, rows: pd.DataFrame, carried: pd.DataFrame) -> tuple[list, pd.DataFrame]:
        subjects = chunk.prepared.subjects
        owner = rows["owner"].to_numpy()
        text_plan = subjects["is_text_plan"].to_numpy()[owner]
        keys = composite_time(owner[text_plan], rows["ts_ms"].to_numpy()[text_plan])
        rolling = trailing_sum(keys, rows["images"].to_numpy()[text_plan].astype(np.float64), WEEK)
        window = subjects["weekly_images"].to_numpy()[owner[text_plan]].astype(np.float64)
        over = (rolling > window) & rows["is_new"].to_numpy()[text_plan]

        over_rows = quota_rows(
            subject=owner[text_plan][over],
            ts=rows["ts"].to_numpy()[text_plan][over],
            images_7d=rolling[over],
            weekly_images=window[over],
        )
        first, escalation = escalations_after(over_rows, "day", carried)
        found = self.detector.quota_findings(chunk.prepared, first) if len(first) else []
        return found, escalation
