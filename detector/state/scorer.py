"""Every incremental detector over one chunk of events, with findings in the form and order of ``score_events``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from detector.detectors import AbnormalCostDetector, AnomalyDetector, AutomationDetector, Detector, Finding
from detector.detectors import ImageQuotaDetector, KeySharingDetector
from detector.plans import PlanCatalogue
from detector.state.anomaly import AnomalyDayState
from detector.state.automation_load import AutomationLoadState
from detector.state.automation_pattern import AutomationPatternState
from detector.state.chunk import NO_SUBJECTS, Chunk, ChunkFindings
from detector.state.cost import AbnormalCostState
from detector.state.image_quota import ImageQuotaState
from detector.state.sharing import KeySharingState
from detector.state.table import SubjectKey

# Retention of the stream worker's state, in seconds: the 7 days of its raw windows.
STREAM_RETENTION = 7 * 86400.0
# key_sharing's kinds of finding in the order its batch detector concatenates them.
_SHARING_KINDS = ("concurrent", "devices", "countries")


class StateScorer:
    """Run the incremental version of each detector that ``score_events`` would run, one chunk at a time.

    ``detectors`` are those given to ``score_events``, such as
    ``default_detectors(model)``, and ``plans`` the same plan catalogue.
    ``retention`` is None for the batch command, which keeps every subject's
    state for its whole input, or seconds for the stream
    (``STREAM_RETENTION``). Only the pattern and key_sharing states take it.
    The other states keep what their windows need whatever it is (20 minutes
    of load, 7 days of image requests, the spend bins of 8 days), and the
    anomaly state keeps each subject's open day.

    ``score`` returns findings detector by detector in the order of
    ``detectors``, automation load before automation pattern. Within a
    detector they follow the batch detector's order over a whole input (see
    ``_in_batch_order``), where a subject's code is its first event over all
    chunks so far. Pattern
    findings measure all of a subject's bursts. Each chunk therefore returns
    the pattern findings of its subjects, rebuilt from their state alone, which
    replace the ones returned for them before.
    """

    def __init__(self, *, detectors: Sequence[Detector], plans: PlanCatalogue, retention: float | None = None) -> None:
        self.plans = plans
        self.retention = retention
        self.detectors = list(detectors)
        self.states = [_states_for(detector, retention) for detector in self.detectors]
        # The position of each subject's first event among all chunks, for the batch order of findings.
        self.ranks: dict[SubjectKey, int] = {}

    def score(self, frame: pd.DataFrame) -> ChunkFindings:
        """Prepare ``frame`` once as a ``Chunk``, update every state with it, and return the findings and inexact subjects.

        ``inexact`` contains one row per subject and reason that any state
        reported (see ``ChunkFindings``). Those subjects' findings may differ
        from a batch pass, so the caller re-scores them from raw events.
        """
        if frame.empty:
            return ChunkFindings(findings=[], inexact=NO_SUBJECTS)
        return self.update(Chunk(frame, self.plans))

    def update(self, chunk: Chunk) -> ChunkFindings:
        """Update every state with a chunk prepared by the caller; see ``score``."""
        self._rank_subjects(chunk.keys)

        findings: list[Finding] = []
        inexact = []
        for detector, states in zip(self.detectors, self.states):
            for state in states:
                result = state.update(chunk)
                found = state.pattern_findings(chunk.keys) if isinstance(state, AutomationPatternState) else result.findings
                findings.extend(self._in_batch_order(detector, found))
                inexact.append(result.inexact)
        return ChunkFindings(findings=findings, inexact=_union(inexact))

    def close(self, as_of: float) -> list[Finding]:
        """Score the open anomaly days that ended before ``as_of`` (epoch seconds), at the end of an input or for quiet keys."""
        found: list[Finding] = []
        for states in self.states:
            for state in states:
                if isinstance(state, AnomalyDayState):
                    found.extend(self._in_batch_order(state.detector, state.close_days(as_of)))
        return found

    def _rank_subjects(self, keys: Iterable[SubjectKey]) -> None:
        # Chunk keys follow the subjects' first events in the chunk, as prepare_events codes them.
        for key in keys:
            self.ranks.setdefault(key, len(self.ranks))

    def _in_batch_order(self, detector: Detector, findings: list[Finding]) -> list[Finding]:
        """Sort one detector's findings as the batch detector orders them over a whole input.

        key_sharing sorts its findings by time over all subjects, at equal
        times by kind. The other detectors list them by subject code and each
        subject's findings in time order, as the states return them.
        """
        if isinstance(detector, KeySharingDetector):
            return sorted(findings, key=lambda finding: (finding.detected_at, _SHARING_KINDS.index(finding.evidence["kind"]), self._rank(finding)))
        return sorted(findings, key=self._rank)

    def _rank(self, finding: Finding) -> int:
        return self.ranks[(finding.subject_type, finding.subject)]


def _states_for(detector: Detector, retention: float | None) -> list:
    """Return the incremental states that together reproduce ``detector``'s findings."""
    if isinstance(detector, AbnormalCostDetector):
        return [AbnormalCostState(detector)]
    if isinstance(detector, KeySharingDetector):
        return [KeySharingState(detector, retention=retention)]
    if isinstance(detector, AutomationDetector):
        return [AutomationLoadState(detector), AutomationPatternState(detector, retention=retention)]
    if isinstance(detector, ImageQuotaDetector):
        return [ImageQuotaState(detector)]
    if isinstance(detector, AnomalyDetector):
        return [AnomalyDayState(detector)]
    raise TypeError(
        f"no incremental state for detector {type(detector).__name__} (reason {detector.reason!r}); "
        "score its events with score_events instead"
    )


def _union(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Return the inexact subjects of all states, one row per subject and reason."""
    parts = [part for part in parts if len(part)]
    if not parts:
        return NO_SUBJECTS
    return pd.concat(parts, ignore_index=True).drop_duplicates(ignore_index=True)
