"""Console logins: lockout per staff name and per address, its expiry and its message, and logins beside other pages."""

import asyncio
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from detector.store import open_store
from fairuse_console import create_app
from fairuse_console.login_limit import LoginLimiter
from tests.review_support import PASSWORD, add_staff, csrf_token
from workers.publish import DecisionPublisher


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def client(store, redis_client, redis_prefix, clock):
    for name in ("rita", "adam"):
        add_staff(store.engine, name, "reviewer")
    app = create_app(engine=store.engine, publisher=DecisionPublisher(redis_client, prefix=redis_prefix),
                     logins=LoginLimiter(max_failures=3, window=900, clock=clock))
    with TestClient(app) as client:
        yield client


def _log_in(client, name, password, **headers):
    token = csrf_token(client.get("/login").text)
    return client.post("/login", data={"csrf_token": token, "name": name, "password": password},
                       headers=headers, follow_redirects=False)


def test_right_password_refused_after_failures(client):
    for _ in range(3):
        assert _log_in(client, "rita", "wrong password!").status_code == 401

    response = _log_in(client, "rita", PASSWORD)

    assert response.status_code == 429
    assert int(response.headers["retry-after"]) == 900
    assert "Too many failed logins. Try again in 15 minutes." in response.text
    assert "fairuse_session" not in response.headers.get("set-cookie", "")


def test_lockout_ends_after_window(client, clock):
    for _ in range(3):
        _log_in(client, "rita", "wrong password!")
    clock.now += 899
    assert _log_in(client, "rita", PASSWORD).status_code == 429

    clock.now += 2

    assert _log_in(client, "rita", PASSWORD).status_code == 303


def test_failures_from_one_address_lock_other_names(client):
    for name in ("nobody", "someone", "rita"):
        _log_in(client, name, "wrong password!")

    assert _log_in(client, "adam", PASSWORD).status_code == 429


@pytest.mark.parametrize("variant", ["RITA", "rit\u00e1", "r\u00cdta"])
def test_name_variants_share_lockout_on_mariadb(mariadb_url, redis_client, redis_prefix, clock, variant):
    # MariaDB compares names ignoring case and accents, so each variant finds the account "rita".
    store = open_store(mariadb_url)
    add_staff(store.engine, "rita", "reviewer")
    limiter = LoginLimiter(max_failures=3, window=900, clock=clock)
    app = create_app(engine=store.engine, publisher=DecisionPublisher(redis_client, prefix=redis_prefix),
                     logins=limiter)
    for _ in range(3):
        limiter.failed("rita", "198.51.100.7")

    with TestClient(app) as client:
        status = _log_in(client, variant, PASSWORD).status_code
    store.engine.dispose()

    assert status in (401, 429)


def test_name_lookup_ignores_case(client):
    limiter = client.app.state.console.logins
    for _ in range(3):
        limiter.failed("Rita", "198.51.100.7")

    assert limiter.retry_after("rita", "192.0.2.1") == 900


def test_success_clears_name_failures(client):
    for _ in range(2):
        _log_in(client, "rita", "wrong password!")
    assert _log_in(client, "rita", PASSWORD).status_code == 303

    limiter = client.app.state.console.logins

    assert limiter.retry_after("rita", "192.0.2.1") == 0


def test_lockout_message_in_chinese(client):
    for _ in range(3):
        _log_in(client, "rita", "wrong password!")

    response = _log_in(client, "rita", PASSWORD, **{"Accept-Language": "zh-CN"})

    assert response.status_code == 429
    assert "登录失败次数过多，请在 15 分钟后重试。" in response.text


def test_tracked_entries_capped(monkeypatch):
    monkeypatch.setattr("fairuse_console.login_limit.MAX_TRACKED", 100)
    limiter = LoginLimiter(max_failures=1, clock=FakeClock())

    for number in range(500):
        limiter.failed(f"name-{number}", f"192.0.2.{number % 250}")

    assert len(limiter._failures) == 100
    assert limiter.retry_after("name-499", "198.51.100.1") > 0
    assert limiter.retry_after("name-0", "198.51.100.1") == 0


def test_slow_login_blocks_no_page(client):
    # A slow password check replaces the hashing: pages requested meanwhile must not wait for it.
    console = client.app.state.console
    check = console.directory.authenticate

    def slow_check(name, password):
        time.sleep(0.5)
        return check(name, password)

    console.directory.authenticate = slow_check
    token = csrf_token(client.get("/login").text)
    cookies = dict(client.cookies)
    finished: list[str] = []

    async def request(method: str, **arguments) -> None:
        await http.request(method, **arguments)
        finished.append(f"{method} {arguments['url']}")

    async def both() -> None:
        login = asyncio.create_task(request("POST", url="/login", data={"csrf_token": token, "name": "rita",
                                                                          "password": PASSWORD}))
        await asyncio.sleep(0.1)
        await request("GET", url="/login")
        await login

    transport = httpx.ASGITransport(app=client.app)
    http = httpx.AsyncClient(transport=transport, base_url="http://testserver", cookies=cookies)
    asyncio.run(both())

    assert finished == ["GET /login", "POST /login"]
