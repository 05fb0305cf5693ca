"""The update step shared by detectors whose state is recent rows per subject plus the current period's escalation."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from detector.state.chunk import Chunk, ChunkFindings, inexact_subjects, kept_after, with_carried
from detector.state.escalation import ESCALATION_VALUES
from detector.state.table import Columns, SubjectStates

# Per-subject values every such state keeps: the last event time, for late events, and a hash of the plan.
SUBJECT_VALUES: dict[str, tuple[str, object]] = {"last_ms": ("int64", -1), "plan": ("uint64", 0)}


class CarriedRowsState(ABC):
    """Per-subject rows of the last ``retention`` seconds, updated chunk by chunk.

    A subclass names its row columns and builds the findings from carried and
    new rows together. This class takes the state, trims it and puts it back.
    """

    retention: float
    row_columns: dict[str, str]

    def __init__(self, detector) -> None:
        """``detector`` is the batch detector whose findings this state reproduces."""
        self.detector = detector
        self.states = SubjectStates(values={**SUBJECT_VALUES, **ESCALATION_VALUES}, rows=self.row_columns)

    def update(self, chunk: Chunk) -> ChunkFindings:
        """Return the findings of ``chunk``'s events and carry its rows on."""
        taken = self.states.take(chunk.keys)
        inexact = inexact_subjects(chunk, taken)
        rows = with_carried(taken.rows, self.new_rows(chunk))

        found, escalation = self.findings(chunk, rows, taken.values)
        last_ms = np.maximum(chunk.last_ms, taken.values["last_ms"])
        values = {**escalation, "last_ms": last_ms, "plan": chunk.plan_hash}
        self.states.put(chunk.keys, values, kept_after(rows, last_ms, self.retention))
        return ChunkFindings(findings=found, inexact=inexact)

    @abstractmethod
    def new_rows(self, chunk: Chunk) -> Columns:
        """Return the rows ``chunk`` adds: ``owner`` (the subject code), ``ts`` and the row columns."""

    @abstractmethod
    def findings(self, chunk: Chunk, rows: Columns, carried: Columns) -> tuple[list, Columns]:
        """Return the findings among the new rows of ``rows`` and the escalation values to carry on.

        ``rows`` contains carried and new rows sorted by owner then time, with
        ``is_new`` and ``ts_ms``. ``carried`` contains the values taken for the chunk's subjects.
        """
