"""One chunk of events as the incremental detectors read it, and the subjects they cannot score exactly."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from detector.features import PreparedEvents, prepare_events
from detector.features.runs import run_starts
from detector.plans import PlanCatalogue
from detector.state.table import SubjectKey, TakenState

# A prompt hash of 0 stands for a request without one.
UNKNOWN_PROMPT = np.uint64(0)


@dataclass(slots=True)
class ChunkFindings:
    """The findings an incremental detector built from one chunk, and the subjects it could not score exactly.

    ``inexact`` has one row per such subject: ``subject_type``, ``subject`` and
    ``why`` (``late_event``, ``plan_changed``, or ``edge_flood`` from key_sharing). Their findings, in this chunk
    and before it, may differ from a batch pass over the whole input, so the
    caller re-scores them from stored raw events.
    """

    findings: list
    inexact: pd.DataFrame


class Chunk:
    """A frame of new events, prepared alone, with the per-subject values the incremental detectors share.

    Subject codes of ``prepared`` index ``keys``, so a subject's position in
    the state taken for this chunk is its code.
    """

    def __init__(self, frame: pd.DataFrame, plans: PlanCatalogue) -> None:
        self.frame = frame
        self.prepared: PreparedEvents = prepare_events(frame, plans)
        subjects = self.prepared.subjects
        self.keys: list[SubjectKey] = list(zip(subjects["subject_type"].tolist(), subjects["subject"].tolist()))

    @cached_property
    def plan_hash(self) -> np.ndarray:
        """A stable 64-bit hash of each subject's plan (that of its last request in the chunk)."""
        return pd.util.hash_array(self.prepared.subjects["plan"].to_numpy(dtype=object))

    @cached_property
    def first_ms(self) -> np.ndarray:
        """Each subject's first event time in the chunk, in epoch milliseconds."""
        return self.prepared.events["ts_ms"].to_numpy()[run_starts(self.prepared.events["subject"].to_numpy())]

    @cached_property
    def last_ms(self) -> np.ndarray:
        """Each subject's last event time in the chunk, in epoch milliseconds."""
        ends = np.append(run_starts(self.prepared.events["subject"].to_numpy())[1:], len(self.prepared.events)) - 1
        return self.prepared.events["ts_ms"].to_numpy()[ends]

    @cached_property
    def prompt_hash(self) -> np.ndarray:
        """A stable 64-bit hash of each prepared event's ``prompt_hash``, ``UNKNOWN_PROMPT`` where it is blank.

        Prompt codes from ``prepare_events`` number the prompts of one frame
        only, so state carries this hash instead.
        """
        uniques = pd.unique(self.frame["prompt_hash"].to_numpy(dtype=object))
        hashed = pd.util.hash_array(uniques.astype(object)) if len(uniques) else np.empty(0, np.uint64)
        hashed[uniques == ""] = UNKNOWN_PROMPT
        codes = self.prepared.events["prompt"].to_numpy()
        return np.where(codes >= 0, hashed[np.maximum(codes, 0)] if len(hashed) else UNKNOWN_PROMPT, UNKNOWN_PROMPT)


def inexact_subjects(chunk: Chunk, taken: TakenState) -> pd.DataFrame:
    """Return the chunk's subjects that the carried state cannot score exactly, and why.

    - ``late_event``: an event older than the subject's last seen event. A
      batch pass would have placed it among older events.
    - ``plan_changed``: the plan of the subject's last request differs from
      the carried one. A batch pass measures all of a subject's events against
      its latest plan, so earlier findings were measured against another.
    """
    values = taken.values
    late = taken.known & (chunk.first_ms < values["last_ms"].to_numpy())
    changed = taken.known & (chunk.plan_hash != values["plan"].to_numpy())
    flagged = np.flatnonzero(late | changed)
    subjects = chunk.prepared.subjects
    return pd.DataFrame(
        {
            "subject_type": subjects["subject_type"].to_numpy()[flagged],
            "subject": subjects["subject"].to_numpy()[flagged],
            "why": np.where(late[flagged], "late_event", "plan_changed"),
        }
    )


def with_carried(carried: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Return carried and new rows (each with ``owner`` and ``ts``) sorted by owner then time, with ``is_new`` and ``ts_ms``.

    At equal times carried rows come first, as they arrived first. A late new
    row is sorted among the carried ones.
    """
    both = pd.concat([carried.assign(is_new=False), new.assign(is_new=True)], ignore_index=True)
    ts_ms = np.round(both["ts"].to_numpy() * 1000).astype(np.int64)
    order = np.lexsort((ts_ms, both["owner"].to_numpy()))
    both = both.take(order).reset_index(drop=True)
    both["ts_ms"] = ts_ms[order]
    return both


def kept_after(rows: pd.DataFrame, last_ms: np.ndarray, retention: float | None) -> pd.DataFrame:
    """Keep the rows a later event of the same subject can still see: newer than the owner's last event minus ``retention`` seconds."""
    if retention is None:
        return rows
    cutoff = last_ms[rows["owner"].to_numpy()] - int(retention * 1000)
    return rows[rows["ts_ms"].to_numpy() > cutoff]
