"""Encode one detector table's per-subject state as one bytes value per subject, and decode it, for a store.

A value is one packed little-endian record followed by the subject's rows as
packed records (row-major):

- header: format version (``u1``), layout (``<u4``, the CRC-32 of the column
  names and types, so a value written with other columns is rejected) and
  row count (``<u4``);
- the subject's per-subject values, in the table's column order;
- each row's columns, in the table's row column order.

Both directions run over all subjects of a batch with numpy. Per subject,
Python only slices or joins bytes. ``scripts/bench_state_store.py`` compares
this layout with one Arrow IPC message per subject and table.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1

Columns = dict[str, np.ndarray]

# Header fields. Value columns get a prefix, so that no column name can collide with them.
_HEADER = [("format", "u1"), ("layout", "<u4"), ("rows", "<u4")]
_VALUE_PREFIX = "value:"


@dataclass(slots=True)
class DecodedStates:
    """Readable values of a batch: ``positions`` in the input, their ``values`` and ``rows`` (``owner`` indexes ``positions``).

    ``invalid`` maps the position of each value that could not be read to the reason.
    Positions in neither are absent values (None).
    """

    positions: np.ndarray
    values: Columns
    rows: Columns
    invalid: dict[int, str]


class TableCodec:
    """The byte layout of one table's per-subject state, given its value and row column types."""

    def __init__(self, value_dtypes: dict[str, np.dtype], row_dtypes: dict[str, np.dtype]) -> None:
        values = [(name, np.dtype(dtype).newbyteorder("<")) for name, dtype in value_dtypes.items()]
        rows = [(name, np.dtype(dtype).newbyteorder("<")) for name, dtype in row_dtypes.items()]
        description = ";".join(f"{name}={dtype.str}" for name, dtype in values) + "|" + ";".join(f"{name}={dtype.str}" for name, dtype in rows)
        self.layout = zlib.crc32(description.encode())
        self.value_names = [name for name, _ in values]
        self.row_names = [name for name, _ in rows]
        self.header = np.dtype(_HEADER + [(_VALUE_PREFIX + name, dtype) for name, dtype in values])
        self.row = np.dtype(rows)

    def encode(self, known: np.ndarray, values: Columns, rows: Columns) -> list[bytes | None]:
        """Return one value per subject, None where ``known`` is false.

        ``values`` has one entry per subject, ``rows`` is sorted by ``owner``,
        the subject's position, as ``SubjectStates.take`` returns them.
        """
        count = len(known)
        lengths = np.bincount(rows["owner"], minlength=count).astype(np.int64)
        header = np.zeros(count, self.header)
        header["format"] = FORMAT_VERSION
        header["layout"] = self.layout
        header["rows"] = lengths
        for name in self.value_names:
            header[_VALUE_PREFIX + name] = values[name]
        records = np.empty(len(rows["owner"]), self.row)
        for name in self.row_names:
            records[name] = rows[name]

        header_bytes, row_bytes = header.tobytes(), records.tobytes()
        header_size = self.header.itemsize
        ends = np.cumsum(lengths) * self.row.itemsize
        starts = ends - lengths * self.row.itemsize
        encoded: list[bytes | None] = []
        for position, (present, start, end) in enumerate(zip(known.tolist(), starts.tolist(), ends.tolist())):
            offset = position * header_size
            encoded.append(header_bytes[offset : offset + header_size] + row_bytes[start:end] if present else None)
        return encoded

    def decode(self, encoded: Sequence[bytes | None]) -> DecodedStates:
        """Read the values of a batch. A value that is too short, of another format version or layout, or of the wrong length is invalid."""
        header_size, row_size = self.header.itemsize, self.row.itemsize
        invalid: dict[int, str] = {}
        candidates = []
        for position, value in enumerate(encoded):
            if value is None:
                continue
            if len(value) < header_size:
                invalid[position] = f"{len(value)} bytes, shorter than the {header_size}-byte header"
            else:
                candidates.append(position)

        # Joining slices of bytes is one copy per subject. Selecting the same bytes with a mask over the joined
        # buffer took 0.5 s instead of 23 ms for the pattern state of 2,000 subjects (9 MB of rows,
        # scripts/bench_state_store.py at a load average of 5).
        header = np.frombuffer(b"".join([encoded[position][:header_size] for position in candidates]), self.header)
        sizes = np.fromiter((len(encoded[position]) for position in candidates), np.int64, count=len(candidates))
        lengths = header["rows"].astype(np.int64)
        expected = header_size + lengths * row_size
        readable = (header["format"] == FORMAT_VERSION) & (header["layout"] == self.layout) & (sizes == expected)
        for index in np.flatnonzero(~readable).tolist():
            invalid[candidates[index]] = self._reason(header[index], int(sizes[index]), int(expected[index]))

        positions = np.asarray(candidates, np.int64)[readable]
        header, lengths = header[readable], lengths[readable]
        if row_size:
            records = np.frombuffer(b"".join([encoded[position][header_size:] for position in positions.tolist()]), self.row)
        else:
            records = np.zeros(int(lengths.sum()), self.row)
        rows = {"owner": np.repeat(np.arange(len(positions)), lengths)}
        rows.update((name, records[name]) for name in self.row_names)
        values = {name: header[_VALUE_PREFIX + name] for name in self.value_names}
        return DecodedStates(positions=positions, values=values, rows=rows, invalid=invalid)

    def _reason(self, header: np.void, size: int, expected: int) -> str:
        if header["format"] != FORMAT_VERSION:
            return f"format version {header['format']}, expected {FORMAT_VERSION}"
        if header["layout"] != self.layout:
            return f"layout {header['layout']:08x} (other columns), expected {self.layout:08x}"
        return f"{size} bytes, expected {expected} for {header['rows']} rows"
