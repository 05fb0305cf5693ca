"""Hostile and messy input for ``fairuse score``, run as a user types the command.

Each test feeds one kind of bad input: broken records, odd files, odd paths,
odd options, or broken plans and policy files. It then checks a promise of
docs/events.md and docs/decisions.md. A bad record never stops the run and is
rejected with file, line and reason. Nothing valid is lost or counted twice.
An ``sk-`` secret in ``key_id`` is stored nowhere. The run fails, with a clear
message, only when nothing valid was read or too many records were rejected.

Every run writes its database and output files under tmp_path. The
PostgreSQL tests use the scratch database of the ``postgres_url`` fixture on
127.0.0.1 (see conftest.py).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from detector.cli import main

pytestmark = pytest.mark.slow

# 2026-11-23T00:00:00Z as epoch seconds.
T0 = 1795392000
# A value with the shape of an OpenAI project key. It is made up and opens nothing.
SECRET = "sk-proj-Q7x9Lm2Pz4Kd8Vn1Rt6Yw3Hb5Jc0Fg"
FIELDS = [
    "request_id", "ts", "account_id", "key_id", "plan", "endpoint", "model", "prompt_tokens",
    "completion_tokens", "cost", "ip", "user_agent", "status", "latency_ms", "stream", "prompt_hash",
    "country",
]
FAIRUSE_COMMAND = Path(sys.executable).with_name("fairuse")


def make_record(number: int, **changes: object) -> dict:
    """Return a valid gateway record, one minute after the record before it."""
    values = {
        "request_id": f"req-{number:06d}",
        "ts": T0 + 60 * number,
        "account_id": "acct-1",
        "key_id": "key-1",
        "plan": "default",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o",
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "cost": 0.01,
        "ip": "203.0.113.9",
        "user_agent": "openai-python/1.50.0",
        "status": 200,
        "latency_ms": 812.5,
        "stream": True,
        "prompt_hash": "9f86d081884c7d659a2feaa0c55ad015",
        "country": "DE",
    }
    values.update(changes)
    return values


def make_over_budget_records(key_id: str, count: int = 30, **changes: object) -> list[dict]:
    """Return records of one key that spend 1 credit a minute, far over the default plan's 2 an hour.

    The abnormal_cost detector flags such a key, so it is listed among the top
    subjects of the summary.
    """
    return [make_record(number, key_id=key_id, cost=1.0, **changes) for number in range(count)]


def write_jsonl(path: Path, records: list[dict | str]) -> Path:
    """Write records as JSON lines. A str item is written as the line itself."""
    lines = [item if isinstance(item, str) else json.dumps(item) for item in records]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def format_csv(records: list[dict], header: str | None = None, newline: str = "\n") -> str:
    """Return records as CSV with a header line of FIELDS, or the given header line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    if header is None:
        writer.writerow(FIELDS)
    else:
        buffer.write(header + newline)
    for item in records:
        writer.writerow([item.get(name, "") for name in FIELDS])
    return buffer.getvalue()


def format_access_line(
    host: str, second: int, user: str = "-", request: str = "POST /v1/chat/completions HTTP/1.1"
) -> str:
    """Return one Apache/nginx combined log line at 23/Nov/2026 10:MM:SS +0100."""
    minute, second = divmod(second, 60)
    return (
        f'{host} - {user} [23/Nov/2026:10:{minute:02d}:{second:02d} +0100] "{request}" '
        f'200 5120 "-" "python-requests/2.31"'
    )


@dataclass
class Run:
    """One ``fairuse score`` invocation and where it wrote."""

    result: Result
    out: Path
    database: Path

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def stdout(self) -> str:
        return self.result.stdout

    @property
    def stderr(self) -> str:
        return self.result.stderr

    @property
    def rejects_path(self) -> Path:
        return self.out.with_name("decisions.rejects.txt")

    def rejects(self) -> list[str]:
        """Return the lines of the rejects file, [] when there is none."""
        if not self.rejects_path.exists():
            return []
        return self.rejects_path.read_text("utf-8").splitlines()

    def count(self, label: str) -> int:
        """Return a number from the summary table, such as "records read"."""
        match = re.search(rf"{re.escape(label)}\s*│\s*([\d,]+)", self.stdout)
        assert match, f"summary has no {label!r} row:\n{self.stdout}\n{self.stderr}"
        return int(match.group(1).replace(",", ""))

    def subjects(self) -> list[dict]:
        path = self.out.with_name("decisions.subjects.jsonl")
        return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def score(
    tmp_path: Path, *paths: Path | str, options: tuple = (), out: Path | None = None, model: bool = False
) -> Run:
    """Run ``fairuse score`` in-process with a SQLite database and outputs under tmp_path."""
    out = out or tmp_path / "out" / "decisions.jsonl"
    database = tmp_path / "fairuse.db"
    arguments = ["score", *map(str, paths), "--db", f"sqlite:///{database}", "--out", str(out), *map(str, options)]
    if not model:
        arguments.append("--no-model")
    result = CliRunner().invoke(main, arguments)
    return Run(result, out, database)


def read_database_text(database: Path) -> str:
    """Return every value of every table of a SQLite database as one string."""
    connection = sqlite3.connect(database)
    try:
        tables = [row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")]
        rows = [repr(row) for table in tables for row in connection.execute(f'select * from "{table}"')]
    finally:
        connection.close()
    return "\n".join(rows)


def read_files_text(folder: Path) -> str:
    """Return the content of every file under folder, decoded leniently."""
    return "\n".join(path.read_bytes().decode("utf-8", "replace") for path in folder.rglob("*") if path.is_file())


# Broken records: each is rejected, and the run goes on.


def test_bom_and_crlf_read_fully(tmp_path):
    lines = [json.dumps(make_record(number)) for number in range(40)]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.count("events scored") == 40
    assert run.rejects() == []


def test_nul_byte_line_rejected(tmp_path):
    lines = [json.dumps(make_record(number)) for number in range(40)]
    lines[5] = lines[5].replace('"openai-python', '"openai\x00python')
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert len(run.rejects()) == 1
    assert run.rejects()[0].startswith(f"{events}:6: -: invalid JSON: unexpected control character in string")
    assert run.count("events scored") == 39


def write_with_bytes(tmp_path: Path, row: int, old: bytes, new: bytes) -> Path:
    """Write 40 records as JSON lines, replacing ``old`` by ``new`` in the bytes of record ``row``."""
    lines = [json.dumps(make_record(number)).encode() for number in range(40)]
    lines[row] = lines[row].replace(old, new)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    return events


def test_invalid_utf8_line_rejected(tmp_path):
    events = write_with_bytes(tmp_path, 3, b"openai-python", b"openai\xff\xfepython")

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert [line.split(": ")[0] for line in run.rejects()] == [f"{events}:4"]
    assert run.count("events scored") == 39


@pytest.mark.parametrize("size", [40, 3000], ids=["orjson-path", "arrow-path"])
def test_bad_values_rejected_with_reason(tmp_path, size):
    records: list[dict | str] = [make_record(number) for number in range(size)]
    bad = {
        10: (make_record(10, cost="1e309"), "cost: not a finite number: '1e309'"),
        11: (make_record(11, prompt_tokens=True), "prompt_tokens: a boolean where a number is expected: True"),
        12: (make_record(12, cost=-0.5), "cost: negative: -0.5"),
        13: (make_record(13, ts="2026-13-01"), "ts: not an RFC 3339 time or epoch seconds: '2026-13-01'"),
        14: (make_record(14, ts=(T0 + 14 * 60) * 1000),
             "ts: outside the years 2000-2100 (epoch seconds, not milliseconds): 1795392840000"),
        15: (make_record(15, ts="1999-12-31T23:59:59Z"),
             "ts: outside the years 2000-2100 (check the gateway's clock): '1999-12-31T23:59:59Z'"),
        16: (make_record(16, status=200.5), "status: not a whole number: 200.5"),
        17: (make_record(17, prompt_tokens=2**60), "prompt_tokens: larger than 2**53: 1152921504606846976"),
        18: (make_record(18, user_agent={"a": [[1]]}), "user_agent: not a string: {'a': [[1]]}"),
        19: (json.dumps(make_record(19)).replace('"cost": 0.01', '"cost": NaN'), "cost: not a finite number: nan"),
        20: (json.dumps([make_record(20)]), "-: not a JSON object: got array"),
        21: ("[" * 100_000 + "]" * 100_000, "-: invalid JSON: depth limit exceeded"),
        22: (make_record(22, cost=1e308), "cost: larger than 1,000,000 credits for one request (check the gateway's unit): 1e+308"),
        24: (make_record(24, key_id=" \t"), "key_id: empty or blank string"),
        25: (make_record(25, request_id="\u3000"), "request_id: empty or blank string"),
        23: (make_record(23, latency_ms=2e9), "latency_ms: larger than 86,400,000 ms, a day (check the gateway's unit): 2000000000.0"),
    }
    for number, (value, _) in bad.items():
        records[number] = value
    events = write_jsonl(tmp_path / "events.jsonl", records)

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    rejects = run.rejects()
    assert len(rejects) == len(bad)
    for line, (number, (_, reason)) in zip(rejects, sorted(bad.items())):
        assert line.startswith(f"{events}:{number + 1}: {reason}")
    assert run.count("events scored") == size - len(bad)


def test_jsonl_merged_and_split_lines_rejected(tmp_path):
    # Two objects on one line and one object over two lines leave Arrow's row count equal to the line count.
    lines = [json.dumps(make_record(number)) for number in range(600)]
    lines[49] = json.dumps(make_record(49)) + json.dumps(make_record(900))
    lines[69] = json.dumps(make_record(69, cost=-1))
    broken = json.dumps(make_record(99))
    lines[99], lines[100] = broken[:80], broken[80:]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert [line.split(": ")[0] for line in run.rejects()] == [f"{events}:{number}" for number in (50, 70, 100, 101)]
    assert run.rejects()[1].endswith("cost: negative: -1")
    assert run.count("events scored") == 596


@pytest.mark.parametrize("size", [40, 3000], ids=["orjson-path", "arrow-path"])
def test_odd_unknown_fields_accepted_on_every_path(tmp_path, size):
    # Arrow skips fields outside the contract unread, so lines it parses with such values are read.
    # Near a broken line the block is parsed line by line, and the verdict must stay the same.
    lines = [json.dumps(make_record(number)).encode() for number in range(size)]
    odd = [b'"x": NaN', b'"x": -Infinity', b'"x": "caf\xe9"', b'"x": [Infinity, {"y": NaN}]']
    rows = [5, 6, 7, 8, size - 30, size - 29, size - 28, size - 27]
    for row, extra in zip(rows, odd + odd):
        lines[row] = lines[row][:-1] + b", " + extra + b"}"
    lines[size - 26] = b'{"request_id": '
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert [line.split(": ")[0] for line in run.rejects()] == [f"{events}:{size - 25}"]
    assert run.count("events scored") == size - 1


def test_invalid_utf8_in_contract_field_named(tmp_path):
    events = write_with_bytes(tmp_path, 3, b'"key-1"', b'"key-\xe9"')

    run = score(tmp_path, events)

    assert run.rejects() == [f"{events}:4: key_id: not valid UTF-8 text; write the log in UTF-8"]


@pytest.mark.parametrize("size", [40, 3000], ids=["orjson-path", "arrow-path"])
def test_lone_surrogate_escape_rejected_not_crash(tmp_path, size):
    lines = [json.dumps(make_record(number)) for number in range(size)]
    lines[3] = lines[3].replace('"openai-python/1.50.0"', '"a\\ud800b"')
    lines[4] = lines[4].replace('"key-1"', '"key-\\udfff"')
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.rejects() == [
        f"{events}:4: user_agent: not valid UTF-8 text; write the log in UTF-8",
        f"{events}:5: key_id: not valid UTF-8 text; write the log in UTF-8",
    ]
    assert run.count("events scored") == size - 2


def test_json_reasons_for_infinity_and_cr(tmp_path):
    lines = [json.dumps(make_record(number)) for number in range(40)]
    lines[2] = lines[2].replace('"cost": 0.01', '"cost": 1e400')
    lines[5] = lines[5] + "\r" + lines[6]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")

    run = score(tmp_path, events)

    # 1e400 is read as an infinity on every path, as NaN is, and the cost check rejects it.
    assert run.rejects()[0] == f"{events}:3: cost: not a finite number: inf"
    assert run.rejects()[1].startswith(f"{events}:6: -: invalid JSON: unexpected content after document")
    assert "convert them to LF" in run.rejects()[1]


def test_numbers_and_flags_as_strings_accepted(tmp_path):
    records = [make_record(number) for number in range(40)]
    records[3] = make_record(3, ts=str(T0 + 180), prompt_tokens="100", cost="0.5", status="200", stream="TRUE")
    events = write_jsonl(tmp_path / "events.jsonl", records)

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.rejects() == []
    assert run.count("events scored") == 40


def test_fifty_megabyte_user_agent_cut_and_request_kept(tmp_path):
    records: list[dict | str] = [make_record(number) for number in range(2000)]
    records[1000] = make_record(1000, user_agent="x" * (50 << 20))
    events = write_jsonl(tmp_path / "events.jsonl", records)

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.rejects() == []
    assert run.count("events scored") == 2000


def test_counts_add_up_on_messy_file(tmp_path):
    records: list[dict | str] = [make_record(number) for number in range(300)]
    records[7] = "{not json"
    records[8] = make_record(8, cost=-1)
    records += [make_record(number) for number in range(20, 40)]  # repeated request_ids
    records += ["", "   "]  # Blank lines are not records.
    events = write_jsonl(tmp_path / "events.jsonl", records)

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.count("records read") == 320
    assert run.count("records rejected") == 2
    assert run.count("duplicate request_id") == 20
    assert run.count("events scored") == 298


def test_duplicate_request_id_keeps_first(tmp_path):
    records = [make_record(number) for number in range(40)]
    records.append(make_record(5, key_id="key-other", cost=9.0))
    events = write_jsonl(tmp_path / "events.jsonl", records)

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.count("duplicate request_id") == 1
    assert run.count("events scored") == 40
    assert [subject["subject"] for subject in run.subjects()] == ["key-1"]


def test_hour_only_time_rejected_in_bulk(tmp_path):
    # A batch whose ts values all have one style is parsed by one Arrow cast,
    # any other batch value by value. The value-by-value path rejects
    # "2026-11-23T10Z", so the cast path must reject it too.
    valid = write_jsonl(tmp_path / "valid.jsonl", [make_record(number) for number in range(300)])
    hour_only = write_jsonl(
        tmp_path / "hour_only.jsonl", [make_record(1000 + number, ts="2026-11-23T10Z") for number in range(300)]
    )

    run = score(tmp_path, valid, hour_only)

    assert run.exit_code == 0, run.stderr
    assert run.count("records rejected") == 300


# Secrets in key_id: hashed before anything is stored, shown nowhere.


def test_secret_key_stored_nowhere(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", make_over_budget_records(SECRET))

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert "key_id values looked like API key secrets" in run.stderr
    assert SECRET not in run.stdout + run.stderr
    assert SECRET not in read_database_text(run.database)
    assert SECRET not in read_files_text(run.out.parent)
    assert any(subject["subject"].startswith("sha256:") for subject in run.subjects())


@pytest.mark.parametrize("size", [40, 3000], ids=["orjson-path", "arrow-path"])
def test_secret_inside_request_ids_keeps_them_distinct(tmp_path, size):
    records = [make_record(number) for number in range(size)]
    records[1]["request_id"] = f"req-1 {SECRET}"
    records[2]["request_id"] = f"req-2 {SECRET}"
    records[3]["request_id"] = f"Bearer {SECRET}"
    events = write_jsonl(tmp_path / "events.jsonl", records)

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.count("events scored") == size
    assert SECRET not in read_database_text(run.database)
    assert SECRET not in read_files_text(run.out.parent)


def test_secret_with_trailing_newline_hashed(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", make_over_budget_records(SECRET + "\n"))

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert SECRET not in read_database_text(run.database)
    assert SECRET not in read_files_text(run.out.parent)


def test_bearer_prefixed_secret_hashed(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", make_over_budget_records("Bearer " + SECRET))

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert SECRET not in read_database_text(run.database)
    assert SECRET not in read_files_text(run.out.parent)


def test_non_string_secret_not_echoed(tmp_path):
    records: list[dict] = [make_record(number) for number in range(40)]
    records.append(make_record(40, key_id=[SECRET]))
    events = write_jsonl(tmp_path / "events.jsonl", records)

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert len(run.rejects()) == 1
    assert SECRET not in run.rejects()[0]


def test_secret_after_escaped_character_not_echoed(tmp_path):
    # A reject shows the repr of the value, where "\n" puts a letter right before the secret.
    records: list[dict | str] = [make_record(number) for number in range(40)]
    records[1] = make_record(1, ts="\n" + SECRET)
    records[2] = make_record(2, cost="\u200b" + SECRET)
    records[3] = json.dumps(make_record(3))[:-1] + f', "{SECRET}": NaN, "x": }}'
    events = write_jsonl(tmp_path / "events.jsonl", records)

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert len(run.rejects()) == 3
    assert SECRET not in "\n".join(run.rejects())


def test_access_log_secret_user_not_stored(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("".join(format_access_line("198.51.100.7", second, user=SECRET) + "\n" for second in range(200)))

    run = score(tmp_path, log)

    assert run.exit_code == 0, run.stderr
    assert "key_id values looked like API key secrets" in run.stderr
    assert SECRET not in read_database_text(run.database)
    assert SECRET not in read_files_text(run.out.parent)


def test_access_log_reject_hides_secret_user(tmp_path):
    lines = [format_access_line("198.51.100.7", second, user=SECRET) for second in range(50)]
    lines.append(lines[0].removesuffix(' "python-requests/2.31"'))  # The user agent field is missing.
    log = tmp_path / "access.log"
    log.write_text("".join(line + "\n" for line in lines))

    run = score(tmp_path, log)

    assert run.exit_code == 0, run.stderr
    assert len(run.rejects()) == 1
    assert SECRET not in run.rejects()[0]


# Values printed in the summary are data, not console markup or terminal codes.


def test_markup_in_key_id_does_not_crash(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", make_over_budget_records("[/bold]"))

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.result.exception
    assert "key:[/bold]" in run.stdout


def test_markup_in_key_id_printed_literally(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", make_over_budget_records("[red]key-1[/red]"))

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.result.exception
    assert "key:[red]key-1[/red]" in run.stdout


def test_markup_in_plan_does_not_crash(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", make_over_budget_records("key-1", plan="[/x]"))

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.result.exception


def test_terminal_escape_in_key_id_not_printed(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", make_over_budget_records("key\x1b[2J\x1b]0;title\x07"))

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.result.exception
    assert "\x1b" not in run.stdout


def test_brackets_in_out_path_printed_literally(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", [make_record(number) for number in range(40)])
    out = tmp_path / "run [old]" / "decisions.jsonl"

    run = score(tmp_path, events, out=out)

    assert run.exit_code == 0, run.result.exception
    assert f"decisions: {out}" in run.stdout


# Formats, compression and format detection.


def test_csv_quoted_comma_bom_crlf_read(tmp_path):
    records = [make_record(number) for number in range(40)]
    records[3]["user_agent"] = 'Mozilla/5.0 (X11, Linux), "quoted"'
    events = tmp_path / "events.csv"
    events.write_bytes(b"\xef\xbb\xbf" + format_csv(records, newline="\r\n").encode())

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.rejects() == []
    assert run.count("events scored") == 40


def test_csv_quoted_line_break_counted_once(tmp_path):
    records = [make_record(number) for number in range(40)]
    records[4]["user_agent"] = "line one\nline two"
    events = tmp_path / "events.csv"
    events.write_text(format_csv(records))

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.count("records read") == 40
    assert len(run.rejects()) == 1


def test_gzip_csv_missing_column_named(tmp_path):
    records = [make_record(number) for number in range(40)]
    header = ",".join(name for name in FIELDS if name != "cost")
    rows = [{name: value for name, value in item.items() if name != "cost"} for item in records]
    buffer = io.StringIO()
    buffer.write(header + "\n")
    csv.writer(buffer, lineterminator="\n").writerows([[row[name] for name in FIELDS if name != "cost"] for row in rows])
    events = tmp_path / "events.csv.gz"
    events.write_bytes(gzip.compress(buffer.getvalue().encode()))

    run = score(tmp_path, events)

    assert run.exit_code == 2
    assert "no valid records" in run.stderr
    assert f"{events}:2: cost: missing required field" in run.stderr
    assert len(run.rejects()) == 40


def test_spaced_csv_header_error_explains(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text(format_csv([make_record(number) for number in range(40)], header=", ".join(FIELDS)))

    run = score(tmp_path, events)

    assert run.exit_code == 2
    assert "header" in run.stderr.replace(str(tmp_path), "FOLDER"), run.stderr


def test_truncated_gzip_keeps_complete_lines(tmp_path):
    data = "".join(json.dumps(make_record(number)) + "\n" for number in range(500)).encode()
    compressed = gzip.compress(data)
    events = tmp_path / "events.jsonl.gz"
    events.write_bytes(compressed[: len(compressed) // 2])

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert "truncated gzip stream" in run.stderr
    assert len(run.rejects()) == 1
    assert "truncated gzip stream" in run.rejects()[0]
    assert run.count("events scored") == run.count("records read") - 1
    assert run.count("events scored") > 100


def test_gzip_bad_checksum_keeps_records(tmp_path):
    data = "".join(json.dumps(make_record(number)) + "\n" for number in range(500)).encode()
    damaged = bytearray(gzip.compress(data))
    damaged[-8] ^= 0xFF  # Only the CRC-32 in the gzip trailer is wrong, and the deflate data is intact.
    events = tmp_path / "events.jsonl.gz"
    events.write_bytes(bytes(damaged))

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.count("events scored") == 500


def test_plain_file_named_gz_read(tmp_path):
    events = tmp_path / "events.jsonl.gz"
    write_jsonl(events, [make_record(number) for number in range(40)])

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.count("events scored") == 40


def test_parquet_wrong_column_types_rejected(tmp_path):
    records = [make_record(number) for number in range(100)]
    columns = {name: [item[name] for item in records] for name in FIELDS}
    columns["cost"] = [str(value) for value in columns["cost"]]
    columns["cost"][5] = "abc"
    columns["status"] = [True] * 100
    events = tmp_path / "events.parquet"
    pq.write_table(pa.table(columns), events)

    run = score(tmp_path, events)

    assert run.exit_code == 2
    assert "no valid records" in run.stderr
    assert f"{events}:1: status: a boolean where a number is expected: True" in run.rejects()
    assert f"{events}:6: cost: not a number: 'abc'" in run.rejects()


def test_parquet_null_images_counts_as_missing(tmp_path):
    # A null field counts as missing, and a missing images field defaults to 0,
    # whatever Arrow type the all-null column was written with.
    records = [make_record(number) for number in range(100)]
    columns = {name: [item[name] for item in records] for name in FIELDS}
    columns["images"] = pa.array([None] * 100, type=pa.bool_())
    events = tmp_path / "events.parquet"
    pq.write_table(pa.table(columns), events)

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.rejects() == []
    assert run.count("events scored") == 100


def test_gzip_parquet_without_extension_detected(tmp_path):
    records = [make_record(number) for number in range(100)]
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    events = tmp_path / "events"
    events.write_bytes(gzip.compress(buffer.getvalue().to_pybytes()))

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.stderr
    assert run.count("events scored") == 100


def test_mixed_formats_in_one_call(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [make_record(number) for number in range(50)])
    csv_gz = tmp_path / "b.csv.gz"
    csv_gz.write_bytes(gzip.compress(format_csv([make_record(number) for number in range(50, 100)]).encode()))
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([make_record(number) for number in range(100, 150)]), parquet)
    log = tmp_path / "d.log"
    log.write_text("".join(format_access_line("198.51.100.7", second) + "\n" for second in range(50)))

    run = score(tmp_path, jsonl, csv_gz, parquet, log)

    assert run.exit_code == 0, run.stderr
    assert run.count("records read") == 200
    assert run.count("events scored") == 200


def test_format_option_overrides_detection(tmp_path):
    events = write_jsonl(tmp_path / "events.csv", [make_record(number) for number in range(40)])

    run = score(tmp_path, events, options=("--format", "jsonl"))

    assert run.exit_code == 0, run.stderr
    assert run.count("events scored") == 40


def test_access_log_odd_lines_handled(tmp_path):
    lines = [
        format_access_line("2001:db8::1", 0),
        format_access_line("::ffff:192.0.2.1", 1),
        format_access_line("198.51.100.7", 2, request=""),
        format_access_line("198.51.100.7", 3, request="\\x16\\x03\\x01\\x00"),
        format_access_line("not-an-address", 4),
        format_access_line("198.51.100.7", 5, request="GET " + "/a" * 400 + " HTTP/1.1"),
        "garbage that is no log line",
    ]
    log = tmp_path / "access.log"
    log.write_text("".join(line + "\n" for line in lines))

    run = score(tmp_path, log)

    assert run.exit_code == 0, run.stderr
    # The 800-character path is cut, not rejected: its request still counts.
    assert [line.split(": ")[1] for line in run.rejects()] == ["ip", "-"]
    assert run.count("events scored") == 5


def test_access_log_impossible_times_rejected(tmp_path):
    good = format_access_line("198.51.100.7", 0)
    lines = [
        good,
        good.replace("23/Nov/2026", "31/Feb/2026"),
        good.replace("23/Nov/2026", "29/Feb/2028"),
        good.replace("23/Nov/2026", "29/Feb/2026"),
        good.replace("+0100", "+2500"),
        good.replace("+0100", "-0075"),
        good.replace("23/Nov/2026", "31/Apr/2026"),
        good.replace("23/Nov/2026", "00/Nov/2026"),
        good.replace("23/Nov/2026", "31/February/2026"),
        good.replace("+0100", "+25:00"),
        good.replace("10:00:00", "10:00:61"),
    ] + [format_access_line("198.51.100.7", second) for second in range(1, 9)]
    log = tmp_path / "access.log"
    log.write_text("".join(line + "\n" for line in lines))

    run = score(tmp_path, log)

    assert run.exit_code == 0, run.stderr
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in run.rejects()] == ["2", "4", "5", "6", "7", "8", "9", "10", "11"]
    assert all(": ts: not a valid time in dd/Mon/yyyy" in line for line in run.rejects())
    assert run.count("events scored") == 10


def test_same_named_access_logs_scored(tmp_path):
    # Two web servers each write an access.log, and their lines are different requests.
    for server, host in (("web1", "198.51.100.7"), ("web2", "203.0.113.50")):
        (tmp_path / server).mkdir()
        log = tmp_path / server / "access.log"
        log.write_text("".join(format_access_line(host, second) + "\n" for second in range(100)))

    run = score(tmp_path, tmp_path / "web1" / "access.log", tmp_path / "web2" / "access.log")

    assert run.exit_code == 0, run.stderr
    assert run.count("duplicate request_id") == 0
    assert run.count("events scored") == 200


def test_access_log_ipv6_subject_canonical(tmp_path):
    # One client address written two ways. The ip field stores 2001:db8::1 for both.
    lines = [format_access_line("2001:db8::1", second) for second in range(10)]
    lines += [format_access_line("2001:0DB8::0001", second) for second in range(10, 20)]
    log = tmp_path / "access.log"
    log.write_text("".join(line + "\n" for line in lines))

    run = score(tmp_path, log)

    assert run.exit_code == 0, run.stderr
    assert [subject["subject"] for subject in run.subjects()] == ["2001:db8::1"]


# Odd paths.


def test_directory_path_fails_clearly(tmp_path):
    run = score(tmp_path, tmp_path)

    assert run.exit_code == 2
    assert f"{tmp_path}: is a directory" in run.stderr


def test_missing_second_path_fails_clearly(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", [make_record(number) for number in range(40)])

    run = score(tmp_path, events, tmp_path / "missing.jsonl")

    assert run.exit_code == 2
    assert f"{tmp_path / 'missing.jsonl'}: file not found" in run.stderr


def test_dev_null_only_input_fails(tmp_path):
    run = score(tmp_path, "/dev/null")

    assert run.exit_code == 2
    assert "no valid records" in run.stderr


def test_empty_file_error_names_file(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("")

    run = score(tmp_path, events)

    assert run.exit_code == 2
    assert str(events) in run.stderr


def test_fifo_input_read_completely(tmp_path):
    # Process substitution, as in `fairuse score <(zcat events.jsonl.gz)`, passes such a pipe.
    source = write_jsonl(tmp_path / "source.jsonl", [make_record(number) for number in range(3000)])
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f'cat "{source}" > "{fifo}"'])
    command = [str(FAIRUSE_COMMAND), "score", str(fifo), "--db", f"sqlite:///{tmp_path / 'fairuse.db'}",
               "--out", str(tmp_path / "out" / "decisions.jsonl"), "--no-model"]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("fairuse score did not finish reading the FIFO within 120 s")
    finally:
        writer.kill()
        writer.wait()

    assert completed.returncode == 0, completed.stderr
    assert re.search(r"records read\s*│\s*3,000", completed.stdout), completed.stdout
    assert not (tmp_path / "out" / "decisions.rejects.txt").exists()


def test_out_directory_fails_clearly(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", [make_record(number) for number in range(40)])
    folder = tmp_path / "existing"
    folder.mkdir()

    run = score(tmp_path, events, out=folder)

    assert run.exit_code == 2, run.result.exception
    assert str(folder) in run.stderr


def test_rejects_path_on_input_keeps_input(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", [make_record(number) for number in range(40)] + [make_record(40, cost=-1)])
    before = events.read_bytes()

    score(tmp_path, events, options=("--rejects", events))

    assert events.read_bytes() == before


def test_clean_rerun_removes_stale_rejects(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [make_record(number) for number in range(40)] + [make_record(40, cost=-1)])
    clean = write_jsonl(tmp_path / "clean.jsonl", [make_record(number) for number in range(40)])
    first = score(tmp_path, bad)
    assert first.rejects_path.exists()

    second = score(tmp_path, clean)

    assert second.exit_code == 0, second.stderr
    assert not second.rejects_path.exists(), second.rejects_path.read_text()


# --max-reject-ratio.


def write_one_percent_rejected(tmp_path: Path) -> Path:
    records = [make_record(number) for number in range(1000)]
    for number in range(0, 1000, 100):
        records[number] = make_record(number, cost=-1)
    return write_jsonl(tmp_path / "events.jsonl", records)


def test_reject_ratio_zero_fails_any_reject(tmp_path):
    run = score(tmp_path, write_one_percent_rejected(tmp_path), options=("--max-reject-ratio", "0"))

    assert run.exit_code == 2
    assert "10 of 1000 records were rejected" in run.stderr
    assert "Fix the input or raise the ratio" in run.stderr


def test_reject_ratio_zero_passes_clean_input(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", [make_record(number) for number in range(40)])

    run = score(tmp_path, events, options=("--max-reject-ratio", "0"))

    assert run.exit_code == 0, run.stderr


def test_reject_ratio_one_allows_most(tmp_path):
    records = [make_record(number, cost=-1) for number in range(100)]
    records[50] = make_record(50)
    events = write_jsonl(tmp_path / "events.jsonl", records)

    run = score(tmp_path, events, options=("--max-reject-ratio", "1"))

    assert run.exit_code == 0, run.stderr
    assert run.count("records rejected") == 99


def test_reject_ratio_nan_is_usage_error(tmp_path):
    run = score(tmp_path, write_one_percent_rejected(tmp_path), options=("--max-reject-ratio", "nan"))

    assert run.exit_code == 2
    assert "--max-reject-ratio" in run.stderr


def test_reject_ratio_message_shows_given_value(tmp_path):
    run = score(tmp_path, write_one_percent_rejected(tmp_path), options=("--max-reject-ratio", "0.004"))

    assert run.exit_code == 2
    assert "0.004" in run.stderr or "0.4%" in run.stderr, run.stderr


def test_reject_ratio_message_counts_consistent(tmp_path):
    records = [make_record(number) for number in range(10)] * 5  # 40 repeated request_ids.
    records += [make_record(100 + number, cost=-1) for number in range(4)]
    events = write_jsonl(tmp_path / "events.jsonl", records)

    run = score(tmp_path, events, options=("--max-reject-ratio", "0.2"))

    assert run.exit_code == 2
    match = re.search(r"(\d+) of (\d+) records were rejected \(([\d.]+)%\)", run.stderr)
    assert match, run.stderr
    rejected, total, percent = int(match.group(1)), int(match.group(2)), float(match.group(3))
    assert abs(100 * rejected / total - percent) < 0.1, run.stderr


# Plans and policy files.


def write_small_input(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "events.jsonl", [make_record(number) for number in range(40)])


RULE = (
    '[[rules]]\nname = "r"\nreason = "automation"\nmin_score = 60\nmin_impact = 1.5\n'
    'action = "review"\nduration = "1h"\n'
)


def test_policy_invalid_toml_fails_clearly(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[[rules]\nname = 1\n")

    run = score(tmp_path, write_small_input(tmp_path), options=("--policy", policy))

    assert run.exit_code == 2
    assert f"{policy}: invalid TOML" in run.stderr


@pytest.mark.parametrize(
    "text",
    [
        'rules = "review everything"\n',
        "policy = 5\n" + RULE,
        'allowlist = ["key:key-1"]\n' + RULE,
        RULE.replace("min_score = 60", 'min_score = "high"'),
        '[policy]\nrepeat_factor = "twice"\n' + RULE,
        RULE.replace('duration = "1h"', 'duration = "999999999999d"'),
    ],
    ids=["rules-string", "policy-number", "allowlist-array", "min-score-string", "repeat-factor-string",
         "duration-overflow"],
)
def test_policy_wrong_types_fail_clearly(tmp_path, text):
    policy = tmp_path / "policy.toml"
    policy.write_text(text)

    run = score(tmp_path, write_small_input(tmp_path), options=("--policy", policy))

    assert run.exit_code == 2, run.result.exception
    assert str(policy) in run.stderr


def test_policy_negative_repeat_factor_rejected(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[policy]\nrepeat_factor = -2.0\n" + RULE)

    run = score(tmp_path, write_small_input(tmp_path), options=("--policy", policy))

    assert run.exit_code == 2
    assert "repeat_factor" in run.stderr


@pytest.mark.parametrize("option", ["--plans", "--policy"])
def test_config_not_utf8_fails_clearly(tmp_path, option):
    config = tmp_path / "config.toml"
    config.write_bytes(b"\xff\xfe\x00[plans]")

    run = score(tmp_path, write_small_input(tmp_path), options=(option, config))

    assert run.exit_code == 2, run.result.exception
    assert str(config) in run.stderr


def test_plans_nan_budget_rejected(tmp_path):
    plans = tmp_path / "plans.toml"
    plans.write_text(
        '[plans.default]\nkind = "text"\nweekly_images = 10\nhourly_budget = nan\n'
        "daily_budget = 15.0\nexpected_rph = 120\n"
    )

    run = score(tmp_path, write_small_input(tmp_path), options=("--plans", plans))

    assert run.exit_code == 2
    assert "hourly_budget" in run.stderr


def test_plans_without_default_fails_clearly(tmp_path):
    plans = tmp_path / "plans.toml"
    plans.write_text('[plans.pro]\nkind = "text"\nweekly_images = 10\nhourly_budget = 2.0\n'
                     "daily_budget = 15.0\nexpected_rph = 120\n")

    run = score(tmp_path, write_small_input(tmp_path), options=("--plans", plans))

    assert run.exit_code == 2
    assert "plan 'default' is missing" in run.stderr


# Time order, equal times and storage.


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    """Two simulated days of 40 keys, with abuse that yields decisions."""
    folder = tmp_path_factory.mktemp("traffic")
    result = CliRunner().invoke(main, ["simulate", str(folder), "--keys", "40", "--days", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    return folder / "events.jsonl"


def read_decision_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_same_input_twice_adds_no_decisions(tmp_path, traffic):
    first = score(tmp_path, traffic, out=tmp_path / "first" / "decisions.jsonl", model=True)
    second = score(tmp_path, traffic, out=tmp_path / "second" / "decisions.jsonl", model=True)

    assert first.exit_code == 0, first.stderr
    assert second.exit_code == 0, second.stderr
    assert read_decision_ids(first.out)
    assert read_decision_ids(second.out) == read_decision_ids(first.out)
    stored = sqlite3.connect(first.database).execute("select count(*) from decisions").fetchone()[0]
    assert stored == len(read_decision_ids(first.out))


def test_shuffled_input_gives_same_decisions(tmp_path, traffic):
    lines = traffic.read_text().splitlines()
    random.Random(1).shuffle(lines)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(lines) + "\n")

    (tmp_path / "ordered").mkdir()
    (tmp_path / "shuffled").mkdir()
    ordered = score(tmp_path / "ordered", traffic)
    mixed = score(tmp_path / "shuffled", shuffled)

    assert mixed.exit_code == 0, mixed.stderr
    assert read_decision_ids(mixed.out) == read_decision_ids(ordered.out)


def test_equal_timestamps_scored(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", [make_record(number, ts=T0, cost=5.0) for number in range(300)])

    run = score(tmp_path, events)

    assert run.exit_code == 0, run.result.exception
    assert run.count("events scored") == 300


def test_sqlite_evidence_is_standard_json(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", [make_record(number, ts=T0, cost=5.0) for number in range(300)])
    run = score(tmp_path, events)
    assert run.exit_code == 0, run.result.exception

    connection = sqlite3.connect(run.database)
    evidence = [row[0] for row in connection.execute("select evidence from findings")]
    connection.close()

    def reject_constant(name):
        raise ValueError(f"non-standard JSON constant {name}")

    for text in evidence:
        json.loads(text, parse_constant=reject_constant)


def test_equal_timestamps_stored_in_postgres(tmp_path, postgres_url):
    events = write_jsonl(tmp_path / "events.jsonl", [make_record(number, ts=T0, cost=5.0) for number in range(300)])

    result = CliRunner().invoke(main, ["score", str(events), "--db", postgres_url, "--no-model"])

    assert result.exit_code == 0, repr(result.exception)


def test_nul_key_id_stored_in_postgres(tmp_path, postgres_url):
    events = write_jsonl(tmp_path / "events.jsonl", make_over_budget_records("key\x00one"))

    result = CliRunner().invoke(main, ["score", str(events), "--db", postgres_url, "--no-model"])

    assert result.exit_code == 0, repr(result.exception)
