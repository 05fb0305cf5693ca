"""Event readers: JSON Lines, CSV, Parquet and access logs into the canonical event frame.

``read_events`` reads files (gzip or not) and returns a ``ReadResult``.
``validate_records`` checks already-parsed records, as a stream consumer has
them. Both apply the contract of docs/events.md through the same vectorised
checks.
"""

from detector.readers.base import ReaderError, ReadResult
from detector.readers.read import read_events, read_json_lines
from detector.readers.validate import validate_records

__all__ = ["ReadResult", "ReaderError", "read_events", "read_json_lines", "validate_records"]
