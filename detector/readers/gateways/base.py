"""The result of every gateway log reader, and the reflection of a gateway's table."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine, MetaData, Table
from sqlalchemy.exc import NoSuchTableError

from detector.events import Reject
from detector.readers.base import ReaderError
from detector.readers.gateways.cursor import Cursor

# A row becomes an event record, None (a row that is no request, such as a top-up),
# or (field, reason) when it cannot become an event.
Mapped = dict[str, Any] | None | tuple[str, str]


@dataclass
class LogBatch:
    """Rows read after a cursor, mapped to event records, and the cursor after them."""

    records: list[dict[str, Any]] = field(default_factory=list)
    # Where each record came from: the row id, or the row's number since the first import.
    lines: list[int] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    rows: int = 0
    skipped: int = 0
    cursor: Cursor = field(default_factory=Cursor)


class LogReader(Protocol):
    """A gateway log table read after a cursor: what ``fairuse import`` needs of a reader."""

    kind: str
    source: str
    settings: Any

    def read_after(self, cursor: Cursor, *, limit: int, settled_before: float, now: float | None = None) -> LogBatch:
        """Map up to ``limit`` rows after ``cursor`` written before ``settled_before`` (epoch s); ``now`` is the clock."""

    def read_before(self, cursor: Cursor, since: float) -> LogBatch:
        """Map the rows up to ``cursor`` written from ``since`` on."""


def collect(batch: LogBatch, source: str, rows: Iterable[tuple[int, Any]], to_record: Callable[[Any], Mapped]) -> LogBatch:
    """Map ``(line, row)`` pairs into ``batch``: records, rejects with their place, and skipped rows."""
    for line, row in rows:
        batch.rows += 1
        mapped = to_record(row)
        if mapped is None:
            batch.skipped += 1
        elif isinstance(mapped, tuple):
            batch.rejects.append(Reject(source, line, mapped[0], mapped[1]))
        else:
            batch.records.append(mapped)
            batch.lines.append(line)
    return batch


def reflect_table(engine: Engine, name: str, required: Iterable[str], hint: str) -> Table:
    """Load a gateway table's columns from the database; fail naming the missing table or columns."""
    try:
        table = Table(name, MetaData(), autoload_with=engine)
    except NoSuchTableError as error:
        where = engine.url.render_as_string(hide_password=True)
        raise ReaderError(f"table {name!r} not found in {where}; {hint}") from error
    missing = [column for column in required if column not in table.c]
    if missing:
        raise ReaderError(f"table {name!r} has no column {', '.join(missing)}; {hint}")
    return table


def whole_number(value: Any) -> int:
    """Return a database integer (or None) as int, 0 for None."""
    return int(value) if value is not None else 0
