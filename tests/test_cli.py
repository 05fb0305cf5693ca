"""End-to-end runs of the ``fairuse`` command, as a user types it."""

import json
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from detector.cli import main
from tests.factories import record

SAMPLE = Path(__file__).resolve().parents[1] / "detector" / "samples" / "events-sample.jsonl.gz"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    """A small simulated week with every behaviour kind."""
    folder = tmp_path_factory.mktemp("traffic")
    result = CliRunner().invoke(main, ["simulate", str(folder), "--keys", "120", "--days", "7", "--seed", "5"])
    assert result.exit_code == 0, result.output
    return folder


def _score(*arguments):
    return CliRunner().invoke(main, ["score", *map(str, arguments)])


def _lines(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_score_writes_decisions_findings_subjects(traffic, tmp_path):
    out = tmp_path / "out" / "decisions.jsonl"

    result = _score(traffic / "events.jsonl", "--db", f"sqlite:///{tmp_path}/f.db", "--out", out)

    assert result.exit_code == 0, result.output
    assert "records read" in result.output
    decisions = _lines(out)
    assert decisions
    assert {"id", "subject_type", "subject", "action", "reasons", "score", "evidence", "detected_at",
            "created_at", "expires_at", "origin", "simulated"} <= set(decisions[0])
    subjects = _lines(out.with_name("decisions.subjects.jsonl"))
    assert len(subjects) == 120
    assert all(0 <= subject["risk_score"] <= 100 for subject in subjects)
    assert _lines(out.with_name("decisions.findings.jsonl"))


def test_score_with_two_processes_same_output(traffic, tmp_path, monkeypatch):
    from detector import pipeline

    forked_runs = []
    detect_in_processes = pipeline.detect_in_processes

    def recording(*arguments, **options):
        forked_runs.append(options)
        return detect_in_processes(*arguments, **options)

    monkeypatch.setattr(pipeline, "MIN_EVENTS_TO_FORK", 1)
    monkeypatch.setattr(pipeline, "detect_in_processes", recording)
    # Earlier tests in this process can leave an idle library thread (LiteLLM's logging pool), which makes
    # can_fork() refuse. The forked children run only detectors, which never touch that pool.
    monkeypatch.setattr(pipeline, "can_fork", lambda: True)
    single_out, forked_out = tmp_path / "one.jsonl", tmp_path / "two.jsonl"

    first = _score(traffic / "events.jsonl", "--db", f"sqlite:///{tmp_path}/one.db", "--out", single_out)
    assert forked_runs == []
    second = _score(traffic / "events.jsonl", "--db", f"sqlite:///{tmp_path}/two.db", "--out", forked_out, "--processes", "2")

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert len(forked_runs) == 1
    for name in ("one.findings.jsonl", "one.subjects.jsonl"):
        assert (tmp_path / name).read_bytes() == (tmp_path / name.replace("one", "two")).read_bytes()
    without_created = [
        [{**decision, "created_at": None} for decision in _lines(path)] for path in (single_out, forked_out)
    ]
    assert without_created[0] == without_created[1]


def test_score_twice_adds_no_decisions(traffic, tmp_path):
    database = f"sqlite:///{tmp_path}/f.db"
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"

    _score(traffic / "events.jsonl", "--db", database, "--out", first_out)
    result = _score(traffic / "events.jsonl", "--db", database, "--out", second_out)

    assert result.exit_code == 0, result.output
    first_ids = [decision["id"] for decision in _lines(first_out)]
    assert [decision["id"] for decision in _lines(second_out)] == first_ids
    count = create_engine(database).connect().execute(text("select count(*) from decisions")).scalar()
    assert count == len(first_ids)


def test_bad_records_rejected_run_continues(tmp_path, traffic):
    source = (traffic / "events.jsonl").read_text().splitlines()[:500]
    source[10] = source[10].replace('"ts":"2026-11-23T', '"ts":"2026-13-01T')
    source[20] = "{not json"
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(source) + "\n")
    out = tmp_path / "decisions.jsonl"

    result = _score(events, "--db", f"sqlite:///{tmp_path}/f.db", "--out", out)

    assert result.exit_code == 0, result.output
    rejects = (tmp_path / "decisions.rejects.txt").read_text().splitlines()
    assert len(rejects) == 2
    assert rejects[0].startswith(f"{events}:11: ts: not an RFC 3339 time or epoch seconds: '2026-13-01T")
    assert rejects[1].startswith(f"{events}:21: ")


def test_nothing_valid_fails_with_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = tmp_path / "events.jsonl"
    events.write_text('{"request_id": "a"}\n{"request_id": "b"}\n')

    result = _score(events, "--db", f"sqlite:///{tmp_path}/f.db")

    assert result.exit_code == 2
    assert "no valid records" in result.output
    assert "2 rejected" in result.output
    assert (tmp_path / "fairuse-rejects.txt").read_text().count("\n") == 2


def test_summary_says_when_nothing_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(record(number, ts=1795428000 + 600 * number)) + b"\n" for number in range(3)))

    result = _score(events, "--db", f"sqlite:///{tmp_path}/f.db", "--no-model")

    assert result.exit_code == 0, result.output
    assert "no findings on this input" in result.output
    assert "no decisions on this input" in result.output


def test_csv_missing_column_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = tmp_path / "events.csv"
    events.write_text(
        "request_id,ts,account_id,key_id,plan,endpoint,model,prompt_tokens,completion_tokens,cost,ip,status,stream\n"
        "r1,1795428000,a,k,pro,/v1/chat/completions,m,1,1,0.1,203.0.113.1,200,false\n"
    )

    result = _score(events, "--db", f"sqlite:///{tmp_path}/f.db")

    assert result.exit_code == 2
    assert "the CSV header has no column latency_ms, which every event needs" in result.output


def test_reject_ratio_over_limit_fails(tmp_path, traffic, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = (traffic / "events.jsonl").read_text().splitlines()[:10]
    lines[:4] = ["{}"] * 4
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")

    result = _score(events, "--db", f"sqlite:///{tmp_path}/f.db", "--max-reject-ratio", "0.2")

    assert result.exit_code == 2
    assert "4 of 10 records were rejected" in result.output
    assert "--max-reject-ratio" in result.output


def test_missing_file_names_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _score(tmp_path / "nope.jsonl", "--db", f"sqlite:///{tmp_path}/f.db")

    assert result.exit_code == 2
    assert "nope.jsonl" in result.output


def test_simulate_flag_stores_simulated(traffic, tmp_path):
    out = tmp_path / "decisions.jsonl"

    _score(traffic / "events.jsonl", "--db", f"sqlite:///{tmp_path}/f.db", "--out", out, "--simulate")

    decisions = _lines(out)
    assert decisions
    assert all(decision["simulated"] for decision in decisions)


def test_evaluate_reports_recall_json(traffic, tmp_path):
    out = tmp_path / "decisions.jsonl"
    _score(traffic / "events.jsonl", "--db", f"sqlite:///{tmp_path}/f.db", "--out", out)

    result = CliRunner().invoke(main, ["evaluate", str(traffic / "labels.csv"), str(out), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report


def test_score_into_postgresql(traffic, tmp_path, postgres_url, monkeypatch):
    monkeypatch.setenv("FAIRUSE_DATABASE_URL", postgres_url)

    result = _score(traffic / "events.jsonl", "--out", tmp_path / "decisions.jsonl")

    assert result.exit_code == 0, result.output
    stored = create_engine(postgres_url).connect().execute(text("select count(*) from decisions")).scalar()
    assert stored == len(_lines(tmp_path / "decisions.jsonl"))
    assert stored > 0


def test_unknown_plan_warns(tmp_path, traffic):
    lines = (traffic / "events.jsonl").read_text().splitlines()[:50]
    lines = [re.sub(r'"plan":"[^"]*"', '"plan":"platinum"', line) for line in lines]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")

    result = _score(events, "--db", f"sqlite:///{tmp_path}/f.db")

    assert result.exit_code == 0, result.output
    assert "'platinum'" in result.output
    assert "scored as 'default'" in result.output


def test_unreachable_database_clean_error(traffic, tmp_path):
    result = _score(traffic / "events.jsonl", "--db", "postgresql+psycopg://fairuse:secret@127.0.0.1:1/none")

    assert result.exit_code == 2
    assert "cannot open the database 'postgresql+psycopg://fairuse:***@127.0.0.1:1/none'" in result.output
    assert "secret" not in result.output
    assert "Traceback" not in result.output


def test_rerun_keeps_actions_in_subjects(traffic, tmp_path):
    database = f"sqlite:///{tmp_path}/f.db"
    out = tmp_path / "decisions.jsonl"
    _score(traffic / "events.jsonl", "--db", database, "--out", out)
    first = {row["subject"]: row["actions"] for row in _lines(out.with_name("decisions.subjects.jsonl"))}

    _score(traffic / "events.jsonl", "--db", database, "--out", out)
    second = {row["subject"]: row["actions"] for row in _lines(out.with_name("decisions.subjects.jsonl"))}

    assert any(first.values())
    assert second == first


def test_simulated_run_kept_out_of_real_output(traffic, tmp_path):
    database = f"sqlite:///{tmp_path}/f.db"
    _score(traffic / "events.jsonl", "--db", database, "--out", tmp_path / "simulated.jsonl", "--simulate")

    result = _score(traffic / "events.jsonl", "--db", database, "--out", tmp_path / "real.jsonl")

    assert result.exit_code == 0, result.output
    real = _lines(tmp_path / "real.jsonl")
    assert real
    assert not any(decision["simulated"] for decision in real)
    assert len(real) == len(_lines(tmp_path / "simulated.jsonl"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("score", str(SAMPLE), "--out", "/proc/nowhere/d.jsonl", "--no-model"),
         "error: /proc/nowhere"),
        (("worker", "--redis", "http://127.0.0.1:1", "--no-model"), "error: Redis URL must specify"),
        (("api", "--db", "notaurl"), "error: Could not parse SQLAlchemy URL"),
        (("simulate", "/proc/nowhere"), "error: /proc/nowhere"),
    ],
)
def test_cli_error_is_one_line(arguments, message, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRUSE_DATABASE_URL", f"sqlite:///{tmp_path / 'fairuse.db'}")

    result = CliRunner().invoke(main, list(arguments))

    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_evaluate_rejects_other_csv(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")

    result = CliRunner().invoke(main, ["evaluate", str(other), str(other)])

    assert result.exit_code == 2
    assert "missing label columns" in result.output


@pytest.mark.parametrize(("arguments", "state_worker"), [((), True), (("--state",), True), (("--window",), False)])
def test_worker_default_is_state_worker(arguments, state_worker, tmp_path, monkeypatch):
    import detector.cli as cli
    import workers.consumer

    started = []
    monkeypatch.setattr(cli, "_run_state_worker", lambda *values: started.append(("state", values[10])))
    monkeypatch.setattr(workers.consumer.StreamConsumer, "run", lambda self, stop: started.append(("window", None)))

    result = CliRunner().invoke(main, ["worker", "--db", f"sqlite:///{tmp_path / 'f.db'}", "--no-model", *arguments])

    assert result.exit_code == 0, result.output
    assert started == ([("state", 1.0)] if state_worker else [("window", None)])


def test_window_worker_rejects_partitions(tmp_path):
    result = CliRunner().invoke(main, ["worker", "--window", "--partitions", "2", "--db", f"sqlite:///{tmp_path / 'f.db'}"])

    assert result.exit_code == 2
    assert "--partitions needs the state worker" in result.output


def test_worker_logs_progress_by_default(tmp_path, monkeypatch):
    import logging

    import workers.consumer

    workers_logger = logging.getLogger("workers")
    monkeypatch.setattr(workers_logger, "level", logging.NOTSET)
    monkeypatch.setattr(workers.consumer.StreamConsumer, "run", lambda self, stop: None)

    result = CliRunner().invoke(main, ["worker", "--window", "--db", f"sqlite:///{tmp_path / 'f.db'}", "--no-model"])

    assert result.exit_code == 0, result.output
    assert workers_logger.level == logging.INFO


def test_help_imports_no_heavy_library():
    # Every staff command pays for what the command line imports at start.
    code = (
        "import sys\n"
        "sys.argv = ['fairuse', '--help']\n"
        "from detector.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('pandas', 'pyarrow', 'numpy', 'sqlalchemy', 'redis', 'sklearn', 'alembic')\n"
        "print([name for name in heavy if name in sys.modules], file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert "Commands:" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[]"
