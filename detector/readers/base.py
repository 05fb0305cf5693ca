"""Types shared by the readers: the read result, the fatal error and a raw batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from detector.events import COLUMNS, Reject
from detector.readers.columns import RawColumn

# Fields a reader takes from its input. subject_type is internal: readers of
# gateway events leave it out (it defaults to "key"), the access-log reader sets it.
def has_surrogates(value: object) -> bool:
    """Return True if a string in value contains a surrogate code point, which UTF-8 cannot encode.

    Bytes that are not UTF-8 become U+DC80-U+DCFF when decoded with
    surrogateescape, and a lone JSON escape such as "\\ud800" becomes any surrogate.
    """
    if isinstance(value, str):
        return not value.isascii() and any("\ud800" <= character <= "\udfff" for character in value)
    if isinstance(value, dict):
        return any(has_surrogates(key) or has_surrogates(item) for key, item in value.items())
    if isinstance(value, list):
        return any(has_surrogates(item) for item in value)
    return False


INPUT_FIELDS: tuple[str, ...] = tuple(name for name in COLUMNS if name != "subject_type")


class ReaderError(Exception):
    """An input that cannot be read at all: not found, unreadable, or of unknown format."""


@dataclass
class ReadResult:
    """Events read from one or more files, and what was left out and why."""

    # Canonical frame: the columns and dtypes of events.COLUMNS in that order,
    # sorted by ts (stable), each request_id once, index 0..n-1.
    frame: pd.DataFrame
    # Every rejected record, in input order within each file.
    rejects: list[Reject] = field(default_factory=list)
    # Records seen: valid, rejected and duplicate ones. Blank lines are not records.
    records: int = 0
    # Records dropped because an earlier record had the same request_id.
    duplicates: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class RawBatch:
    """Rows parsed from one stretch of a file, not yet checked against the contract."""

    columns: dict[str, RawColumn]
    # 1-based line number of each row in its file (for Parquet, the row number + 1).
    lines: np.ndarray

    @property
    def length(self) -> int:
        """Number of rows in the batch."""
        return len(self.lines)

    def column(self, name: str) -> RawColumn:
        """Return the named field, or a column of nulls when the batch lacks it."""
        found = self.columns.get(name)
        if found is None:
            return RawColumn.missing(self.length)
        return found
