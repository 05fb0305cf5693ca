"""Enforcing decisions inside new-api, one-api and LiteLLM, against local stand-ins of their admin APIs."""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from click.testing import CliRunner
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import MetaData, create_engine, insert, select, update
from sqlalchemy.orm import Session

from detector.cli import main
from detector.decisions import Decision, decision_id
from detector.readers.gateways import gateway_settings, load_cursor
from detector.store import open_store
from detector.store.gateway_sync import GatewayCallRow, GatewayEnforcementRow
from tests.gateways.standins import ADMIN_TOKEN, MASTER_KEY, StandIn, litellm_app, newapi_app
from tests.gateways.tables import litellm_tables, newapi_tables, oneapi_tables
from tests.factories import wait_until
from workers.enforce import build_enforcer
from workers.enforce.follow import follow
from workers.enforce.jobs import enforce_gateways
from workers.publish import DecisionPublisher

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=2)
KEY = "sk-" + "a" * 45


def make_decision(subject_type: str, subject: str, action: str = "suspend", *, limit_rpm: int | None = None,
                  hours: float = 1.0, scope: str = "all") -> Decision:
    return Decision(
        id=decision_id(subject_type, subject, action, scope, NOW, "test", False),
        subject_type=subject_type, subject=subject, action=action, reasons=["abnormal_cost"], score=90.0,
        evidence={}, detected_at=NOW, created_at=NOW, expires_at=NOW + timedelta(hours=hours), origin="test",
        scope=scope, limit_rpm=limit_rpm,
    )


def account_tables(url: str, make_tables, tokens: list[dict]):
    """Create a gateway's tables with the admin (user 1) and alice (user 7), and ``tokens``."""
    engine = create_engine(url)
    metadata = MetaData()
    tables = make_tables(metadata)
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(tables["users"]), [{"id": 1, "username": "root", "role": 100},
                                                     {"id": 7, "username": "alice", "role": 1}])
        connection.execute(insert(tables["tokens"]), tokens)
    return engine, tables


@pytest.fixture
def gateway(tmp_path, monkeypatch):
    """A new-api database with user 7 owning token 17, and its stand-in."""
    url = f"sqlite:///{tmp_path / 'newapi.db'}"
    engine, tables = account_tables(url, newapi_tables, [{"id": 17, "user_id": 7, "key": KEY[3:], "name": "laptop"}])
    standin = StandIn(newapi_app(engine, tables)).start()
    monkeypatch.setenv("NEWAPI_TOKEN", ADMIN_TOKEN)
    yield {"url": url, "engine": engine, "tables": tables, "standin": standin}
    standin.stop()


def write_config(tmp_path, gateway):
    """Write a gateway TOML naming the new-api database and stand-in of ``gateway``."""
    config = tmp_path / "gateways.toml"
    config.write_text(
        f'[gateways.newapi]\nkind = "newapi"\ndatabase_url = "{gateway["url"]}"\n'
        f'[gateways.newapi.enforce]\napi_url = "{gateway["standin"].url}"\naccess_token_env = "NEWAPI_TOKEN"\n'
        "admin_user_id = 1\n"
    )
    return config


def newapi_enforcer(gateway, store, **enforce):
    settings = gateway_settings("newapi", None, None, database_url=gateway["url"], enforce={
        "api_url": gateway["standin"].url, "access_token_env": "NEWAPI_TOKEN", "admin_user_id": 1, **enforce})
    enforcer = build_enforcer(settings, store)
    enforcer.adapter.client.sleep = lambda seconds: None
    return enforcer


def relay(standin: StandIn, key: str) -> int:
    return httpx.post(f"{standin.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json={}).status_code


def token_status(gateway, token_id: int = 17) -> int:
    tokens = gateway["tables"]["tokens"]
    with gateway["engine"].connect() as connection:
        return connection.scalar(select(tokens.c.status).where(tokens.c.id == token_id))


def calls(store) -> list[tuple[str, str, int | None, str, bool]]:
    with Session(store.engine) as session:
        rows = session.scalars(select(GatewayCallRow).order_by(GatewayCallRow.id)).all()
        return [(row.method, row.path, row.status_code, row.outcome, row.dry_run) for row in rows]


def test_newapi_key_disabled_then_enabled(gateway, store):
    store.save_decisions([make_decision("key", "newapi:token:17")])
    enforcer = newapi_enforcer(gateway, store)
    before = relay(gateway["standin"], KEY)

    during = enforcer.reconcile(NOW + timedelta(minutes=1))
    refused = relay(gateway["standin"], KEY)
    after = enforcer.reconcile(LATER)

    assert before == 200
    assert during.applied == 1
    assert refused == 401
    assert after.undone == 1
    assert relay(gateway["standin"], KEY) == 200
    assert gateway["standin"].admin_calls() == [
        ("PUT", "/api/token/", {"id": 17, "status": 2}),
        ("PUT", "/api/token/", {"id": 17, "status": 1}),
    ]
    assert calls(store) == [("PUT", "/api/token/?status_only=true", 200, "ok", False)] * 2


def test_newapi_account_disabled_then_enabled(gateway, store):
    store.save_decisions([make_decision("account", "newapi:user:7")])
    enforcer = newapi_enforcer(gateway, store)

    enforcer.reconcile(NOW)
    refused = relay(gateway["standin"], KEY)
    enforcer.reconcile(LATER)

    assert refused == 403
    assert relay(gateway["standin"], KEY) == 200
    assert gateway["standin"].admin_calls() == [
        ("POST", "/api/user/manage", {"id": 7, "action": "disable"}),
        ("POST", "/api/user/manage", {"id": 7, "action": "enable"}),
    ]


def test_second_pass_makes_no_call(gateway, store):
    store.save_decisions([make_decision("key", "newapi:token:17")])
    enforcer = newapi_enforcer(gateway, store)

    enforcer.reconcile(NOW)
    second = enforcer.reconcile(NOW + timedelta(minutes=5))

    assert len(gateway["standin"].admin_calls()) == 1
    assert (second.applied, second.unchanged) == (0, 1)


def test_staff_disabled_token_left_alone(gateway, store):
    with gateway["engine"].begin() as connection:
        connection.execute(update(gateway["tables"]["tokens"]).values(status=2))
    store.save_decisions([make_decision("key", "newapi:token:17")])
    enforcer = newapi_enforcer(gateway, store)

    during = enforcer.reconcile(NOW)
    after = enforcer.reconcile(LATER)

    assert during.untouched == 1
    assert after.undone == 0
    assert gateway["standin"].admin_calls() == []
    assert token_status(gateway) == 2
    with Session(store.engine) as session:
        row = session.scalars(select(GatewayEnforcementRow)).one()
    assert (row.state, row.previous) == ("released", {"status": 2})


def test_dry_run_makes_no_call(gateway, store):
    store.save_decisions([make_decision("key", "newapi:token:17")])
    enforcer = newapi_enforcer(gateway, store, dry_run=True)

    first = enforcer.reconcile(NOW)
    second = enforcer.reconcile(NOW)

    assert gateway["standin"].admin_calls() == []
    assert token_status(gateway) == 1
    assert (first.applied, second.applied) == (1, 1)
    assert calls(store) == [("PUT", "/api/token/?status_only=true", None, "dry_run", True)] * 2


def test_retried_with_backoff_after_503(gateway, store):
    gateway["standin"].fail_next = 2
    store.save_decisions([make_decision("key", "newapi:token:17")])
    enforcer = newapi_enforcer(gateway, store)
    waits = []
    enforcer.adapter.client.sleep = waits.append

    report = enforcer.reconcile(NOW)

    assert report.applied == 1
    assert token_status(gateway) == 2
    assert waits == [0.5, 1.0]
    assert [outcome for _, _, _, outcome, _ in calls(store)] == ["error", "error", "ok"]


def test_catches_up_after_downtime(gateway, store, tmp_path, monkeypatch):
    down = StandIn(newapi_app(gateway["engine"], gateway["tables"]))
    gateway["standin"].stop()
    gateway["standin"] = down
    store.save_decisions([make_decision("key", "newapi:token:17"), make_decision("account", "newapi:user:7")])
    enforcer = newapi_enforcer(gateway, store, attempts=2)

    while_down = enforcer.reconcile(NOW)
    down.start()
    back = enforcer.reconcile(NOW + timedelta(minutes=1))

    assert (while_down.applied, while_down.pending) == (0, 2)
    assert back.applied == 2
    assert token_status(gateway) == 2
    assert [outcome for _, _, _, outcome, _ in calls(store)].count("unreachable") == 2


@pytest.fixture
def oneapi(tmp_path, monkeypatch):
    """A one-api database: the admin (user 1) owns token 5, alice (user 7) owns token 17."""
    url = f"sqlite:///{tmp_path / 'oneapi.db'}"
    engine, tables = account_tables(url, oneapi_tables, [{"id": 5, "user_id": 1, "key": "b" * 48, "name": "ops"},
                                                         {"id": 17, "user_id": 7, "key": KEY[3:], "name": "laptop"}])
    standin = StandIn(newapi_app(engine, tables, one_api=True)).start()
    monkeypatch.setenv("ONEAPI_TOKEN", ADMIN_TOKEN)
    settings = gateway_settings("oneapi", None, None, database_url=url, enforce={
        "api_url": standin.url, "access_token_env": "ONEAPI_TOKEN"})
    yield {"settings": settings, "engine": engine, "tables": tables, "standin": standin}
    standin.stop()


def test_oneapi_account_named_by_username(oneapi, store):
    store.save_decisions([make_decision("account", "oneapi:user:7")])
    enforcer = build_enforcer(oneapi["settings"], store)

    enforcer.reconcile(NOW)
    refused = relay(oneapi["standin"], KEY)
    enforcer.reconcile(LATER)

    assert refused == 403
    assert relay(oneapi["standin"], KEY) == 200
    assert oneapi["standin"].admin_calls() == [
        ("POST", "/api/user/manage", {"username": "alice", "action": "disable"}),
        ("POST", "/api/user/manage", {"username": "alice", "action": "enable"}),
    ]


def test_oneapi_foreign_token_refused_once(oneapi, store):
    store.save_decisions([make_decision("key", "oneapi:token:7:laptop"), make_decision("key", "oneapi:token:1:ops")])
    enforcer = build_enforcer(oneapi["settings"], store)

    first = enforcer.reconcile(NOW)
    second = enforcer.reconcile(NOW)

    assert (first.applied, first.rejected) == (1, 1)
    assert second.unchanged == 2
    assert len(oneapi["standin"].admin_calls()) == 2
    with Session(store.engine) as session:
        states = {row.target: (row.state, row.message) for row in session.scalars(select(GatewayEnforcementRow))}
    assert states["5"] == ("applied", "")
    assert states["17"] == ("rejected", "gateway oneapi rejected PUT /api/token/?status_only=true: record not found")


@pytest.fixture
def litellm(postgres_url, monkeypatch):
    """A LiteLLM database with one key limited to 100 rpm and one without a limit, and the stand-in."""
    engine = create_engine(postgres_url)
    metadata = MetaData()
    tables = litellm_tables(metadata)
    metadata.create_all(engine)
    hashed = hashlib.sha256(KEY.encode()).hexdigest()
    other = "sk-" + "c" * 45
    with engine.begin() as connection:
        connection.execute(insert(tables["LiteLLM_VerificationToken"]), [
            {"token": hashed, "user_id": "user-1", "team_id": "team-a", "blocked": None, "rpm_limit": 100},
            {"token": hashlib.sha256(other.encode()).hexdigest(), "user_id": "user-1", "team_id": None, "blocked": False, "rpm_limit": None},
        ])
    standin = StandIn(litellm_app(engine, tables)).start()
    monkeypatch.setenv("LITELLM_MASTER_KEY", MASTER_KEY)
    settings = gateway_settings("litellm", None, None, database_url=postgres_url, enforce={
        "api_url": standin.url, "master_key_env": "LITELLM_MASTER_KEY"})
    yield {"settings": settings, "standin": standin, "hashed": hashed, "other": other}
    standin.stop()


def test_litellm_key_blocked_then_unblocked(litellm, sqlite_url):
    store = open_store(sqlite_url)
    store.save_decisions([make_decision("key", litellm["hashed"])])
    enforcer = build_enforcer(litellm["settings"], store)

    enforcer.reconcile(NOW)
    refused = relay(litellm["standin"], KEY)
    enforcer.reconcile(LATER)

    assert refused == 401
    assert relay(litellm["standin"], KEY) == 200
    assert litellm["standin"].admin_calls() == [
        ("POST", "/key/block", {"key": litellm["hashed"]}),
        ("POST", "/key/unblock", {"key": litellm["hashed"]}),
    ]


def test_litellm_throttle_restores_previous_limit(litellm, sqlite_url):
    store = open_store(sqlite_url)
    store.save_decisions([make_decision("account", "user-1", "throttle", limit_rpm=10)])
    enforcer = build_enforcer(litellm["settings"], store)

    enforcer.reconcile(NOW)
    during = httpx.post(f"{litellm['standin'].url}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {KEY}"}, json={}).json()["rpm_limit"]
    enforcer.reconcile(LATER)

    other = hashlib.sha256(litellm["other"].encode()).hexdigest()
    assert during == 10
    assert litellm["standin"].admin_calls() == [
        ("POST", "/key/update", {"key": other, "rpm_limit": 10}),
        ("POST", "/key/update", {"key": litellm["hashed"], "rpm_limit": 10}),
        ("POST", "/key/update", {"key": other, "rpm_limit": None}),
        ("POST", "/key/update", {"key": litellm["hashed"], "rpm_limit": 100}),
    ]


def test_image_throttle_not_mirrored(litellm, sqlite_url):
    store = open_store(sqlite_url)
    store.save_decisions([make_decision("key", litellm["hashed"], "throttle", limit_rpm=1, scope="images")])

    report = build_enforcer(litellm["settings"], store).reconcile(NOW)

    assert report.applied == 0
    assert litellm["standin"].admin_calls() == []


def test_enforce_command_dry_run(gateway, tmp_path, sqlite_url):
    store = open_store(sqlite_url)
    store.save_decisions([make_decision("key", "newapi:token:17", hours=24 * 3650)])
    config = write_config(tmp_path, gateway)

    dry = CliRunner().invoke(main, ["enforce", "--config", str(config), "--db", sqlite_url, "--dry-run"])
    real = CliRunner().invoke(main, ["enforce", "--config", str(config), "--db", sqlite_url])

    assert dry.exit_code == 0, dry.output
    assert "newapi: 1 applied" in dry.output
    assert "dry run" in dry.output
    assert real.exit_code == 0, real.output
    assert gateway["standin"].admin_calls() == [("PUT", "/api/token/", {"id": 17, "status": 2})]


def test_enforce_command_names_missing_secret(gateway, tmp_path, sqlite_url, monkeypatch):
    monkeypatch.delenv("NEWAPI_TOKEN")
    config = write_config(tmp_path, gateway)

    result = CliRunner().invoke(main, ["enforce", "--config", str(config), "--db", sqlite_url])

    assert result.exit_code == 2
    assert "environment variable NEWAPI_TOKEN is not set" in result.output


@contextmanager
def _following(enforcer, store, redis_client, redis_prefix):
    """Run the follow loop in a thread; yield the list its passes are appended to, and stop it afterwards."""
    stop = threading.Event()
    passes = []
    loop = threading.Thread(target=follow, args=([enforcer], stop), kwargs={
        "store_engine": store.engine, "client": redis_client, "prefix": redis_prefix, "interval": 600.0,
        "on_pass": passes.append})
    loop.start()
    try:
        yield passes
    finally:
        stop.set()
        redis_client.xadd(f"{redis_prefix}:decisions", {"change": b"{}"})
        loop.join(timeout=10)


def test_follow_wakes_on_decision_change(gateway, store, redis_client, redis_prefix):
    with _following(newapi_enforcer(gateway, store), store, redis_client, redis_prefix) as passes:
        assert wait_until(lambda: len(passes) == 1, 10)
        decision = make_decision("key", "newapi:token:17", hours=24 * 3650)
        store.save_decisions([decision])
        DecisionPublisher(redis_client, prefix=redis_prefix).publish([decision], now=NOW + timedelta(minutes=1))

        applied = wait_until(lambda: token_status(gateway) == 2, 10)

    assert applied
    assert load_cursor(store.engine, f"enforce:{redis_prefix}:decisions").last_key is not None


def test_follow_passes_again_until_decision_stored(gateway, store, redis_client, redis_prefix):
    with _following(newapi_enforcer(gateway, store), store, redis_client, redis_prefix) as passes:
        assert wait_until(lambda: len(passes) == 1, 10)
        # Workers publish a decision just before they store it, so the pass its change wakes can miss it.
        decision = make_decision("key", "newapi:token:17", hours=24 * 3650)
        DecisionPublisher(redis_client, prefix=redis_prefix).publish([decision], now=NOW + timedelta(minutes=1))
        woken = wait_until(lambda: len(passes) == 2, 10)
        store.save_decisions([decision])

        applied = wait_until(lambda: token_status(gateway) == 2, 10)

    assert woken
    assert applied


def test_rq_job_enforces_configured_gateways(gateway, tmp_path, sqlite_url, monkeypatch):
    store = open_store(sqlite_url)
    store.save_decisions([make_decision("key", "newapi:token:17", hours=24 * 3650)])
    config = write_config(tmp_path, gateway)
    monkeypatch.setenv("FAIRUSE_GATEWAYS_CONFIG", str(config))
    monkeypatch.setenv("FAIRUSE_DATABASE_URL", sqlite_url)

    reports = enforce_gateways()

    assert [(report["gateway"], report["applied"]) for report in reports] == [("newapi", 1)]
    assert token_status(gateway) == 2


def test_newapi_enforced_on_every_backend(database_url, tmp_path, monkeypatch):
    engine, tables = account_tables(database_url, newapi_tables, [{"id": 17, "user_id": 7, "key": KEY[3:], "name": "laptop"}])
    standin = StandIn(newapi_app(engine, tables)).start()
    monkeypatch.setenv("NEWAPI_TOKEN", ADMIN_TOKEN)
    gateway = {"url": database_url, "engine": engine, "tables": tables, "standin": standin}
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    store.save_decisions([make_decision("key", "newapi:token:17")])
    enforcer = newapi_enforcer(gateway, store)
    try:
        enforcer.reconcile(NOW)
        during = token_status(gateway)
        enforcer.reconcile(LATER)
        after = token_status(gateway)
    finally:
        standin.stop()

    assert during == 2
    assert after == 1


def test_rejected_target_retried_for_new_decision(oneapi, store):
    first = make_decision("key", "oneapi:token:7:laptop")
    store.save_decisions([first])
    enforcer = build_enforcer(oneapi["settings"], store)
    enforcer.reconcile(NOW)
    enforcer.reconcile(LATER)
    later = Decision(**{**vars_of(first), "id": "later-decision", "detected_at": LATER, "expires_at": LATER + timedelta(hours=1)})
    store.save_decisions([later])

    report = enforcer.reconcile(LATER + timedelta(minutes=1))

    assert report.rejected == 1
    assert len(oneapi["standin"].admin_calls()) == 2


def vars_of(decision: Decision) -> dict:
    return {name: getattr(decision, name) for name in decision.__dataclass_fields__}


def test_oneapi_suspension_of_unknown_token_reported(oneapi, store, caplog):
    store.save_decisions([make_decision("key", "oneapi:7:no-such-token")])
    enforcer = build_enforcer(oneapi["settings"], store)

    with caplog.at_level("WARNING"):
        report = enforcer.reconcile(NOW)

    assert report.unmatched == 1
    assert report.applied == 0
    assert "oneapi:7:no-such-token" in caplog.text
    assert oneapi["standin"].admin_calls() == []


@pytest.fixture
def faulty(gateway):
    """The new-api stand-in behind a switch: "garbage" replies to admin calls with an HTML 200, "refuse" rejects them."""
    mode = {"now": "ok"}
    app = newapi_app(gateway["engine"], gateway["tables"])

    @app.middleware("http")
    async def misbehave(request, call_next):
        if request.url.path.startswith("/api/") and mode["now"] == "garbage":
            return PlainTextResponse("<html>maintenance</html>", status_code=200)
        if request.url.path.startswith("/api/") and mode["now"] == "refuse":
            return JSONResponse({"success": False, "message": "token locked by admin"})
        return await call_next(request)

    gateway["standin"].stop()
    gateway["standin"] = StandIn(app).start()
    yield mode
    gateway["standin"].stop()


def enforcement_state(store) -> tuple[str, str]:
    with Session(store.engine) as session:
        row = session.scalars(select(GatewayEnforcementRow)).one()
    return row.state, row.message


@pytest.mark.parametrize("mode", ["garbage", "refuse"])
def test_failed_undo_stays_pending(gateway, store, faulty, mode):
    store.save_decisions([make_decision("key", "newapi:token:17")])
    enforcer = newapi_enforcer(gateway, store, attempts=2)
    enforcer.reconcile(NOW)
    faulty["now"] = mode

    failed = enforcer.reconcile(LATER)
    state_after_failure = enforcement_state(store)
    faulty["now"] = "ok"
    retried = enforcer.reconcile(LATER + timedelta(minutes=1))

    assert failed.pending == 1
    assert failed.errors
    assert state_after_failure[0] == "applied"
    assert retried.undone == 1
    assert retried.pending == 0
    assert token_status(gateway) == 1
    assert enforcement_state(store)[0] == "released"


def test_non_json_success_counts_as_error(gateway, store, faulty):
    faulty["now"] = "garbage"
    store.save_decisions([make_decision("key", "newapi:token:17")])
    enforcer = newapi_enforcer(gateway, store, attempts=2)

    report = enforcer.reconcile(NOW)

    assert (report.applied, report.rejected, report.pending) == (0, 0, 1)
    assert [outcome for _, _, _, outcome, _ in calls(store)] == ["error", "error"]


def test_enforce_command_fails_while_undo_pending(gateway, store, faulty, tmp_path, sqlite_url):
    config = write_config(tmp_path, gateway)
    store.save_decisions([make_decision("key", "newapi:token:17")])
    newapi_enforcer(gateway, store).reconcile(NOW)
    faulty["now"] = "refuse"

    # The decision ended an hour after NOW, so this pass (on the real clock) undoes it.
    pending = CliRunner().invoke(main, ["enforce", "--config", str(config), "--db", sqlite_url])

    assert pending.exit_code == 1
    assert "1 pending" in pending.output
    assert token_status(gateway) == 2


@pytest.mark.parametrize("subject", ["newapi:token:²", "newapi:token:١٧", "newapi:user:x7"])
def test_malformed_subject_skipped_others_enforced(gateway, store, caplog, subject):
    store.save_decisions([make_decision("key" if ":token:" in subject else "account", subject),
                          make_decision("account", "newapi:user:7")])
    enforcer = newapi_enforcer(gateway, store)

    with caplog.at_level("WARNING"):
        report = enforcer.reconcile(NOW)

    assert report.malformed == [subject]
    assert report.applied == 1
    assert report.unmatched == 0
    assert repr(subject) in caplog.text
    assert gateway["standin"].admin_calls() == [("POST", "/api/user/manage", {"id": 7, "action": "disable"})]
    assert token_status(gateway) == 1
