"""CSV reader: a header line naming the fields, then one record per line.

Arrow parses clean blocks with every contract column as text (the checks parse
numbers and booleans). A block Arrow cannot parse, or whose row count does not
match its non-blank lines, is read line by line with the csv module so each
bad line becomes one reject. Quoted values must not contain line breaks: a
record whose quoted value spans lines becomes one reject at its first line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from detector.events import REQUIRED_FIELDS, Reject
from detector.readers.base import INPUT_FIELDS, RawBatch, ReaderError, has_surrogates
from detector.readers.columns import RawColumn
from detector.readers import source as source_module
from detector.readers.source import InputFile, LineBlocks, index_lines, newline_offsets, non_blank_line_numbers
from detector.readers.validate import batch_from_records

ARROW_CHUNK_SIZE = 4 << 20
# The csv module rejects fields over 128 kB by default, while Arrow reads longer ones,
# so a long value would be rejected only in blocks that the csv module reads.
# Lines longer than MAX_LINE_BYTES are never read, so no field is longer.
csv.field_size_limit(max(csv.field_size_limit(), source_module.MAX_LINE_BYTES))
# Lines after a line with an unclosed quote that are tried as the rest of its record.
MAX_CONTINUATION_LINES = 100
QUOTE, CARRIAGE_RETURN, NEWLINE = ord('"'), ord("\r"), ord("\n")


def read_csv(input_file: InputFile) -> Iterator[RawBatch | Reject]:
    """Yield raw batches and parse-level rejects for a CSV file with a header line.

    A record whose quoted value opens in the last lines of a block is moved
    to the next block, so a line break inside it is rejected once, as
    anywhere else in the file.
    """
    blocks = LineBlocks(input_file)
    header: list[str] | None = None
    carried, carried_line = b"", 0
    for block in blocks:
        data, first_line, newlines = block.data, block.first_line, block.newlines
        if carried:
            data, first_line, newlines = carried + bytes(data), carried_line, None
            carried = b""
        if header is None:
            header, data, first_line = split_header(data, first_line, input_file.name)
            _check_header_read(blocks, first_line if header is not None else blocks.next_line, input_file.name)
            if header is None:
                continue
            input_file.warnings.extend(_missing_columns_warning(header, input_file.name))
            newlines = None

        if newlines is None:
            newlines = newline_offsets(data)
        odd_lines = odd_quote_lines(data, newlines)
        cut = unclosed_record_start(data, newlines, len(header), odd_lines)
        if cut is not None:
            kept_lines = data.count(b"\n", 0, cut)
            carried, carried_line = bytes(data[cut:]), first_line + kept_lines
            data, newlines, odd_lines = data[:cut], newlines[:kept_lines], odd_lines[odd_lines < kept_lines]
        yield from parse_csv_lines(data, first_line, header, input_file.name, newlines, odd_lines)

    if carried and header is not None:
        yield from parse_csv_lines(carried, carried_line, header, input_file.name)
    yield from blocks.end_rejects()


def odd_quote_lines(data: bytes | bytearray, newlines: np.ndarray) -> np.ndarray:
    """Return the 0-based indexes of the lines of data that contain an odd number of quotes."""
    quotes = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == QUOTE)
    if len(quotes) == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.bincount(np.searchsorted(newlines, quotes)) % 2)


def unclosed_record_start(
    data: bytes | bytearray, newlines: np.ndarray, width: int, odd_lines: np.ndarray
) -> int | None:
    """Return the offset of the line whose quoted record may go on past the end of data, if any.

    The lines with an odd number of quotes are walked as parse_lines_with_csv_module
    reads them. Such a line either completes a record of width columns with
    the lines up to the next odd line, which then belong to it, or is a line of
    its own. Only a line whose MAX_CONTINUATION_LINES following lines run past
    the end of data, with no odd line after it, is undecided, and it moves
    to the next block with the lines after it.
    """
    if not data.endswith(b"\n"):
        return None
    if len(odd_lines) == 0 or odd_lines[-1] < len(newlines) - MAX_CONTINUATION_LINES:
        return None

    def line_start(number: int) -> int:
        return int(newlines[number - 1]) + 1 if number else 0

    def line_bytes(number: int) -> bytes:
        return bytes(data[line_start(number) : int(newlines[number])])

    # Lines up to this one belong to a record with a quoted line break.
    consumed = -1
    for position, line in enumerate(odd_lines.tolist()):
        if line <= consumed:
            continue
        if position + 1 == len(odd_lines):
            return line_start(line)
        following = int(odd_lines[position + 1])
        if following - line > MAX_CONTINUATION_LINES:
            continue
        text = decode_line(line_bytes(line))
        continuation = quoted_line_break_length(
            [line_bytes(number) for number in range(line + 1, following + 1)], 0, text, width
        )
        if continuation:
            consumed = line + continuation
    return None


def _check_header_read(blocks: LineBlocks, data_start: int, source: str) -> None:
    """Raise ReaderError when a line before ``data_start``, the header, was too long to read.

    The line after it would otherwise be taken for the header.
    """
    for line, length in blocks.long_lines:
        if line < data_start:
            raise ReaderError(
                f"{source}:{line}: the CSV header line is {length:,} bytes, longer than the limit of "
                f"{source_module.MAX_LINE_BYTES:,} bytes; check that this is a CSV event file"
            )


def _missing_columns_warning(header: list[str], source: str) -> list[str]:
    """Return a warning naming the required fields the header leaves out, or none."""
    missing = [name for name in REQUIRED_FIELDS if name not in header]
    if not missing:
        return []
    return [
        f"{source}: the CSV header has no column {', '.join(missing)}, which every event needs, so each record is "
        "rejected; add the column (docs/events.md lists the fields)"
    ]


def split_header(data: bytes, first_line: int, source: str) -> tuple[list[str] | None, bytes, int]:
    """Return the header's column names, the data after it and the line number where that data starts."""
    index = index_lines(data, first_line)
    if len(index) == 0:
        return None, b"", first_line

    line = data[index.starts[0] : index.ends[0]]
    try:
        header = next(csv.reader([line.decode("utf-8").rstrip("\r")]))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ReaderError(f"{source}:{index.numbers[0]}: cannot read the CSV header: {error}") from None

    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise ReaderError(f"{source}:{index.numbers[0]}: the CSV header repeats {', '.join(duplicated)}; name each column once")
    padded = [name for name in header if name != name.strip() and name.strip() in INPUT_FIELDS]
    if padded:
        shown = ", ".join(repr(name) for name in padded[:3])
        raise ReaderError(
            f"{source}:{index.numbers[0]}: the CSV header has spaces around column names ({shown}); "
            "remove the spaces after the commas in the header line"
        )

    rest_start = index.ends[0] + 1
    return header, data[rest_start:], int(index.numbers[0]) + 1


def parse_csv_lines(
    data: bytes, first_line: int, header: list[str], source: str, newlines: np.ndarray | None = None,
    odd_lines: np.ndarray | None = None,
) -> Iterator[RawBatch | Reject]:
    """Yield raw batches and rejects for the CSV lines of data, which start at first_line.

    ``newlines`` and ``odd_lines`` (see ``odd_quote_lines``) are computed here when not given.
    """
    numbers = non_blank_line_numbers(data, first_line, newlines)
    if len(numbers) == 0:
        return

    table = parse_with_arrow(data, header) if one_record_per_line(data, newlines, odd_lines) else None
    if table is not None and table.num_rows == len(numbers):
        columns = {name: RawColumn.from_arrow(table.column(name)) for name in table.column_names}
        yield RawBatch(columns, numbers)
        return

    yield from parse_lines_with_csv_module(data, first_line, header, source)


def one_record_per_line(
    data: bytes | bytearray, newlines: np.ndarray | None, odd_lines: np.ndarray | None = None
) -> bool:
    """Return True if no line of data ends in a bare carriage return or contains an odd number of quotes.

    Arrow ends a record at a bare CR and reads a quoted line break as part of a
    value, so it counts records, not lines. Where both happen in one block the
    row count still equals the line count, and every row between them would be
    reported at the wrong line.
    """
    if newlines is None:
        newlines = newline_offsets(data)
    content = np.frombuffer(data, dtype=np.uint8)
    returns = np.flatnonzero(content == CARRIAGE_RETURN)
    following = returns + 1
    inside = following < len(content)
    if (content[following[inside]] != NEWLINE).any():
        return False
    if odd_lines is None:
        odd_lines = odd_quote_lines(data, newlines)
    return len(odd_lines) == 0


def parse_with_arrow(data: bytes, header: list[str]) -> pa.Table | None:
    """Return the contract columns of headerless CSV data as text, or None if Arrow cannot parse it."""
    fields = [name for name in INPUT_FIELDS if name in header]
    read_options = pcsv.ReadOptions(column_names=header, block_size=ARROW_CHUNK_SIZE)
    convert_options = pcsv.ConvertOptions(
        include_columns=fields,
        column_types={name: pa.string() for name in fields},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    try:
        return pcsv.read_csv(pa.py_buffer(data), read_options=read_options, convert_options=convert_options)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def parse_lines_with_csv_module(
    data: bytes, first_line: int, header: list[str], source: str
) -> Iterator[RawBatch | Reject]:
    """Yield one raw batch for the well-formed lines of data, and a reject for every other record.

    A line with an unclosed quote is the start of a record with a quoted line
    break when the lines after it complete a record of the header's width.
    Such a record gets one reject at its first line, and its other lines are
    skipped.
    """
    lines = data.split(b"\n")
    records, numbers, rejects = [], [], []
    position = 0
    while position < len(lines):
        number = first_line + position
        line = lines[position]
        position += 1
        if not line.strip():
            continue
        text = decode_line(line)

        if text.count('"') % 2:
            continuation = quoted_line_break_length(lines, position, text, len(header))
            if continuation:
                position += continuation
                reason = (
                    f"a quoted value has a line break (lines {number}-{number + continuation}), which is not "
                    "supported; replace line breaks inside values"
                )
                rejects.append(Reject(source, number, "-", reason))
                continue

        if "\r" in text:
            reason = "a carriage return (CR) inside the line; end lines with LF or CRLF, and replace CRs inside values"
            rejects.append(Reject(source, number, "-", reason))
            continue
        try:
            values = next(csv.reader([text]))
        except csv.Error as error:
            rejects.append(Reject(source, number, "-", f"invalid CSV: {error}"))
            continue
        if len(values) != len(header):
            reason = f"expected {len(header)} columns as in the header, got {len(values)}"
            rejects.append(Reject(source, number, "-", reason))
            continue
        # Arrow reads only the contract columns, so bytes that are not UTF-8 elsewhere do not count.
        broken = [] if text.isascii() else [
            name for name, value in zip(header, values) if name in INPUT_FIELDS and has_surrogates(value)
        ]
        if broken:
            rejects.append(Reject(source, number, broken[0], "not valid UTF-8 text; write the log in UTF-8"))
            continue
        records.append({name: value if value != "" else None for name, value in zip(header, values)})
        numbers.append(number)

    batch, _ = batch_from_records(records, numbers, source)
    yield from rejects
    if batch.length:
        yield batch


def decode_line(line: bytes) -> str:
    """Return a line as text without its CR, with bytes that are not UTF-8 kept as surrogates."""
    return line.decode("utf-8", "surrogateescape").rstrip("\r")


def quoted_line_break_length(lines: list[bytes], position: int, text: str, width: int) -> int:
    """Return how many lines from position on complete text, a line with an unclosed quote, into one record.

    Returns 0 when no following lines (up to MAX_CONTINUATION_LINES) close the
    quote into a record of width columns, as with a stray quote in one line.
    """
    quotes = text.count('"')
    parts = [text]
    for count, line in enumerate(lines[position : position + MAX_CONTINUATION_LINES], 1):
        part = decode_line(line)
        parts.append(part)
        quotes += part.count('"')
        if quotes % 2 == 0:
            try:
                values = next(csv.reader(["\n".join(parts)]))
            except csv.Error:
                return 0
            return count if len(values) == width else 0
    return 0
