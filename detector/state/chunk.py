"""One chunk of events as the incremental detectors read it, and the subjects they cannot score exactly."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from detector.features import PreparedEvents, prepare_events
from detector.features.runs import run_starts
from detector.plans import PlanCatalogue
from detector.state.table import Columns, SubjectKey, TakenState

# A prompt hash of 0 stands for a request without one.
UNKNOWN_PROMPT = np.uint64(0)

# The ``inexact`` frame of a chunk without such subjects, shared so that a chunk builds no frame; do not modify it.
NO_SUBJECTS = pd.DataFrame({"subject_type": pd.Series(dtype=object), "subject": pd.Series(dtype=object), "why": pd.Series(dtype=object)})


@dataclass(slots=True)
class ChunkFindings:
    """The findings an incremental detector built from one chunk, and the subjects it could not score exactly.

    ``inexact`` has one row per such subject: ``subject_type``, ``subject`` and
    ``why`` (``late_event``, ``plan_changed``, or ``edge_flood`` from key_sharing). Their findings, in this chunk
    and before it, may differ from a batch pass over the whole input, so the
    caller re-scores them from stored raw events. A finding's ``account_id``
    and ``plan`` are those of the subject's last request in its chunk.
    """

    findings: list
    inexact: pd.DataFrame


class Chunk:
    """A frame of new events, prepared alone, with the per-subject values the incremental detectors share.

    Subject codes of ``prepared`` index ``keys``, so a subject's position in
    the state taken for this chunk is its code. The arrays follow the prepared
    events (sorted by subject then time).
    """

    def __init__(self, frame: pd.DataFrame, plans: PlanCatalogue) -> None:
        self.frame = frame
        self.prepared: PreparedEvents = prepare_events(frame, plans)
        subjects = self.prepared.subjects
        events = self.prepared.events
        self.keys: list[SubjectKey] = list(zip(subjects["subject_type"].tolist(), subjects["subject"].tolist()))
        self.subject = events["subject"].to_numpy()
        self.ts = events["ts"].to_numpy()
        self.ts_ms = events["ts_ms"].to_numpy()
        # Each subject's first and last row in the prepared events.
        self.first_rows = run_starts(self.subject) if len(events) else np.empty(0, np.int64)
        self.last_rows = np.append(self.first_rows[1:], len(events)) - 1

    @cached_property
    def plan_hash(self) -> np.ndarray:
        """A stable 64-bit hash of each subject's plan (that of its last request in the chunk)."""
        return pd.util.hash_array(self.prepared.subjects["plan"].to_numpy(dtype=object))

    @property
    def first_ms(self) -> np.ndarray:
        """Each subject's first event time in the chunk, in epoch milliseconds."""
        return self.ts_ms[self.first_rows]

    @property
    def last_ms(self) -> np.ndarray:
        """Each subject's last event time in the chunk, in epoch milliseconds."""
        return self.ts_ms[self.last_rows]

    @cached_property
    def prompt_hash(self) -> np.ndarray:
        """A stable 64-bit hash of each prepared event's ``prompt_hash``, ``UNKNOWN_PROMPT`` where it is blank or missing.

        Prompt codes from ``prepare_events`` number the prompts of one frame
        only, so state carries this hash instead. ``pd.util.hash_array`` uses a
        fixed key, so a hash is the same in every process.
        """
        codes, uniques = pd.factorize(self.frame["prompt_hash"])
        hashed = np.append(pd.util.hash_array(np.asarray(uniques, dtype=object)), UNKNOWN_PROMPT)
        hashed[:-1][np.asarray(uniques, dtype=object) == ""] = UNKNOWN_PROMPT
        # Code -1 (a missing value) picks the UNKNOWN_PROMPT appended last.
        per_row = hashed[codes]
        return per_row[self.prepared.input_rows] if self.prepared.input_rows is not None else per_row


def inexact_subjects(chunk: Chunk, taken: TakenState) -> pd.DataFrame:
    """Return the chunk's subjects that the carried state cannot score exactly, and why.

    - ``late_event``: an event older than the subject's last seen event. A
      batch pass would have placed it among older events.
    - ``plan_changed``: the plan of the subject's last request differs from
      the carried one. A batch pass measures all of a subject's events against
      its latest plan, so earlier findings were measured against another.
    """
    late = taken.known & (chunk.first_ms < taken.values["last_ms"])
    changed = taken.known & (chunk.plan_hash != taken.values["plan"])
    flagged = np.flatnonzero(late | changed)
    if not len(flagged):
        return NO_SUBJECTS
    subjects = chunk.prepared.subjects
    return pd.DataFrame(
        {
            "subject_type": subjects["subject_type"].to_numpy()[flagged],
            "subject": subjects["subject"].to_numpy()[flagged],
            "why": np.where(late[flagged], "late_event", "plan_changed"),
        }
    )


def with_carried(carried: Columns, new: Columns) -> Columns:
    """Return carried and new rows (each with ``owner`` and ``ts``) sorted by owner then time, with ``is_new`` and ``ts_ms``.

    At equal times carried rows come first, as they arrived first. A late new
    row is sorted among the carried ones.
    """
    both = {name: np.concatenate((carried[name], new[name])) for name in carried}
    both["is_new"] = np.arange(len(both["owner"])) >= len(carried["owner"])
    ts_ms = np.round(both["ts"] * 1000).astype(np.int64)
    # Carried and new rows are each sorted by owner then time, so a stable sort by owner merges the two runs
    # in linear time. Only a late row needs the full sort.
    order = np.argsort(both["owner"], kind="stable")
    owner, sorted_ms = both["owner"][order], ts_ms[order]
    if bool(np.any((owner[1:] == owner[:-1]) & (sorted_ms[1:] < sorted_ms[:-1]))):
        order = np.lexsort((ts_ms, both["owner"]))
    both = {name: column[order] for name, column in both.items()}
    both["ts_ms"] = ts_ms[order]
    return both


def kept_after(rows: Columns, last_ms: np.ndarray, retention: float | None) -> Columns:
    """Keep the rows a later event of the same subject can still see: newer than the owner's last event minus ``retention`` seconds."""
    if retention is None:
        return rows
    keep = rows["ts_ms"] > last_ms[rows["owner"]] - int(retention * 1000)
    return {name: column[keep] for name, column in rows.items()}


def prompt_codes(hashes: np.ndarray) -> np.ndarray:
    """Number the distinct prompt hashes from 0, with -1 for ``UNKNOWN_PROMPT``, as the detectors read prompts."""
    codes = pd.factorize(hashes)[0].astype(np.int64)
    codes[hashes == UNKNOWN_PROMPT] = -1
    return codes
