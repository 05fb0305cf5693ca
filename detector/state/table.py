"""Per-subject state of one detector: fixed-size values per subject and carried rows per subject."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.state.table_codec import TableCodec

logger = logging.getLogger(__name__)

SubjectKey = tuple[str, str]
# Named numpy columns of equal length: plain arrays, because a chunk of a few events would spend most
# of its time building DataFrames.
Columns = dict[str, np.ndarray]


@dataclass(slots=True)
class TakenState:
    """The state of the subjects of one chunk, aligned with the keys passed to ``SubjectStates.take``.

    ``values`` has one entry per key in each column, the column's default for a
    subject without state (``known`` false). ``rows`` contains the subjects' carried
    rows in stored order, with ``owner``: the position of the row's subject in the keys.
    """

    known: np.ndarray
    values: Columns
    rows: Columns


class SubjectStates:
    """State of one detector for many subjects, keyed by (subject_type, subject), as numbers only.

    Each subject has one value per column of ``values`` and any number of rows
    with the columns of ``rows``. Rows live in shared column arrays, each
    subject's rows one contiguous segment, so ``take`` and ``put`` gather and
    append whole segments with numpy over all subjects of a chunk. ``put``
    appends a subject's new segment and abandons the old one. The arrays are
    compacted once abandoned rows outnumber live ones. A chunk therefore costs
    time in proportion to its subjects' rows (amortised), never to untouched
    subjects, except for the occasional doubling of the arrays' capacity.
    Per subject, the values and rows form one small table each, which is what
    a store would write per subject (for example as Arrow IPC).
    """

    def __init__(self, *, values: dict[str, tuple[str, object]], rows: dict[str, str]) -> None:
        """``values`` maps each per-subject column to its dtype and default, ``rows`` each row column to its dtype."""
        self._defaults = {name: default for name, (_, default) in values.items()}
        self._value_dtypes = {name: np.dtype(dtype) for name, (dtype, _) in values.items()}
        self._row_dtypes = {name: np.dtype(dtype) for name, dtype in rows.items()}
        self._slots: dict[SubjectKey, int] = {}
        self._values = {name: np.empty(0, dtype) for name, dtype in self._value_dtypes.items()}
        self._start = np.empty(0, np.int64)
        self._length = np.empty(0, np.int64)
        self._rows = {name: np.empty(0, dtype) for name, dtype in self._row_dtypes.items()}
        self._used = 0
        self._live = 0
        # Slots of discarded subjects, reused by new ones.
        self._free: list[int] = []
        self._codec = TableCodec(self._value_dtypes, self._row_dtypes)

    def __len__(self) -> int:
        return len(self._slots)

    def subjects(self) -> list[SubjectKey]:
        """Return the keys of every subject with state."""
        return list(self._slots)

    @property
    def live_rows(self) -> int:
        """Rows kept for all subjects, without abandoned ones."""
        return self._live

    def nbytes(self) -> int:
        """Return the bytes of live values and rows, without keys or spare capacity."""
        subjects = len(self._slots)
        value_bytes = sum(dtype.itemsize for dtype in self._value_dtypes.values()) + 16  # + segment start and length
        row_bytes = sum(dtype.itemsize for dtype in self._row_dtypes.values())
        return subjects * value_bytes + self.live_rows * row_bytes

    def take(self, keys: Sequence[SubjectKey]) -> TakenState:
        """Return the state of ``keys``; subjects without state get defaults and no rows."""
        slots = np.fromiter((self._slots.get(key, -1) for key in keys), np.int64, count=len(keys))
        known = slots >= 0
        slot = np.where(known, slots, 0)
        if not len(self._start):
            self._grow_slots(1)
        values = {
            name: np.where(known, self._values[name][slot], default).astype(self._value_dtypes[name])
            for name, default in self._defaults.items()
        }
        lengths = np.where(known, self._length[slot], 0)
        index = _segment_index(self._start[slot], lengths)
        rows = {"owner": np.repeat(np.arange(len(keys)), lengths)}
        rows.update((name, column[index]) for name, column in self._rows.items())
        return TakenState(known=known, values=values, rows=rows)

    def put(self, keys: Sequence[SubjectKey], values: Columns, rows: Columns) -> None:
        """Replace the state of ``keys`` with ``values`` (one entry per key) and ``rows`` (sorted by ``owner``).

        Both may also be DataFrames, whose columns are read as arrays.
        """
        values, rows = _as_columns(values), _as_columns(rows)
        owner = rows["owner"]
        if len(owner) > 1 and bool(np.any(owner[1:] < owner[:-1])):
            raise ValueError("rows must be sorted by owner, the position of their subject in keys")
        slots = self._slots_for(keys)
        for name in self._values:
            self._values[name][slots] = values[name]

        self._abandon(slots)
        lengths = np.bincount(owner, minlength=len(keys)).astype(np.int64)
        self._reserve(len(owner))
        for name, column in self._rows.items():
            column[self._used : self._used + len(owner)] = rows[name]
        self._start[slots] = self._used + np.concatenate(([0], np.cumsum(lengths)[:-1]))
        self._length[slots] = lengths
        self._used += len(owner)
        self._live += len(owner)

    def discard(self, keys: Sequence[SubjectKey]) -> None:
        """Drop the state of ``keys``, so that ``take`` returns defaults for them. Keys without state are ignored."""
        slots = [self._slots.pop(key) for key in keys if key in self._slots]
        if slots:
            self._abandon(np.asarray(slots, np.int64))
            self._free.extend(slots)

    def export(self, keys: Sequence[SubjectKey]) -> list[bytes | None]:
        """Return each key's values and rows encoded as one bytes value (see ``detector.state.table_codec``), None for a subject without state."""
        taken = self.take(keys)
        return self._codec.encode(taken.known, taken.values, taken.rows)

    def load(self, keys: Sequence[SubjectKey], encoded: Sequence[bytes | None]) -> list[int]:
        """Replace the state of ``keys`` with ``encoded``, values from ``export``; None means no state.

        An invalid value (garbage, another format version, other columns) is
        logged and read as no state. Returns the positions of such values.
        """
        decoded = self._codec.decode(encoded)
        if decoded.invalid:
            first = sorted(decoded.invalid.items())[:5]
            logger.warning(
                "invalid state of %d subjects, read as no state: %s",
                len(decoded.invalid), "; ".join(f"{keys[position]}: {reason}" for position, reason in first),
            )
        readable = set(decoded.positions.tolist())
        self.discard([key for position, key in enumerate(keys) if position not in readable])
        self.put([keys[position] for position in decoded.positions.tolist()], decoded.values, decoded.rows)
        return sorted(decoded.invalid)

    def _slots_for(self, keys: Sequence[SubjectKey]) -> np.ndarray:
        """Return each key's slot, adding slots for new subjects."""
        slots = np.empty(len(keys), np.int64)
        for position, key in enumerate(keys):
            slot = self._slots.get(key)
            if slot is None:
                # Without free slots, the slots in use are exactly 0 .. len(self._slots) - 1.
                slot = self._slots[key] = self._free.pop() if self._free else len(self._slots)
            slots[position] = slot
        if len(self._slots) > len(self._start):
            self._grow_slots(len(self._slots))
        return slots

    def _grow_slots(self, needed: int) -> None:
        capacity = max(needed, 2 * len(self._start), 16)
        for name, column in self._values.items():
            self._values[name] = _resized(column, capacity)
        self._start = _resized(self._start, capacity)
        self._length = _resized(self._length, capacity)

    def _abandon(self, slots: np.ndarray) -> None:
        self._live -= int(self._length[slots].sum())
        self._length[slots] = 0

    def _reserve(self, extra: int) -> None:
        """Make room for ``extra`` rows after the used ones, compacting first when abandoned rows outnumber live ones."""
        live = self.live_rows
        if self._used - live > max(live, 1024):
            self._compact()
        needed = self._used + extra
        capacity = len(next(iter(self._rows.values()))) if self._rows else 0
        if needed > capacity:
            capacity = max(needed, 2 * capacity, 1024)
            for name, column in self._rows.items():
                self._rows[name] = _resized(column, capacity)

    def _compact(self) -> None:
        """Move every subject's segment to the front, in slot order, dropping abandoned rows."""
        subjects = len(self._slots) + len(self._free)
        lengths = self._length[:subjects]
        index = _segment_index(self._start[:subjects], lengths)
        for name, column in self._rows.items():
            column[: len(index)] = column[index]
        self._start[:subjects] = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        self._used = len(index)


def numbered_slots(slots: dict[SubjectKey, int], keys: Sequence[SubjectKey]) -> np.ndarray:
    """Return each key's slot in ``slots``, adding new keys with the next numbers (slots are never freed)."""
    numbers = np.empty(len(keys), np.int64)
    for position, key in enumerate(keys):
        slot = slots.get(key)
        if slot is None:
            slot = slots[key] = len(slots)
        numbers[position] = slot
    return numbers


def _segment_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Return the row positions of the segments given by ``starts`` and ``lengths``, segment after segment."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def _resized(column: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.zeros(capacity, column.dtype)
    grown[: len(column)] = column[: min(len(column), capacity)]
    return grown


def _as_columns(columns) -> Columns:
    """Return ``columns`` (a dict of arrays or a DataFrame) as a dict of numpy arrays."""
    return {name: np.asarray(columns[name]) for name in columns}
