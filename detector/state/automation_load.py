"""automation load from per-subject state: the requests of the last 20 minutes and the current bucket's escalation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.detectors.automation import AutomationDetector
from detector.detectors.automation_load import WINDOW, busy_level, expected_per_window, load_rows, score_load
from detector.state.carried import SUBJECT_VALUES
from detector.state.chunk import Chunk, ChunkFindings, inexact_subjects, kept_after, prompt_codes, with_carried
from detector.state.escalation import ESCALATION_VALUES, escalations_after
from detector.state.load_window import LoadWindows, WindowMeasures
from detector.state.table import Columns, SubjectStates

# The current 10-minute bucket starts up to 10 minutes before a new request, and that bucket's
# first request looks 10 minutes further back, so 20 minutes of requests let the bucket be rebuilt.
RETENTION = 2 * WINDOW

# The number of the subject's first row that ``LoadWindows.prompt_counts`` counts.
WINDOW_VALUES: dict[str, tuple[str, object]] = {"count_from": ("int64", 0)}


class AutomationLoadState:
    """Run the load part of ``AutomationDetector`` chunk by chunk, carrying each subject's requests of the last 20 minutes.

    A carried request is its time and a 64-bit hash of its ``prompt_hash``
    (see ``Chunk.prompt_hash``). Two different prompts with the same hash
    would count as one prompt in ``top_prompt_share``, which can raise the
    share and turn on the repeated-prompt signal. The chance is about n²/2⁶⁵
    for n distinct prompts in a subject's 10 minutes. The load measures read
    nothing else: times, prompts and the plan's expected rate.

    New requests are appended to ``windows``, which reads their measures from
    running sums, so a chunk costs time in proportion to its requests and the
    requests that leave the window. A subject with a late request is
    recomputed from its carried requests with ``load_rows``, as the batch
    detector would, and its requests are stored again in time order.
    """

    retention = RETENTION

    def __init__(self, detector: AutomationDetector) -> None:
        """``detector`` is the batch detector whose findings this state reproduces."""
        self.detector = detector
        self.states = SubjectStates(values={**SUBJECT_VALUES, **ESCALATION_VALUES, **WINDOW_VALUES}, rows={})
        # NOTE: ``windows`` is not a ``SubjectStates``, so code that saves or restores a state's
        # ``SubjectStates`` would miss the carried requests and prompt counts.
        self.windows = LoadWindows(retention_ms=int(RETENTION * 1000), min_parallel=detector.min_parallel)

    def nbytes(self) -> int:
        """Return the bytes of the per-subject values, the carried requests and the prompt counts."""
        return self.states.nbytes() + self.windows.nbytes()

    def update(self, chunk: Chunk) -> ChunkFindings:
        """Return the findings of ``chunk``'s events and carry its requests on."""
        taken = self.states.take(chunk.keys)
        inexact = inexact_subjects(chunk, taken)
        slots = self.windows.segments.slots_for(chunk.keys)
        count_from = taken.values["count_from"]
        last_ms = np.maximum(chunk.last_ms, taken.values["last_ms"])

        late = taken.known & (chunk.first_ms < taken.values["last_ms"])
        late_rows, late_scored = self._rescore_late(chunk, np.flatnonzero(late), slots, count_from, last_ms)
        batch = _appended_rows(chunk, ~late[chunk.subject], late_rows)
        measures, count_from = self.windows.append(slots, count_from, batch["owner"], batch["ts_ms"], batch["prompt"])
        scored = _in_subject_order(self._score_new(chunk, batch, measures), late_scored)

        first, escalation = escalations_after(scored, "bucket", taken.values)
        found = self.detector.load_findings(chunk.prepared, first) if len(first) else []
        self.windows.trim(slots, last_ms, count_from)
        values = {**escalation, "last_ms": last_ms, "plan": chunk.plan_hash, "count_from": count_from}
        self.states.put(chunk.keys, values, {"owner": np.empty(0, np.int64)})
        return ChunkFindings(findings=found, inexact=inexact)

    def _rescore_late(
        self, chunk: Chunk, codes: np.ndarray, slots: np.ndarray, count_from: np.ndarray, last_ms: np.ndarray
    ) -> tuple[Columns, pd.DataFrame]:
        """Score the new requests of subjects ``codes``, which have a late request, over their carried requests.

        Their carried requests are taken out of ``windows`` (``count_from`` is
        reset in place) and returned with the new ones, in time order and
        trimmed to the retention, to be appended again.
        """
        if not len(codes):
            return _no_rows(), pd.DataFrame()
        owner, ts_ms, prompt = self.windows.rows_of(slots[codes])
        count_from[codes] = self.windows.forget(slots[codes], count_from[codes])
        carried = {"owner": codes[owner], "ts": ts_ms / 1000.0, "prompt": prompt}
        mine = np.isin(chunk.subject, codes)
        new = {"owner": chunk.subject[mine], "ts": chunk.ts[mine], "prompt": chunk.prompt_hash[mine]}
        rows = with_carried(carried, new)

        scored = load_rows(
            self.detector,
            subject=rows["owner"],
            ts=rows["ts"],
            ts_ms=rows["ts_ms"],
            prompt=prompt_codes(rows["prompt"]),
            expected_rph=chunk.prepared.subjects["expected_rph"].to_numpy()[rows["owner"]],
            candidates=rows["is_new"],
        )
        return kept_after(rows, last_ms, self.retention), scored

    def _score_new(self, chunk: Chunk, batch: Columns, measures: WindowMeasures) -> pd.DataFrame:
        """Score the busy requests among the new requests appended in order."""
        owner = batch["owner"]
        per_window = expected_per_window(chunk.prepared.subjects["expected_rph"].to_numpy())[owner]
        busy = batch["is_new"] & (measures.count >= busy_level(self.detector, per_window))
        positions = np.flatnonzero(busy)
        if not len(positions):
            return pd.DataFrame()
        return score_load(
            self.detector,
            subject=owner[positions],
            ts=batch["ts"][positions],
            count=measures.count[positions],
            per_window=per_window[positions],
            parallel=measures.parallel[positions],
            waves=measures.waves[positions],
            same_prompt=measures.same_prompt[positions],
            square_sum=measures.square_sum[positions],
            span_ms=measures.span_ms[positions],
        )


def _appended_rows(chunk: Chunk, in_order: np.ndarray, late_rows: Columns) -> Columns:
    """Return the rows to append, sorted by owner: the chunk's requests of subjects in order, and ``late_rows``.

    ``is_new`` marks the requests to score here; the late subjects' requests were scored by ``load_rows``.
    """
    rows = {
        "owner": np.concatenate((chunk.subject[in_order], late_rows["owner"])),
        "ts": np.concatenate((chunk.ts[in_order], late_rows["ts"])),
        "ts_ms": np.concatenate((chunk.ts_ms[in_order], late_rows["ts_ms"])),
        "prompt": np.concatenate((chunk.prompt_hash[in_order], late_rows["prompt"])),
        "is_new": np.concatenate((np.ones(int(in_order.sum()), bool), np.zeros(len(late_rows["owner"]), bool))),
    }
    if not len(late_rows["owner"]):
        return rows
    # Each owner's rows come from one of the two parts, in time order, so a stable sort by owner keeps that order.
    order = np.argsort(rows["owner"], kind="stable")
    return {name: column[order] for name, column in rows.items()}


def _no_rows() -> Columns:
    return {
        "owner": np.empty(0, np.int64),
        "ts": np.empty(0, np.float64),
        "ts_ms": np.empty(0, np.int64),
        "prompt": np.empty(0, np.uint64),
    }


def _in_subject_order(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Join scored rows of two disjoint sets of subjects, each sorted by subject then time, into one such frame."""
    if second.empty:
        return first
    if first.empty:
        return second
    both = pd.concat([first, second], ignore_index=True)
    return both.sort_values("subject", kind="stable", ignore_index=True)
