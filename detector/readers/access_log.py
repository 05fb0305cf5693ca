"""Apache/nginx "combined" access-log reader.

Line format: host ident authuser [dd/Mon/yyyy:HH:MM:SS +zzzz] "METHOD path HTTP/x"
status bytes "referer" "user-agent". The subject of a line is the remote user
when the log has one, else the client address in canonical spelling: key_id and
account_id both take it, and subject_type records which ("key" or "ip"). Fields
a web server does not log get fixed values (plan "default", no model, tokens,
cost or latency).

A line's request_id is "<base name>@<path hash>:<line number>", such as
"access.log@3f9a2c1e:812". Both parts come from the file's absolute path with
symlinks resolved and without ".gz": the path hash is the first 8 hex digits of
its SHA-256. So reading the same file again, from any working directory, through
a symlink or after gzip, yields the same ids, and two files named access.log in
different folders do not share ids.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detector.events import Reject
from detector.readers.base import RawBatch
from detector.readers.checks import canonical_ips
from detector.readers.columns import RawColumn, true_mask
from detector.readers.reasons import format_value
from detector.readers.source import InputFile, LineBlocks

# Quoted fields may contain backslash-escaped quotes (\"), as Apache writes them.
# Extra fields after the user agent (common in nginx formats) are ignored.
LINE_PATTERN = (
    r'^(?P<host>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    r'(?P<status>\d{3}) (?:\d+|-) "(?:[^"\\]|\\.)*" "(?P<agent>(?:[^"\\]|\\.)*)"(?:\s.*)?$'
)
TIME_FORMAT = "%d/%b/%Y:%H:%M:%S %z"
# Access logs grow by a line per request, so blocks are smaller than for JSON.
BLOCK_SIZE = 8 << 20


def read_access_log(input_file: InputFile) -> Iterator[RawBatch | Reject]:
    """Yield raw batches and parse-level rejects for a combined access log."""
    id_prefix = request_id_prefix(input_file.name)
    blocks = LineBlocks(input_file, BLOCK_SIZE)
    for block in blocks:
        yield from parse_access_lines(block.data, block.first_line, input_file.name, id_prefix)

    yield from blocks.end_rejects()


def request_id_prefix(name: str) -> str:
    """Return the part of a request_id before the line number: base name and path hash."""
    path = os.path.realpath(name).removesuffix(".gz")
    path_hash = hashlib.sha256(os.fsencode(path)).hexdigest()[:8]
    return f"{os.path.basename(path)}@{path_hash}"


def parse_access_lines(data: bytes, first_line: int, source: str, id_prefix: str) -> Iterator[RawBatch | Reject]:
    """Yield one raw batch for the well-formed lines of data, and a reject for every other line."""
    # Bytes that are not UTF-8 (seen in referers) become U+FFFD, which harms no field the detector uses.
    text = data.decode("utf-8", errors="replace")
    lines = pc.split_pattern(pa.array([text]), "\n").flatten()
    numbers = np.arange(first_line, first_line + len(lines), dtype=np.int64)
    keep = true_mask(pc.not_equal(pc.utf8_length(pc.utf8_trim_whitespace(lines)), 0))
    lines, numbers = lines.filter(pa.array(keep)), numbers[keep]

    fields = pc.extract_regex(pc.utf8_rtrim(lines, characters="\r"), LINE_PATTERN)
    matched = true_mask(fields.is_valid())
    times = pc.strptime(fields.field("time"), format=TIME_FORMAT, unit="s", error_is_null=True)
    dated = true_mask(times.is_valid()) & ~impossible_times(fields.field("time"))

    for row in np.flatnonzero(~matched):
        reason = f"not an Apache/nginx combined log line: {format_value(lines[row].as_py())}"
        yield Reject(source, int(numbers[row]), "-", reason)
    for row in np.flatnonzero(matched & ~dated):
        reason = f"not a valid time in dd/Mon/yyyy:HH:MM:SS +zzzz form: {format_value(fields.field('time')[row].as_py())}"
        yield Reject(source, int(numbers[row]), "ts", reason)

    good = pa.array(matched & dated)
    if good.true_count:
        yield access_batch(fields.filter(good), times.filter(good), numbers[matched & dated], id_prefix)


_TIME_PARTS = (
    r"^(?P<day>\d{2})/(?P<month>[A-Za-z]{3})/(?P<year>\d{4}):\d{2}:\d{2}:(?P<seconds>\d{2}) "
    r"[+-](?P<hours>\d{2})(?P<minutes>\d{2})$"
)
_MONTHS = {name: number for number, name in enumerate(("jan", "feb", "mar", "apr", "may", "jun",
                                                         "jul", "aug", "sep", "oct", "nov", "dec"))}
_DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def impossible_times(texts: pa.Array) -> np.ndarray:
    """Mark times that Arrow's strptime reads but no clock shows, or not in the dd/Mon/yyyy:HH:MM:SS +zzzz form.

    strptime (pyarrow 26) rolls 31/Feb/2026 over to 3 March, accepts an offset
    of +2500 or +25:00, a full month name (31/February), and a second of 61,
    while RFC 3339 times in JSON are checked for all of these. Apache and nginx
    write only the fixed form, so any other spelling is marked too.
    """
    parts = pc.extract_regex(texts, _TIME_PARTS)
    found = true_mask(parts.is_valid())
    impossible = ~found
    if not found.any():
        return impossible

    rows = np.flatnonzero(found)
    chosen = parts.filter(pa.array(found))
    day, year, seconds, hours, minutes = (
        pc.cast(chosen.field(name), pa.int64()).to_numpy() for name in ("day", "year", "seconds", "hours", "minutes")
    )
    months = np.array([_MONTHS.get(name.lower(), -1) for name in chosen.field("month").to_pylist()])
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    longest = _DAYS_IN_MONTH[np.maximum(months, 0)] + ((months == 1) & leap)
    impossible[rows] = (
        (months < 0) | (day < 1) | (day > longest) | (seconds > 60) | (hours > 23) | (minutes > 59)
    )
    return impossible


def access_batch(fields: pa.StructArray, times: pa.Array, numbers: np.ndarray, id_prefix: str) -> RawBatch:
    """Return the raw batch for parsed access-log lines."""
    count = len(numbers)
    # Invalid addresses stay as they are, and the ip check rejects them.
    hosts, _ = canonical_ips(fields.field("host"))
    users = fields.field("user")
    has_user = pc.not_equal(users, "-")
    subjects = pc.if_else(has_user, users, hosts)
    agents = fields.field("agent")

    text = {
        "request_id": pc.binary_join_element_wise(id_prefix, pc.cast(pa.array(numbers), pa.string()), ":"),
        "account_id": subjects,
        "key_id": subjects,
        "plan": constant("default", count),
        "endpoint": request_paths(fields.field("request")),
        "model": constant("", count),
        "ip": hosts,
        "user_agent": pc.if_else(pc.equal(agents, "-"), "", agents),
        "subject_type": pc.if_else(has_user, "key", "ip"),
    }
    fixed_and_numeric = {
        "ts": times,
        "status": pc.cast(fields.field("status"), pa.float64()),
        "prompt_tokens": constant(0.0, count),
        "completion_tokens": constant(0.0, count),
        "images": constant(0.0, count),
        "cost": constant(0.0, count),
        "latency_ms": constant(0.0, count),
        "stream": constant(False, count),
    }
    columns = {name: RawColumn.from_arrow(values) for name, values in {**text, **fixed_and_numeric}.items()}
    return RawBatch(columns, numbers)


def request_paths(requests: pa.Array) -> pa.Array:
    """Return the path of each request line ("GET /a?b HTTP/1.1" -> "/a"), without the query.

    A request that is not "METHOD path ..." (an empty request, a TLS handshake sent
    to a plain-HTTP port) keeps its whole text as the path, or "-" when empty.
    """
    parts = pc.split_pattern(requests, " ", max_splits=2)
    has_path = pc.greater_equal(pc.list_value_length(parts), 2)
    second = pc.list_element(pc.if_else(has_path, parts, pa.scalar(["", ""], type=parts.type)), 1)
    paths = pc.if_else(has_path, second, requests)
    paths = pc.replace_substring_regex(paths, r"\?.*$", "")
    return pc.if_else(pc.equal(paths, ""), "-", paths)


def constant(value: object, count: int) -> pa.Array:
    """Return an Arrow array holding value count times."""
    return pa.repeat(pa.scalar(value), count)
