"""The console in real headless Chromium (Debian's ``chromium``, driven by Playwright).

The console runs under uvicorn on a free port of 127.0.0.1 inside the test.
Chromium comes from ``apt-get install -y chromium`` (``.ci/run`` installs
it); Playwright's own browser downloads are never used. Without
/usr/bin/chromium these tests fail. Screenshots of the queue and a case page
go to out/screenshots/.
"""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session

from detector.features import prepare_events
from detector.review.activity import ActivityLog
from detector.review.cases import CaseQueue
from detector.review.staff import StaffDirectory
from detector.store.models import LabelRow
from fairuse_console import create_app
from fairuse_gateway import DecisionClient
from tests.conftest import REDIS_URL
from tests.factories import HOUR, events, frame, wait_until
from tests.review_support import PASSWORD, policy_decision
from workers.publish import DecisionPublisher

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "out" / "screenshots"


@pytest.fixture
def seeded_store(store, plans):
    store.save_decisions([
        policy_decision("key-resold", score=92, reasons=("key_sharing", "abnormal_cost"), ident="review-resold"),
        policy_decision("key-office", score=64, ident="review-office"),
    ])
    CaseQueue(store.engine).sync()
    StaffDirectory(store.engine).add("rita", PASSWORD, "reviewer")

    # Three days of traffic for the top case's charts: busy hours from many networks.
    rng = np.random.default_rng(7)
    start = (datetime.now(UTC).timestamp() // HOUR - 72) * HOUR
    times = np.sort(start + rng.uniform(0, 72 * HOUR, 1500))
    addresses = [f"198.51.{int(n)}.{int(h)}" for n, h in zip(rng.integers(0, 12, 1500), rng.integers(1, 250, 1500))]
    traffic = frame(events("key-resold", times, ip=addresses, cost=list(rng.gamma(2.0, 0.02, 1500)),
                           country=list(rng.choice(["DE", "US", "BR"], 1500)),
                           user_agent=list(rng.choice(["OpenAI/Python 1.51.0", "curl/8.5", "Go-http-client/2.0"], 1500))))
    ActivityLog(store.engine).record(prepare_events(traffic, plans), {("key", "key-resold")})
    return store


@pytest.fixture
def console_url(seeded_store, redis_client, redis_prefix):
    app = create_app(engine=seeded_store.engine, publisher=DecisionPublisher(redis_client, prefix=redis_prefix))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 30), "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    listener.close()


@pytest.fixture
def page():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; install Debian's browser with 'apt-get install -y chromium'")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
        yield context.new_page()
        context.close()
        browser.close()


def _log_in(page, console_url: str) -> None:
    page.goto(console_url + "/")
    assert page.url.startswith(console_url + "/login")
    page.fill("input[name=name]", "rita")
    page.fill("input[name=password]", PASSWORD)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(console_url + "/")


def test_suspend_top_case_reaches_gateway(page, console_url, redis_prefix):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    _log_in(page, console_url)
    assert page.locator("h1").inner_text() == "Case queue"
    page.screenshot(path=str(SCREENSHOTS / "queue.png"), full_page=True)

    page.locator("a.case-link").first.click()
    assert "key-resold" in page.locator("#subject").inner_text()
    assert page.locator(".charts img").count() == 4
    assert page.evaluate("Array.from(document.querySelectorAll('.charts img')).every(img => img.naturalWidth > 0)")
    page.screenshot(path=str(SCREENSHOTS / "case.png"), full_page=True)

    page.fill("#suspend-form input[name=comment]", "resold on a forum")
    page.click("#suspend-form button[type=submit]")
    page.wait_for_url("**/cases/*?done=suspend")

    assert "suspended" in page.locator("#case-status").inner_text()
    verdict = DecisionClient(REDIS_URL, prefix=redis_prefix, cache_seconds=0.0).check(key_id="key-resold")
    assert verdict.action == "suspend"
    assert verdict.reasons == ("abnormal_cost", "key_sharing")


def test_dismiss_stores_label(page, console_url, seeded_store):
    _log_in(page, console_url)

    page.locator("tr", has_text="key-office").locator("a.case-link").click()
    page.fill("#dismiss-form input[name=comment]", "a team behind one NAT")
    page.click("#dismiss-form button[type=submit]")
    page.wait_for_url("**/cases/*?done=dismiss")

    with Session(seeded_store.engine) as session:
        labels = session.scalars(select(LabelRow)).all()
    assert [(label.subject, label.verdict, label.staff) for label in labels] == [("key-office", "benign", "rita")]
    assert "dismissed" in page.locator("#case-status").inner_text()


def test_switch_language(page, console_url):
    _log_in(page, console_url)

    page.select_option("#language", "zh_CN")
    page.click("#language-form button[type=submit]")
    page.wait_for_load_state()

    assert page.locator("h1").inner_text() == "案件队列"
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    page.locator("a.case-link").first.click()
    assert "最近 7 天" in page.locator(".charts h2").inner_text()

    page.select_option("#language", "en")
    page.click("#language-form button[type=submit]")
    page.wait_for_load_state()
    assert page.locator(".charts h2").inner_text() == "Last 7 days"
