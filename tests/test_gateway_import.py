"""Importing new-api, one-api and LiteLLM request logs from their own tables, on every backend."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import orjson
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import MetaData, create_engine, insert

from detector.cli import main
from detector.gateway_import import Importer, StoreSink, StreamSink
from detector.pipeline import default_detectors
from detector.readers.gateways import gateway_settings, open_log_reader
from detector.store import open_store
from tests.conftest import REDIS_URL
from tests.factories import wait_until
from tests.gateways.tables import litellm_tables, newapi_tables, oneapi_tables
from workers.consumer import StreamConsumer, StreamSettings
from workers.publish import DecisionPublisher
from workers.window import EventWindows

T0 = 1795428000  # 2026-11-23T10:00:00Z


class ListSink:
    """A sink that keeps what it was sent."""

    context_seconds = 0.0

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def send(self, events, context, report) -> None:
        self.frames.append(events)

    def records(self) -> list[dict]:
        if not self.frames:
            return []
        frame = pd.concat(self.frames, ignore_index=True).drop(columns=["subject_type"])
        return frame.to_dict("records")


def gateway_engine(url: str, make_tables):
    engine = create_engine(url)
    metadata = MetaData()
    tables = make_tables(metadata)
    metadata.create_all(engine)
    return engine, tables


def importer_for(kind: str, url: str, store, sink, **overrides) -> Importer:
    settings = gateway_settings(kind, None, None, database_url=url, **overrides)
    reader = open_log_reader(create_engine(url), settings)
    return Importer(reader, store.engine, sink, settle_seconds=0)


def newapi_row(row_id: int, **changes) -> dict:
    row = {
        "id": row_id, "user_id": 7, "created_at": T0 + row_id, "type": 2, "content": "billing note",
        "username": "alice", "token_name": "laptop", "model_name": "gpt-4o", "quota": 250_000,
        "prompt_tokens": 812, "completion_tokens": 164, "use_time": 3, "is_stream": True, "channel_id": 1,
        "token_id": 17, "group": "vip", "ip": "203.0.113.9",
        "other": orjson.dumps({"request_path": "/v1/chat/completions", "model_ratio": 2.5}).decode(),
    }
    row.update(changes)
    return row


def expected_newapi(row_id: int, **changes) -> dict:
    event = {
        "request_id": f"newapi:{row_id}", "ts": float(T0 + row_id), "account_id": "newapi:user:7",
        "key_id": "newapi:token:17", "plan": "coding", "endpoint": "/v1/chat/completions", "model": "gpt-4o",
        "prompt_tokens": 812, "completion_tokens": 164, "images": 0, "cost": 0.5, "ip": "203.0.113.9",
        "user_agent": "", "status": 200, "latency_ms": 3000.0, "stream": True, "prompt_hash": "", "country": "",
    }
    event.update(changes)
    return event


def test_newapi_logs_become_events(database_url):
    engine, tables = gateway_engine(database_url, newapi_tables)
    rows = [
        newapi_row(1),
        newapi_row(2, type=5, quota=0, prompt_tokens=0, completion_tokens=0, use_time=0, is_stream=False, ip="",
                   other=orjson.dumps({"status_code": 429, "request_path": "/v1/chat/completions"}).decode()),
        newapi_row(3, type=1, token_id=0, content="top-up"),
        newapi_row(4, token_id=0),
        newapi_row(5, group="default", other=orjson.dumps({"request_path": "/v1/images/generations"}).decode()),
        newapi_row(6, quota=-5),
        newapi_row(7, other="not json", group=""),
    ]
    with engine.begin() as connection:
        connection.execute(insert(tables["logs"]), rows)
    store = open_store(database_url)
    sink = ListSink()

    report = importer_for("newapi", database_url, store, sink, plans={"vip": "coding"}).import_once()

    assert sink.records() == [
        expected_newapi(1),
        expected_newapi(2, prompt_tokens=0, completion_tokens=0, cost=0.0, ip="", status=429, latency_ms=0.0, stream=False),
        expected_newapi(5, plan="default", endpoint="/v1/images/generations", images=1),
        expected_newapi(7, plan="default"),
    ]
    assert (report.rows, report.events, report.skipped) == (7, 4, 1)
    assert [reject.format() for reject in report.rejects] == [
        "newapi/logs:4: key_id: token_id is 0: the row names no token, so it has no key",
        "newapi/logs:6: cost: negative: -1e-05",
    ]


def test_newapi_rerun_reads_only_new_rows(database_url):
    engine, tables = gateway_engine(database_url, newapi_tables)
    with engine.begin() as connection:
        connection.execute(insert(tables["logs"]), [newapi_row(1), newapi_row(2)])
    store = open_store(database_url)
    sink = ListSink()
    importer = importer_for("newapi", database_url, store, sink)
    importer.import_once()

    again = importer.import_once()
    with engine.begin() as connection:
        connection.execute(insert(tables["logs"]), [newapi_row(3)])
    third = importer.import_once()

    assert again.rows == 0
    assert third.rows == 1
    assert [record["request_id"] for record in sink.records()] == ["newapi:1", "newapi:2", "newapi:3"]


def test_unsettled_rows_wait_for_next_read(sqlite_url):
    engine, tables = gateway_engine(sqlite_url, newapi_tables)
    with engine.begin() as connection:
        connection.execute(insert(tables["logs"]), [newapi_row(1), newapi_row(2, created_at=T0 + 100)])
    store = open_store(sqlite_url)
    sink = ListSink()
    importer = importer_for("newapi", sqlite_url, store, sink)
    importer.settle_seconds = 30
    importer.clock = lambda: T0 + 50

    first = importer.import_once()
    importer.clock = lambda: T0 + 200
    second = importer.import_once()

    assert first.rows == 1
    assert second.rows == 1
    assert [record["request_id"] for record in sink.records()] == ["newapi:1", "newapi:2"]


def test_future_row_rejected_and_rows_behind_it_imported(database_url):
    engine, tables = gateway_engine(database_url, newapi_tables)
    with engine.begin() as connection:
        connection.execute(insert(tables["logs"]), [newapi_row(1), newapi_row(2, created_at=T0 + 10**9), newapi_row(3)])
    store = open_store(database_url)
    sink = ListSink()
    importer = importer_for("newapi", database_url, store, sink)
    importer.settle_seconds = 60
    importer.clock = lambda: T0 + 600

    first = importer.import_once()
    again = importer.import_once()

    assert [record["request_id"] for record in sink.records()] == ["newapi:1", "newapi:3"]
    assert [reject.format() for reject in first.rejects] == [
        f"newapi/logs:2: ts: created_at {T0 + 10**9} is 999999400 s ahead of this machine's clock; "
        "fix the gateway's clock (rows dated in the future are not waited for)",
    ]
    assert again.rows == 0


def test_row_without_user_rejected(database_url):
    engine, tables = gateway_engine(database_url, newapi_tables)
    with engine.begin() as connection:
        connection.execute(insert(tables["logs"]), [newapi_row(1, user_id=None), newapi_row(2)])
    store = open_store(database_url)
    sink = ListSink()

    report = importer_for("newapi", database_url, store, sink).import_once()

    assert [record["account_id"] for record in sink.records()] == ["newapi:user:7"]
    assert [reject.format() for reject in report.rejects] == [
        "newapi/logs:1: account_id: user_id is empty: the row names no user, so it has no account",
    ]


def oneapi_row(row_id: int, **changes) -> dict:
    row = {
        "id": row_id, "user_id": 3, "created_at": T0 + row_id, "type": 2, "content": "billing note",
        "username": "bob", "token_name": "ci bot", "model_name": "gpt-4o-mini", "quota": 1000,
        "prompt_tokens": 50, "completion_tokens": 10, "channel_id": 2, "request_id": f"2026112310{row_id:04d}",
        "elapsed_time": 1234, "is_stream": False, "system_prompt_reset": False,
    }
    row.update(changes)
    return row


def test_oneapi_logs_become_events(database_url):
    engine, tables = gateway_engine(database_url, oneapi_tables)
    with engine.begin() as connection:
        connection.execute(insert(tables["users"]), [{"id": 3, "username": "bob", "group": "svip"}])
        connection.execute(insert(tables["logs"]), [
            oneapi_row(1),
            oneapi_row(2, type=3, token_name="", content="admin changed quota"),
            oneapi_row(3, token_name=""),
            oneapi_row(4, is_stream=True, user_id=9),
        ])
    store = open_store(database_url)
    sink = ListSink()

    report = importer_for("oneapi", database_url, store, sink, quota_per_usd=1000.0,
                          plans={"svip": "coding"}).import_once()

    base = {
        "request_id": "oneapi:1", "ts": float(T0 + 1), "account_id": "oneapi:user:3", "key_id": "oneapi:token:3:ci bot",
        "plan": "coding", "endpoint": "/v1/chat/completions", "model": "gpt-4o-mini", "prompt_tokens": 50,
        "completion_tokens": 10, "images": 0, "cost": 1.0, "ip": "", "user_agent": "", "status": 200,
        "latency_ms": 1234.0, "stream": False, "prompt_hash": "", "country": "",
    }
    unknown_user = {**base, "request_id": "oneapi:4", "ts": float(T0 + 4), "account_id": "oneapi:user:9",
                    "key_id": "oneapi:token:9:ci bot", "plan": "default", "stream": True}
    assert sink.records() == [base, unknown_user]
    assert (report.rows, report.events, report.skipped) == (4, 2, 1)
    assert [reject.format() for reject in report.rejects] == [
        "oneapi/logs:3: key_id: token_name is empty: the row names no token, so it has no key",
    ]


def test_oneapi_row_without_user_rejected(database_url):
    engine, tables = gateway_engine(database_url, oneapi_tables)
    with engine.begin() as connection:
        connection.execute(insert(tables["users"]), [{"id": 3, "username": "bob", "group": "svip"}])
        connection.execute(insert(tables["logs"]), [oneapi_row(1, user_id=None), oneapi_row(2)])
    store = open_store(database_url)
    sink = ListSink()
    importer = importer_for("oneapi", database_url, store, sink, plans={"svip": "coding"})

    report = importer.import_once()
    again = importer.import_once()

    assert [(record["request_id"], record["plan"]) for record in sink.records()] == [("oneapi:2", "coding")]
    assert [reject.format() for reject in report.rejects] == [
        "oneapi/logs:1: account_id: user_id is empty: the row names no user, so it has no account",
    ]
    assert again.rows == 0


def spend_row(number: int, **changes) -> dict:
    started = datetime.fromtimestamp(T0 + number, UTC).replace(tzinfo=None)
    row = {
        "request_id": f"chatcmpl-{number:04d}", "call_type": "acompletion", "api_key": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
        "spend": 0.0125, "total_tokens": 120, "prompt_tokens": 100, "completion_tokens": 20,
        "startTime": started, "endTime": started.replace(microsecond=500_000), "request_duration_ms": 500,
        "model": "gpt-4o", "user": "user-1", "team_id": "team-a", "requester_ip_address": "198.51.100.4",
        "status": "success", "metadata": {"user_api_key_team_alias": "pro", "user_agent": "curl/8.5"},
        "proxy_server_request": {"stream": True, "messages": [{"role": "user", "content": "never read"}]},
        "messages": {}, "response": {},
    }
    row.update(changes)
    return row


def test_litellm_spend_logs_become_events(postgres_url):
    engine, tables = gateway_engine(postgres_url, litellm_tables)
    failure_metadata = {"error_information": {"error_code": "429", "error_class": "RateLimitError"}}
    with engine.begin() as connection:
        connection.execute(insert(tables["LiteLLM_SpendLogs"]), [
            spend_row(1),
            spend_row(2, status="failure", metadata=failure_metadata, user="", spend=0.0, request_duration_ms=None,
                      requester_ip_address=None, proxy_server_request={}),
            spend_row(3, call_type="aimage_generation", user="", team_id=None, api_key=""),
        ])
    store = open_store(postgres_url)
    sink = ListSink()

    report = importer_for("litellm", postgres_url, store, sink, plans={"pro": "coding"}).import_once()

    key = "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b"
    first = {
        "request_id": "chatcmpl-0001", "ts": float(T0 + 1), "account_id": "user-1", "key_id": key, "plan": "coding",
        "endpoint": "/v1/chat/completions", "model": "gpt-4o", "prompt_tokens": 100, "completion_tokens": 20,
        "images": 0, "cost": 0.0125, "ip": "198.51.100.4", "user_agent": "", "status": 200, "latency_ms": 500.0,
        "stream": True, "prompt_hash": "", "country": "",
    }
    first["user_agent"] = "curl/8.5"
    failed = {**first, "request_id": "chatcmpl-0002", "ts": float(T0 + 2), "account_id": "team-a", "plan": "default",
              "cost": 0.0, "ip": "", "user_agent": "", "status": 429, "stream": False}
    assert sink.records() == [first, failed]
    assert [reject.format() for reject in report.rejects] == [
        "litellm/LiteLLM_SpendLogs:3: key_id: api_key is empty: the request used no virtual key",
    ]


def test_litellm_rerun_reads_only_new_rows(postgres_url):
    engine, tables = gateway_engine(postgres_url, litellm_tables)
    with engine.begin() as connection:
        connection.execute(insert(tables["LiteLLM_SpendLogs"]), [spend_row(1), spend_row(2, request_id="a-same-second")])
    store = open_store(postgres_url)
    sink = ListSink()
    importer = importer_for("litellm", postgres_url, store, sink)
    importer.import_once()

    again = importer.import_once()
    with engine.begin() as connection:
        connection.execute(insert(tables["LiteLLM_SpendLogs"]), [spend_row(2, request_id="z-same-second"), spend_row(3)])
    third = importer.import_once()

    assert again.rows == 0
    assert third.rows == 2
    assert [record["request_id"] for record in sink.records()] == [
        "chatcmpl-0001", "a-same-second", "z-same-second", "chatcmpl-0003",
    ]


def test_litellm_long_request_written_late_is_imported(postgres_url):
    engine, tables = gateway_engine(postgres_url, litellm_tables)
    spend_logs = tables["LiteLLM_SpendLogs"]
    moment = lambda offset: datetime.fromtimestamp(T0 + offset, UTC).replace(tzinfo=None)  # noqa: E731
    with engine.begin() as connection:
        connection.execute(insert(spend_logs), [spend_row(1, startTime=moment(130), endTime=moment(131))])
    store = open_store(postgres_url)
    sink = ListSink()
    importer = importer_for("litellm", postgres_url, store, sink)
    importer.settle_seconds = 60
    importer.clock = lambda: T0 + 200
    importer.import_once()

    # A stream that started at T0 + 0 ends at T0 + 200, when the proxy writes its row.
    with engine.begin() as connection:
        connection.execute(insert(spend_logs), [spend_row(2, startTime=moment(0), endTime=moment(200))])
    importer.clock = lambda: T0 + 300
    late = importer.import_once()
    again = importer.import_once()

    assert late.rows == 1
    assert again.rows == 0
    assert [(record["request_id"], record["ts"]) for record in sink.records()] == [
        ("chatcmpl-0001", float(T0 + 130)), ("chatcmpl-0002", float(T0)),
    ]


def test_litellm_import_rejects_other_databases(sqlite_url):
    runner = CliRunner()

    result = runner.invoke(main, ["import", "litellm", "--from", sqlite_url, "--db", sqlite_url])

    assert result.exit_code == 2
    assert "LiteLLM keeps its spend logs in PostgreSQL" in result.output


def test_import_command_feeds_stream(sqlite_url, tmp_path, redis_client, redis_prefix):
    engine, tables = gateway_engine(sqlite_url, newapi_tables)
    with engine.begin() as connection:
        connection.execute(insert(tables["logs"]), [newapi_row(1), newapi_row(2, token_id=0)])
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    rejects = tmp_path / "rejects.txt"
    arguments = ["import", "newapi", "--from", sqlite_url, "--db", store_url, "--target", "stream",
                 "--redis", REDIS_URL, "--prefix", redis_prefix, "--settle-seconds", "0",
                 "--plan", "vip=coding", "--rejects", str(rejects)]

    first = CliRunner().invoke(main, arguments)
    second = CliRunner().invoke(main, arguments)

    assert first.exit_code == 0, first.output
    entries = redis_client.xrange(f"{redis_prefix}:events")
    assert [orjson.loads(fields[b"event"]) for _, fields in entries] == [expected_newapi(1)]
    assert "1 appended" in first.output
    assert "0 rows read" in second.output
    assert rejects.read_text() == "newapi/logs:2: key_id: token_id is 0: the row names no token, so it has no key\n"


def test_import_command_scores_into_store(sqlite_url, tmp_path):
    engine, tables = gateway_engine(sqlite_url, newapi_tables)
    # A stolen-key spike: 40 requests of $5 within 20 minutes on a $2/hour plan.
    rows = [newapi_row(number, created_at=T0 + 30 * number, quota=2_500_000) for number in range(1, 41)]
    with engine.begin() as connection:
        connection.execute(insert(tables["logs"]), rows)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"

    result = CliRunner().invoke(main, ["import", "newapi", "--from", sqlite_url, "--db", store_url, "--no-model",
                                       "--settle-seconds", "0", "--rejects", str(tmp_path / "rejects.txt")])

    assert result.exit_code == 0, result.output
    decisions = open_store(store_url).all_decisions()
    assert {decision.subject for decision in decisions} == {"newapi:token:17"}
    assert "abnormal_cost" in {reason for decision in decisions for reason in decision.reasons}
    assert "new decisions stored" in result.output


def test_follow_feeds_stream_workers(sqlite_url, tmp_path, redis_client, redis_prefix, plans, policy):
    engine, tables = gateway_engine(sqlite_url, newapi_tables)
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    stream = f"{redis_prefix}:events"
    importer = importer_for("newapi", sqlite_url, store, StreamSink(redis_client, stream))
    stop = threading.Event()
    follower = threading.Thread(target=importer.follow, args=(stop, 0.05))
    follower.start()
    try:
        with engine.begin() as connection:
            connection.execute(insert(tables["logs"]), [newapi_row(1), newapi_row(2, ip="")])
        arrived = wait_until(lambda: redis_client.xlen(stream) == 2, 10)
        with engine.begin() as connection:
            connection.execute(insert(tables["logs"]), [newapi_row(3)])
        arrived_later = wait_until(lambda: redis_client.xlen(stream) == 3, 10)
    finally:
        stop.set()
        follower.join(timeout=10)
    consumer = StreamConsumer(
        redis_client, store, plans=plans, policy=policy, detectors=default_detectors(),
        windows=EventWindows(redis_client, prefix=redis_prefix), publisher=DecisionPublisher(redis_client, prefix=redis_prefix),
        settings=StreamSettings(stream=stream, group="workers", dead_letter=f"{redis_prefix}:dead", block_ms=10),
    )
    consumer.ensure_group()

    outcome = consumer.process_once()

    assert arrived
    assert arrived_later
    assert (outcome.events, outcome.dead) == (3, 0)


@pytest.mark.parametrize(("context_hours", "expected"), [(24.0, {"throttle"}), (0.0, set())])
def test_store_target_scores_with_context(sqlite_url, tmp_path, plans, policy, context_hours, expected):
    # $0.50 a request on a $2/hour plan: three requests stay under budget, five pass it.
    engine, tables = gateway_engine(sqlite_url, newapi_tables)
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    sink = StoreSink(store, plans=plans, policy=policy, model=None, context_seconds=context_hours * 3600)
    importer = importer_for("newapi", sqlite_url, store, sink)
    with engine.begin() as connection:
        connection.execute(insert(tables["logs"]), [newapi_row(number, created_at=T0 + 60 * number) for number in (1, 2, 3)])
    first = importer.import_once()
    with engine.begin() as connection:
        connection.execute(insert(tables["logs"]), [newapi_row(number, created_at=T0 + 60 * number) for number in (4, 5)])

    second = importer.import_once()

    assert first.decisions == 0
    assert second.events == 2
    assert {decision.action for decision in store.all_decisions()} == expected
