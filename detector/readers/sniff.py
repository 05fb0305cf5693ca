"""Format detection: from the file name first, from the first line when the name does not tell."""

from __future__ import annotations

import csv
import io
import re

from detector.readers.base import ReaderError
from detector.readers.source import InputFile

FORMATS = ("jsonl", "csv", "parquet", "combined")
FORMAT_CHOICES = "|".join(FORMATS)
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
PARQUET_MAGIC = b"PAR1"
# Lines after a first line that fits no format, which then decide the format.
SNIFF_LINES = 6
# Start of an Apache/nginx access-log line: client, ident, user, [time] and the quoted request.
ACCESS_LOG_START = re.compile(rb'^\S+ \S+ \S+ \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "')


def resolve_format(input_file: InputFile, requested: str | None) -> str:
    """Return the format to read input_file as: requested, else from its name, else its content."""
    if requested is not None:
        if requested not in FORMATS:
            raise ReaderError(f"unknown format {requested!r}; use one of {FORMAT_CHOICES}")
        return requested

    from_name = format_from_name(input_file.name)
    if from_name is not None:
        return from_name

    head = input_file.head()
    from_content = format_from_content(head)
    if from_content is not None:
        return from_content
    if not head.strip():
        return "jsonl"  # an empty file has no records in any format
    raise ReaderError(
        f"{input_file.name}: cannot tell the format from the name or content; pass --format {FORMAT_CHOICES}"
    )


def format_from_name(name: str) -> str | None:
    """Return the format that a file name's extension (before any .gz) names, or None."""
    lowered = name.lower().removesuffix(".gz")
    for extension, format_name in EXTENSIONS.items():
        if lowered.endswith(extension):
            return format_name
    return None


def format_from_content(head: bytes) -> str | None:
    """Return the format that the first bytes of a file look like, or None.

    A log copied from the middle of a file can start with the end of a line.
    So when the first line fits no format, the next complete lines decide,
    if they all look like JSON objects or all like access-log lines. The cut
    line is then rejected like any other bad line.
    """
    if head.startswith(PARQUET_MAGIC):
        return "parquet"

    lines = non_blank_lines(head.removeprefix(b"\xef\xbb\xbf"))
    if not lines:
        return None
    first = lines[0]
    if b"," in first and "request_id" in csv_header(first):
        return "csv"
    found = line_format(first)
    if found is not None:
        return found
    later = {line_format(line) for line in lines[1:SNIFF_LINES]}
    return later.pop() if len(later) == 1 else None


def line_format(line: bytes) -> str | None:
    """Return "jsonl" or "combined" when one line looks like that format, else None."""
    if line.startswith(b"{"):
        return "jsonl"
    if ACCESS_LOG_START.match(line):
        return "combined"
    return None


def non_blank_lines(head: bytes) -> list[bytes]:
    """Return the lines of head that are not blank, stripped, leaving out a last line the head may have cut."""
    pieces = head.split(b"\n")
    if not head.endswith(b"\n") and len(pieces) > 1:
        pieces = pieces[:-1]
    return [piece.strip() for piece in pieces if piece.strip()]


def csv_header(line: bytes) -> list[str]:
    """Return the column names of a CSV header line, or [] if it is not valid UTF-8 CSV."""
    try:
        text = line.decode("utf-8")
        return next(csv.reader(io.StringIO(text)), [])
    except (UnicodeDecodeError, csv.Error):
        return []
