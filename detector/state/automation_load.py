"""automation load from per-subject state: the requests of the last 20 minutes and the current bucket's escalation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.detectors.automation import AutomationDetector
from detector.detectors.automation_load import WINDOW, load_rows
from detector.state.carried import CarriedRowsState
from detector.state.chunk import UNKNOWN_PROMPT, Chunk
from detector.state.escalation import escalations_after

# The current 10-minute bucket starts up to 10 minutes before a new request, and that bucket's
# first request looks 10 minutes further back, so 20 minutes of requests let the bucket be rebuilt.
RETENTION = 2 * WINDOW


class AutomationLoadState(CarriedRowsState):
    """Run the load part of ``AutomationDetector`` chunk by chunk, carrying each subject's requests of the last 20 minutes.

    A carried request is its time and a 64-bit hash of its ``prompt_hash``
    (see ``Chunk.prompt_hash``). Two different prompts with the same hash
    would count as one prompt in ``top_prompt_share``, which can raise the
    share and turn on the repeated-prompt signal. The chance is about n²/2⁶⁵
    for n distinct prompts in a subject's 10 minutes. The load measures read
    nothing else: times, prompts and the plan's expected rate.
    """

    detector: AutomationDetector
    retention = RETENTION
    row_columns = {"ts": "float64", "prompt": "uint64"}

    def new_rows(self, chunk: Chunk) -> pd.DataFrame:
        events = chunk.prepared.events
        return pd.DataFrame({"owner": events["subject"].to_numpy(), "ts": events["ts"].to_numpy(), "prompt": chunk.prompt_hash})

    def findings(self, chunk: Chunk, rows: pd.DataFrame, carried: pd.DataFrame) -> tuple[list, pd.DataFrame]:
        owner = rows["owner"].to_numpy()
        prompt = rows["prompt"].to_numpy()
        codes = pd.factorize(prompt)[0].astype(np.int64)
        codes[prompt == UNKNOWN_PROMPT] = -1
        scored = load_rows(
            self.detector,
            subject=owner,
            ts=rows["ts"].to_numpy(),
            ts_ms=rows["ts_ms"].to_numpy(),
            prompt=codes,
            expected_rph=chunk.prepared.subjects["expected_rph"].to_numpy()[owner],
            candidates=rows["is_new"].to_numpy(),
        )
        if scored.empty:
            return [], carried
        first, escalation = escalations_after(scored, "bucket", carried)
        found = self.detector.load_findings(chunk.prepared, first) if len(first) else []
        return found, escalation
