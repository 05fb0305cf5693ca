"""automation pattern from per-subject state: burst starts and requests per clock hour."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from detector.detectors.automation import HOUR, AutomationDetector
from detector.features import PreparedEvents
from detector.features.runs import run_starts
from detector.state.chunk import Chunk, ChunkFindings, inexact_subjects, kept_after, prompt_codes, with_carried
from detector.state.table import SubjectKey, SubjectStates


class AutomationPatternState:
    """Carry what the pattern part of ``AutomationDetector`` reads, so its table is rebuilt without raw events.

    Per subject: burst starts (time and prompt hash, see ``Chunk.prompt_hash``),
    requests per clock hour, the last request's time, and the account, plan
    and expected rate of the latest request. With ``retention`` None every
    burst and hour is kept, as in the batch command's whole input. With
    seconds, those older than the subject's last request minus ``retention``
    are dropped.

    ``update`` returns no findings. ``pattern_findings`` rebuilds them for the
    given subjects or all of them. After the last chunk of a time-sorted input,
    with ``retention`` None, they equal the batch detector's pattern findings on
    the whole input.
    A plan change keeps them exact, because the rebuild reads the latest plan,
    so only late events are reported.
    """

    def __init__(self, detector: AutomationDetector, *, retention: float | None = None) -> None:
        self.detector = detector
        self.retention = retention
        self.bursts = SubjectStates(
            values={
                "last_ms": ("int64", -1),
                "last_ts": ("float64", np.nan),
                "plan": ("uint64", 0),
                "expected_rph": ("float64", 0.0),
            },
            rows={"ts": "float64", "prompt": "uint64"},
        )
        self.hours = SubjectStates(values={}, rows={"hour": "int64", "requests": "int64"})
        # The account and plan names of each subject's latest request, for the findings.
        self.names: dict[SubjectKey, tuple[str, str]] = {}

    def update(self, chunk: Chunk) -> ChunkFindings:
        """Add ``chunk``'s burst starts and hourly requests to the state; return no findings, and the late subjects."""
        taken = self.bursts.take(chunk.keys)
        inexact = inexact_subjects(chunk, taken)
        if len(inexact):
            inexact = inexact[inexact["why"] == "late_event"].reset_index(drop=True)

        # The gap into a subject's first request of the chunk is from its last carried request.
        iat = chunk.prepared.events["iat"].to_numpy().copy()
        iat[chunk.first_rows] = chunk.ts[chunk.first_rows] - taken.values["last_ts"]
        starts_burst = ~(iat <= self.detector.burst_gap)  # NaN (a subject's first request) starts a burst too
        new = {"owner": chunk.subject[starts_burst], "ts": chunk.ts[starts_burst], "prompt": chunk.prompt_hash[starts_burst]}
        bursts = with_carried(taken.rows, new)

        last_ms = np.maximum(chunk.last_ms, taken.values["last_ms"])
        values = {
            "last_ms": last_ms,
            "last_ts": np.fmax(chunk.ts[chunk.last_rows], taken.values["last_ts"]),
            "plan": chunk.plan_hash,
            "expected_rph": chunk.prepared.subjects["expected_rph"].to_numpy(),
        }
        self.bursts.put(chunk.keys, values, kept_after(bursts, last_ms, self.retention))
        self._add_hours(chunk, last_ms)

        subjects = chunk.prepared.subjects
        self.names.update(zip(chunk.keys, zip(subjects["account_id"].tolist(), subjects["plan"].tolist())))
        return ChunkFindings(findings=[], inexact=inexact)

    def _add_hours(self, chunk: Chunk, last_ms: np.ndarray) -> None:
        """Add the chunk's requests per (subject, clock hour) to the carried counts."""
        taken = self.hours.take(chunk.keys)
        hour = (chunk.ts // HOUR).astype(np.int64)
        owner = np.concatenate((taken.rows["owner"], chunk.subject))
        hour = np.concatenate((taken.rows["hour"], hour))
        requests = np.concatenate((taken.rows["requests"], np.ones(len(chunk.subject), np.int64)))

        order = np.lexsort((hour, owner))
        owner, hour, requests = owner[order], hour[order], requests[order]
        starts = run_starts(owner, hour)
        hours = {"owner": owner[starts], "hour": hour[starts], "requests": np.add.reduceat(requests, starts)}
        if self.retention is not None:
            # An hour is kept while any part of it is within the retention. NOTE: its whole count is kept, so the
            # oldest hour counts requests from before the retention.
            cutoff = last_ms[hours["owner"]] - int(self.retention * 1000)
            keep = (hours["hour"] + 1) * int(HOUR * 1000) > cutoff
            hours = {name: column[keep] for name, column in hours.items()}
        self.hours.put(chunk.keys, {}, hours)

    def pattern_findings(self, keys: Sequence[SubjectKey] | None = None) -> list:
        """Rebuild the pattern findings of ``keys``, or of every subject in the state without ``keys``.

        It reads only the carried bursts and hours of ``keys``, so its time grows with those, not with all
        subjects. A subject of ``keys`` without state has no findings.
        """
        keys = list(self.names) if keys is None else [key for key in keys if key in self.names]
        if not keys:
            return []
        taken = self.bursts.take(keys)
        hours = pd.DataFrame(self.hours.take(keys).rows)
        subjects = pd.DataFrame(
            {
                "subject_type": [key[0] for key in keys],
                "subject": [key[1] for key in keys],
                "account_id": [self.names[key][0] for key in keys],
                "plan": [self.names[key][1] for key in keys],
                "expected_rph": taken.values["expected_rph"],
            }
        )
        prepared = PreparedEvents(events=pd.DataFrame(), subjects=subjects, networks=[])

        rows = taken.rows
        bursts = pd.DataFrame({"subject": rows["owner"], "ts": rows["ts"], "prompt": prompt_codes(rows["prompt"])})

        def hourly_requests(chosen: pd.Index) -> pd.Series:
            rows = hours[hours["owner"].isin(chosen)]
            return pd.Series(rows["requests"].to_numpy(), index=pd.MultiIndex.from_arrays([rows["owner"], rows["hour"]]))

        return self.detector.pattern_findings(prepared, bursts, hourly_requests)
