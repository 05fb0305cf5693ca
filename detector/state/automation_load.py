"""automation load from per-subject state: the requests of the last 20 minutes and the current bucket's escalation."""

from __future__ import annotations

from detector.detectors.automation import AutomationDetector
from detector.detectors.automation_load import WINDOW, load_rows
from detector.state.carried import CarriedRowsState
from detector.state.chunk import Chunk, prompt_codes
from detector.state.escalation import escalations_after
from detector.state.table import Columns

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

    def new_rows(self, chunk: Chunk) -> Columns:
        return {"owner": chunk.subject, "ts": chunk.ts, "prompt": chunk.prompt_hash}

    def findings(self, chunk: Chunk, rows: Columns, carried: Columns) -> tuple[list, Columns]:
        owner = rows["owner"]
        scored = load_rows(
            self.detector,
            subject=owner,
            ts=rows["ts"],
            ts_ms=rows["ts_ms"],
            prompt=prompt_codes(rows["prompt"]),
            expected_rph=chunk.prepared.subjects["expected_rph"].to_numpy()[owner],
            candidates=rows["is_new"],
        )
        first, escalation = escalations_after(scored, "bucket", carried)
        found = self.detector.load_findings(chunk.prepared, first) if len(first) else []
        return found, escalation
