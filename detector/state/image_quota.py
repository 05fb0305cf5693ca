"""image_quota from per-subject state: image requests of the last 7 days and the current UTC day's escalation."""

from __future__ import annotations

import numpy as np

from detector.detectors.image_quota import WEEK, ImageQuotaDetector, quota_rows
from detector.features.prepare import composite_time, trailing_sum
from detector.state.carried import CarriedRowsState
from detector.state.chunk import Chunk
from detector.state.escalation import escalations_after, unchanged_steps
from detector.state.table import Columns

class ImageQuotaState(CarriedRowsState):
    """Run ``ImageQuotaDetector`` chunk by chunk, carrying each subject's image requests of the last 7 days.

    Over chunks of a time-sorted input, the findings equal those of the batch
    detector over the whole input, except for the subjects reported in
    ``ChunkFindings.inexact``.
    """

    detector: ImageQuotaDetector
    retention = WEEK
    row_columns = {"ts": "float64", "images": "int64"}

    def new_rows(self, chunk: Chunk) -> Columns:
        images = chunk.prepared.events["images"].to_numpy()
        chosen = images > 0
        return {"owner": chunk.subject[chosen], "ts": chunk.ts[chosen], "images": images[chosen]}

    def findings(self, chunk: Chunk, rows: Columns, carried: Columns) -> tuple[list, Columns]:
        subjects = chunk.prepared.subjects
        text_plan = subjects["is_text_plan"].to_numpy()[rows["owner"]]
        owner = rows["owner"][text_plan]
        keys = composite_time(owner, rows["ts_ms"][text_plan])
        rolling = trailing_sum(keys, rows["images"][text_plan].astype(np.float64), WEEK)
        window = subjects["weekly_images"].to_numpy()[owner].astype(np.float64)
        over = (rolling > window) & rows["is_new"][text_plan]
        if not over.any():
            return [], unchanged_steps(carried)

        over_rows = quota_rows(
            subject=owner[over],
            ts=rows["ts"][text_plan][over],
            images_7d=rolling[over],
            weekly_images=window[over],
        )
        first, escalation = escalations_after(over_rows, "day", carried)
        return self.detector.quota_findings(chunk.prepared, first), escalation
