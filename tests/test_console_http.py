"""Every console route over HTTP: logins, roles, CSRF, actions reaching Redis, masking and language."""

import re
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html import unescape
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from detector.review.actions import StaffActions
from detector.review.cases import CaseQueue
from detector.review.privacy import mask_address, mask_text
from detector.store.models import DecisionRow, LabelRow
from detector.store.review_models import AllowlistRow, AuditRow, CaseRow, NoteRow, StaffRow
from fairuse_console import create_app
from fairuse_console.display import display_zone, when
from fairuse_gateway import DecisionClient
from tests.conftest import REDIS_URL
from tests.review_support import PASSWORD, add_staff, csrf_token, log_in, policy_decision
from workers.publish import DecisionPublisher

ADDRESS = "203.0.113.77"

# Every state-changing route, with a form that would succeed for a reviewer.
POST_ROUTES = [
    ("/cases", {"subject_type": "key", "subject": "key-new", "comment": "ticket"}),
    ("/cases/bulk", {"action": "dismiss", "case_id": "1", "comment": "fine"}),
    ("/cases/1/suspend", {"duration": "6h", "comment": "resold"}),
    ("/cases/1/throttle", {"limit_rpm": "5", "duration": "1h", "comment": "slow"}),
    ("/cases/1/dismiss", {"comment": "fine"}),
    ("/cases/1/allowlist", {"duration": "30d", "comment": "partner"}),
    ("/cases/1/notes", {"body": "called them"}),
    ("/decisions/throttle-key-b/lift", {"comment": "paid", "case_id": "2"}),
    ("/allowlist", {"subject_type": "key", "subject": "key-x", "duration": "7d", "comment": "trial"}),
    ("/allowlist/1/remove", {"comment": "ended"}),
]
GET_PAGES = ["/", "/cases/1", "/allowlist", "/audit", "/staff"]


@pytest.fixture
def store(store, redis_client, redis_prefix):
    store.save_decisions([
        policy_decision("key-a", score=90, ident="review-key-a"),
        policy_decision("key-b", score=70, ident="review-key-b"),
        policy_decision("key-b", action="throttle", ident="throttle-key-b"),
        policy_decision(ADDRESS, subject_type="ip", score=50, ident="review-ip"),
    ])
    DecisionPublisher(redis_client, prefix=redis_prefix).publish(store.active_decisions())
    CaseQueue(store.engine).sync()
    for name, role in (("vera", "viewer"), ("rita", "reviewer"), ("adam", "admin")):
        add_staff(store.engine, name, role)
    actions = StaffActions(store.engine, DecisionPublisher(redis_client, prefix=redis_prefix))
    actions.add_allowlist("key", "key-old", staff="adam", duration=timedelta(days=3), comment="seed entry")
    return store


@pytest.fixture
def app(store, redis_client, redis_prefix):
    return create_app(engine=store.engine, publisher=DecisionPublisher(redis_client, prefix=redis_prefix))


@pytest.fixture
def client(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture
def gateway(redis_prefix):
    return DecisionClient(REDIS_URL, prefix=redis_prefix, cache_seconds=0.0)


def _count(store, table) -> int:
    with Session(store.engine) as session:
        return session.scalar(select(func.count()).select_from(table))


def _case(store, case_id: int) -> CaseRow:
    with Session(store.engine) as session:
        return session.get(CaseRow, case_id)


# Refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("path", GET_PAGES)
def test_page_without_login_redirects(client, path):
    response = client.get(path, follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize(("path", "form"), POST_ROUTES + [("/logout", {}), ("/language", {"language": "en"}), ("/staff", {})])
def test_post_without_login_rejected(client, store, path, form):
    response = client.post(path, data={**form, "csrf_token": "guess"}, follow_redirects=False)

    assert response.status_code == 401
    assert _count(store, AuditRow) == 1  # only the seed allowlist entry


@pytest.mark.parametrize(("path", "form"), POST_ROUTES)
def test_post_without_csrf_rejected(client, store, path, form):
    log_in(client, "rita")

    missing = client.post(path, data=form, follow_redirects=False)
    wrong = client.post(path, data={**form, "csrf_token": "not-the-token"}, follow_redirects=False)

    assert missing.status_code == 403
    assert "CSRF" in missing.text
    assert wrong.status_code == 403
    assert _count(store, AuditRow) == 1


@pytest.mark.parametrize(("path", "form"), [("/logout", {}), ("/language", {"language": "zh_CN"}), ("/staff", {})])
def test_account_posts_without_csrf_rejected(client, path, form):
    log_in(client, "adam")

    assert client.post(path, data=form, follow_redirects=False).status_code == 403


@pytest.mark.parametrize(("path", "form"), POST_ROUTES)
def test_viewer_cannot_act(client, store, path, form):
    token = log_in(client, "vera")

    response = client.post(path, data={**form, "csrf_token": token}, follow_redirects=False)

    assert response.status_code == 403
    assert "can only read" in response.text
    assert _count(store, AuditRow) == 1
    assert _case(store, 1).status == "open"


def test_staff_page_for_admins_only(client):
    token = log_in(client, "rita")

    assert client.get("/staff").status_code == 403
    response = client.post("/staff", data={"csrf_token": token, "name": "eve", "role": "admin", "password": PASSWORD},
                           follow_redirects=False)
    assert response.status_code == 403


def test_viewer_sees_no_action_forms(client):
    log_in(client, "vera")

    page = client.get("/cases/1").text

    assert 'id="suspend-form"' not in page
    assert "/lift" not in page
    assert 'name="case_id"' not in client.get("/").text


# Logging in and out --------------------------------------------------------------


def test_login_rejects_wrong_password(client):
    token = csrf_token(client.get("/login").text)

    response = client.post("/login", data={"csrf_token": token, "name": "rita", "password": "wrong password!"},
                           follow_redirects=False)

    assert response.status_code == 401
    assert "wrong password" in response.text
    assert client.get("/", follow_redirects=False).status_code == 303


def test_login_rejects_missing_csrf(client):
    client.get("/login")

    response = client.post("/login", data={"name": "rita", "password": PASSWORD}, follow_redirects=False)

    assert response.status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 303


def test_login_sets_strict_httponly_cookie(client):
    token = csrf_token(client.get("/login").text)

    response = client.post("/login", data={"csrf_token": token, "name": "rita", "password": PASSWORD,
                                            "next": "//evil.example/x"}, follow_redirects=False)

    cookie = response.headers["set-cookie"]
    assert "fairuse_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert response.headers["location"] == "/"


def test_logout_ends_session(client, store):
    token = log_in(client, "rita")
    cookie = client.cookies.get("fairuse_session")

    response = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)

    assert response.status_code == 303
    client.cookies.set("fairuse_session", cookie)
    assert client.get("/", follow_redirects=False).status_code == 303


def test_session_cookie_not_stored_in_clear(client, store):
    log_in(client, "rita")
    cookie = client.cookies.get("fairuse_session")

    with Session(store.engine) as session:
        stored = session.scalars(select(StaffRow.password_hash)).all()
        from detector.store.review_models import StaffSessionRow
        ids = session.scalars(select(StaffSessionRow.id)).all()
    assert cookie not in ids
    assert all(value.startswith("$argon2id$") for value in stored)


# Pages and actions ---------------------------------------------------------------


def test_queue_lists_cases_by_score(client):
    log_in(client, "vera")

    page = client.get("/").text

    assert page.index("key-a") < page.index("key-b")
    assert "#3" in page
    filtered = client.get("/?reason=key_sharing&min_score=80&sort=score&order=asc").text
    assert "key-a" in filtered
    assert "key-b" not in filtered
    assert client.get("/?min_score=lots").status_code == 400


@pytest.mark.parametrize(("method", "path", "form", "status"), [
    ("get", "/?min_age=1e20", {}, 400),
    ("get", "/?min_age=nan", {}, 400),
    ("get", "/?min_score=nan", {}, 400),
    ("get", "/cases/99999999999999999999", {}, 404),
    ("post", "/cases/99999999999999999999/notes", {"body": "x"}, 404),
    ("post", "/cases/bulk", {"action": "dismiss", "case_id": "99999999999999999999", "comment": "x"}, 404),
    ("post", "/allowlist/99999999999999999999/remove", {"comment": "x"}, 404),
    ("post", "/cases/1/dismiss", {"comment": "x", "seen": "9999-12-31T23:59:59-01:00"}, 400),
    ("post", "/cases/1/dismiss", {"comment": "x", "seen": "0001-01-01T00:00:00+01:00"}, 400),
])
def test_out_of_range_numbers_rejected(client, method, path, form, status):
    token = log_in(client, "rita")

    if method == "get":
        response = client.get(path)
    else:
        response = client.post(path, data={"csrf_token": token, **form})

    assert response.status_code == status


def test_case_page_shows_evidence_and_charts(client):
    log_in(client, "rita")

    page = client.get("/cases/2").text

    assert "key-b" in page
    assert "throttle-key-b" in page
    assert "seen_from" in page
    assert page.count('src="data:image/svg+xml;base64,') == 4
    assert client.get("/cases/999").status_code == 404


def test_case_page_in_chosen_time_zone(store, redis_client, redis_prefix):
    app = create_app(engine=store.engine, publisher=DecisionPublisher(redis_client, prefix=redis_prefix),
                     time_zone="Asia/Shanghai")
    opened = _case(store, 2).opened_at

    with TestClient(app) as client:
        log_in(client, "rita")
        page = client.get("/cases/2").text

    assert when(opened, ZoneInfo("Asia/Shanghai")) in page
    assert (opened + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M UTC+8") in page


@pytest.mark.parametrize(("zone", "shown"), [
    ("UTC", "2026-12-01 16:30 UTC"),
    ("Asia/Shanghai", "2026-12-02 00:30 UTC+8"),
    ("Asia/Kolkata", "2026-12-01 22:00 UTC+5:30"),
    ("America/St_Johns", "2026-12-01 13:00 UTC-3:30"),
])
def test_times_shown_with_offset(zone, shown):
    assert when(datetime(2026, 12, 1, 16, 30, tzinfo=UTC), display_zone(zone)) == shown


def test_unknown_time_zone_named():
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'; give an IANA name"):
        display_zone("Mars/Olympus")


def test_suspend_from_console_reaches_gateway(client, store, gateway):
    token = log_in(client, "rita")

    response = client.post("/cases/1/suspend", data={"csrf_token": token, "duration": "6h", "comment": "resold"},
                           follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == "/cases/1?done=suspend"
    verdict = gateway.check(key_id="key-a")
    assert verdict.action == "suspend"
    assert _case(store, 1).resolution == "suspended"
    with Session(store.engine) as session:
        assert session.get(DecisionRow, verdict.decision_id).origin == "staff:rita"


def test_throttle_and_bad_limit(client, gateway):
    token = log_in(client, "rita")

    bad = client.post("/cases/1/throttle", data={"csrf_token": token, "limit_rpm": "many", "duration": "1h",
                                                 "comment": "x"})
    good = client.post("/cases/1/throttle", data={"csrf_token": token, "limit_rpm": "7", "duration": "1h",
                                                  "comment": "x"}, follow_redirects=False)

    assert bad.status_code == 400
    assert "invalid limit_rpm 'many'" in unescape(bad.text)
    assert good.status_code == 303
    assert gateway.check(key_id="key-a").limit_rpm == 7


def test_dismiss_lifts_throttle_and_stores_label(client, store, gateway):
    token = log_in(client, "rita")
    assert gateway.check(key_id="key-b").action == "throttle"

    client.post("/cases/2/dismiss", data={"csrf_token": token, "comment": "office NAT"})

    assert gateway.check(key_id="key-b").action == "allow"
    with Session(store.engine) as session:
        label = session.scalar(select(LabelRow))
    assert (label.subject, label.verdict, label.staff) == ("key-b", "benign", "rita")


def test_allowlist_case_and_notes(client, store):
    token = log_in(client, "rita")

    client.post("/cases/1/notes", data={"csrf_token": token, "body": "called them"})
    response = client.post("/cases/1/allowlist", data={"csrf_token": token, "duration": "30d", "comment": "partner"},
                           follow_redirects=False)

    assert response.status_code == 303
    assert _count(store, NoteRow) == 1
    assert "called them" in client.get("/cases/1").text
    assert "key-a" in client.get("/allowlist").text


def test_invalid_duration_names_field(client):
    token = log_in(client, "rita")

    response = client.post("/cases/1/suspend", data={"csrf_token": token, "duration": "soon", "comment": "x"})

    assert response.status_code == 400
    assert "invalid duration 'soon'" in unescape(response.text)


def test_lift_from_case_page(client, gateway):
    token = log_in(client, "rita")

    response = client.post("/decisions/throttle-key-b/lift", data={"csrf_token": token, "comment": "paid",
                                                                       "case_id": "2"}, follow_redirects=False)

    assert response.headers["location"] == "/cases/2?done=lift"
    assert gateway.check(key_id="key-b").action == "allow"


def test_lift_offered_for_decision_stamped_ahead(client, store, redis_client, redis_prefix, gateway):
    # A gateway clock running ahead stamps the event later than now, so the decision applies from when it was stored.
    ahead = replace(policy_decision("key-b", action="suspend", ident="suspend-key-b"),
                    detected_at=datetime.now(UTC) + timedelta(minutes=30))
    store.save_decisions([ahead])
    DecisionPublisher(redis_client, prefix=redis_prefix).publish([ahead])
    assert gateway.check(key_id="key-b").action == "suspend"
    log_in(client, "rita")

    page = client.get("/cases/2").text

    assert 'action="/decisions/suspend-key-b/lift"' in page
    assert '<tr class="active" data-decision="suspend-key-b">' in page


def test_bulk_dismiss(client, store):
    token = log_in(client, "rita")

    response = client.post("/cases/bulk", data={"csrf_token": token, "action": "dismiss", "case_id": ["1", "2"],
                                                "comment": "batch of false positives"}, follow_redirects=False)

    assert response.status_code == 303
    assert _case(store, 1).status == "resolved"
    assert _case(store, 2).status == "resolved"
    assert _case(store, 3).status == "open"
    assert _count(store, LabelRow) == 2
    assert client.post("/cases/bulk", data={"csrf_token": token, "action": "dismiss", "comment": "x"}).status_code == 400


def test_bulk_from_stale_queue_changes_nothing(client, store, redis_client, redis_prefix, gateway):
    token = log_in(client, "rita")
    queue = client.get("/").text
    seen = dict(re.findall(r'name="seen_(\d+)" value="([^"]+)"', queue))
    # Another member suspends key-b (case 2) after rita loaded the queue.
    StaffActions(store.engine, DecisionPublisher(redis_client, prefix=redis_prefix)).add_decision(
        "key", "key-b", "suspend", staff="adam", duration=timedelta(days=1), comment="chargebacks")

    response = client.post("/cases/bulk", data={
        "csrf_token": token, "action": "dismiss", "case_id": ["1", "2"], "comment": "false positives",
        "seen_1": seen["1"], "seen_2": seen["2"],
    })

    assert response.status_code == 409
    assert "case 2 changed at" in unescape(response.text)
    assert "nothing was changed" in unescape(response.text)
    assert _case(store, 1).status == "open"
    assert _case(store, 2).status == "open"
    assert gateway.check(key_id="key-b").action == "suspend"


def test_stale_case_page_gets_409(client, store, redis_client, redis_prefix, gateway):
    token = log_in(client, "rita")
    page = client.get("/cases/2").text
    [seen] = set(re.findall(r'name="seen" value="([^"]+)"', page))
    # Another member suspends key-b after rita opened the page.
    StaffActions(store.engine, DecisionPublisher(redis_client, prefix=redis_prefix)).add_decision(
        "key", "key-b", "suspend", staff="adam", duration=timedelta(days=1), comment="chargebacks")

    stale = client.post("/cases/2/dismiss", data={"csrf_token": token, "comment": "office NAT", "seen": seen})

    assert stale.status_code == 409
    assert "case 2 changed at" in unescape(stale.text)
    assert gateway.check(key_id="key-b").action == "suspend"
    assert _case(store, 2).status == "open"


def test_second_action_on_a_case_gets_409(client, store):
    token = log_in(client, "rita")

    first = client.post("/cases/1/suspend", data={"csrf_token": token, "duration": "6h", "comment": "resold"},
                        follow_redirects=False)
    second = client.post("/cases/1/throttle", data={"csrf_token": token, "limit_rpm": "5", "duration": "1h",
                                                    "comment": "slow"})

    assert first.status_code == 303
    assert second.status_code == 409
    assert "case 1 was already resolved by rita at" in unescape(second.text)
    assert _count(store, LabelRow) == 1


def test_parallel_console_actions_resolve_once(app, store):
    clients = [TestClient(app) for _ in range(4)]
    tokens = [log_in(client, "rita") for client in clients]
    start = threading.Barrier(len(clients))
    statuses: list[int] = []

    def suspend(client: TestClient, token: str) -> None:
        start.wait()
        response = client.post("/cases/1/suspend", data={"csrf_token": token, "duration": "6h", "comment": "resold"},
                               follow_redirects=False)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=suspend, args=pair) for pair in zip(clients, tokens)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [303, 409, 409, 409]
    assert _count(store, LabelRow) == 1
    with Session(store.engine) as session:
        assert session.scalar(select(func.count()).select_from(AuditRow).where(AuditRow.action == "suspend")) == 1


def test_bulk_refuses_every_case_when_one_is_resolved(client, store):
    token = log_in(client, "rita")
    client.post("/cases/2/dismiss", data={"csrf_token": token, "comment": "fine"})

    response = client.post("/cases/bulk", data={"csrf_token": token, "action": "dismiss", "case_id": ["1", "2", "3"],
                                                "comment": "batch"})

    assert response.status_code == 409
    assert "case 2 was already resolved by rita at" in unescape(response.text)
    assert "nothing was changed" in response.text
    assert _case(store, 1).status == "open"
    assert _case(store, 3).status == "open"
    assert _count(store, LabelRow) == 1


def test_bulk_counts_repeated_cases_once_and_says_so(client, store):
    token = log_in(client, "rita")

    response = client.post("/cases/bulk", data={"csrf_token": token, "action": "suspend", "case_id": ["1", "1", "3"],
                                                "duration": "1h", "comment": "resold"}, follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == "/?done=bulk-suspend&count=2"
    assert _count(store, LabelRow) == 2
    page = client.get(response.headers["location"]).text
    assert "Bulk action carried out on 2 cases." in page
    assert "All or none: every ticked case is checked first." in page


def test_forms_store_ip_subjects_canonically(client, store):
    token = log_in(client, "rita")

    opened = client.post("/cases", data={"csrf_token": token, "subject_type": "ip", "subject": "2001:DB8:0:0:0:0:0:99",
                                         "comment": "ticket"}, follow_redirects=False)
    client.post("/allowlist", data={"csrf_token": token, "subject_type": "ip", "subject": "::ffff:198.51.100.7",
                                    "duration": "7d", "comment": "office"})
    bad_case = client.post("/cases", data={"csrf_token": token, "subject_type": "ip", "subject": "not-an-ip",
                                           "comment": "x"})
    bad_entry = client.post("/allowlist", data={"csrf_token": token, "subject_type": "ip", "subject": "not-an-ip",
                                                "duration": "7d", "comment": "x"})

    assert opened.headers["location"] == "/cases/4?done=open"
    assert _case(store, 4).subject == "2001:db8::99"
    with Session(store.engine) as session:
        assert "198.51.100.7" in session.scalars(select(AllowlistRow.subject)).all()
    for refused in (bad_case, bad_entry):
        assert refused.status_code == 400
        assert "invalid ip subject 'not-an-ip'; give an IPv4 or IPv6 address" in unescape(refused.text)


@pytest.mark.parametrize("limit", ["0", "1000001", "99999999999999999999"])
def test_throttle_limit_out_of_range(client, store, limit):
    token = log_in(client, "rita")

    single = client.post("/cases/1/throttle", data={"csrf_token": token, "limit_rpm": limit, "duration": "1h",
                                                    "comment": "x"})
    bulk = client.post("/cases/bulk", data={"csrf_token": token, "action": "throttle", "case_id": ["1"],
                                            "limit_rpm": limit, "duration": "1h", "comment": "x"})

    for response in (single, bulk):
        assert response.status_code == 400
        assert "from 1 to 1,000,000" in unescape(response.text)
    assert _case(store, 1).status == "open"


def test_open_case_by_hand(client, store):
    token = log_in(client, "rita")

    response = client.post("/cases", data={"csrf_token": token, "subject_type": "account", "subject": "acct-7",
                                           "comment": "ticket 4"}, follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == "/cases/4?done=open"
    assert _case(store, 4).opened_by == "staff:rita"


def test_allowlist_page_add_and_remove(client, store):
    token = log_in(client, "rita")

    client.post("/allowlist", data={"csrf_token": token, "subject_type": "key", "subject": "key-x", "duration": "7d",
                                    "comment": "trial"})
    client.post("/allowlist/1/remove", data={"csrf_token": token, "comment": "ended"})

    page = client.get("/allowlist").text
    assert "key-x" in page
    assert "key-old" not in page
    assert "key-old" in client.get("/allowlist?all=1").text


def test_audit_page_lists_actions(client):
    token = log_in(client, "rita")
    client.post("/cases/1/notes", data={"csrf_token": token, "body": "called them"})

    page = client.get("/audit").text

    assert "rita" in page
    assert "called them" in page
    assert "rita" not in client.get("/audit?staff=adam").text.split("<tbody>")[1]


def test_admin_adds_staff(client, store):
    token = log_in(client, "adam")

    response = client.post("/staff", data={"csrf_token": token, "name": "eve", "role": "viewer", "password": PASSWORD},
                           follow_redirects=False)
    short = client.post("/staff", data={"csrf_token": token, "name": "fay", "role": "viewer", "password": "short"})

    assert response.status_code == 303
    assert "eve" in client.get("/staff").text
    assert short.status_code == 400
    assert "password too short" in short.text


def test_static_stylesheet_served(client):
    assert "font-family" in client.get("/static/console.css").text


# Privacy of addresses ------------------------------------------------------------


def test_viewer_sees_network_and_pseudonym_only(client, app):
    log_in(client, "vera")
    masked = mask_address(ADDRESS, app.state.console.pseudonym_key)

    queue = client.get("/").text
    case = client.get("/cases/3").text

    assert ADDRESS not in queue
    assert ADDRESS not in case
    assert masked in queue
    assert "203.0.113.0/24 ~" in case


# Each spelling the mask once missed, and the full address it must hide.
SPELLINGS = {
    "host 198.51.100.23/32": "198.51.100.23",
    "net 2001:db8:1::77/128": "2001:db8:1::77",
    "seen from 198.51.100.24.": "198.51.100.24",
    "then 2001:db8::1.": "2001:db8::1",
    "build v1.198.51.100.26": "198.51.100.26",
    "mapped ::FFFF:198.51.100.27, ok": "198.51.100.27",
    "zero-padded 198.51.100.028": "198.51.100.028",
    "after a word and colon ip:2001:db8::5": "2001:db8::5",
    "seen_from:2001:db8:1:2:3:4:5:6": "2001:db8:1:2:3:4:5:6",
    "after a hex word deadbeef:2001:db8::9": "2001:db8::9",
}
LEAKY = " ".join(SPELLINGS)


@pytest.mark.parametrize("text", SPELLINGS)
def test_mask_hides_every_spelling(text):
    masked = mask_text(text, b"k")

    assert SPELLINGS[text] not in masked.lower()
    assert "/24 ~" in masked or "/48 ~" in masked


def test_mask_keeps_networks_that_name_no_host():
    assert mask_text("blocks 198.51.100.0/24 and 2001:db8::/32, not 12:30:45 or 1.2.3", b"k") == (
        "blocks 198.51.100.0/24 and 2001:db8::/32, not 12:30:45 or 1.2.3"
    )


def test_viewer_sees_no_full_address_on_any_page(client, store, redis_client, redis_prefix):
    token = log_in(client, "rita")
    client.post("/cases/1/notes", data={"csrf_token": token, "body": LEAKY})
    client.post("/cases/2/dismiss", data={"csrf_token": token, "comment": LEAKY})
    client.post("/allowlist", data={"csrf_token": token, "subject_type": "key", "subject": "key-z", "duration": "7d",
                                    "comment": LEAKY})
    client.post("/cases", data={"csrf_token": token, "subject_type": "account", "subject": "acct-v1.198.51.100.26",
                                "comment": LEAKY})
    StaffActions(store.engine, DecisionPublisher(redis_client, prefix=redis_prefix)).add_decision(
        "key", "key-a", "review", staff="rita", duration=timedelta(hours=1), comment=LEAKY,
    )
    client.post("/logout", data={"csrf_token": token})
    log_in(client, "vera")

    for path in ("/", "/?status=all", "/cases/1", "/cases/2", "/cases/4", "/allowlist", "/allowlist?all=1", "/audit"):
        page = unescape(client.get(path).text).lower()
        for address in SPELLINGS.values():
            assert address not in page, (path, address)
    assert "198.51.100.0/24 ~" in client.get("/cases/1").text


def test_reviewer_sees_full_address(client):
    log_in(client, "rita")

    assert ADDRESS in client.get("/cases/3").text


# Language ------------------------------------------------------------------------


def test_language_follows_browser_then_choice(client):
    token = log_in(client, "rita")

    chinese = client.get("/", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
    assert "案件队列" in chinese.text
    assert chinese.headers["content-language"] == "zh-CN"
    assert "Case queue" in client.get("/", headers={"Accept-Language": "en-GB"}).text

    response = client.post("/language", data={"csrf_token": token, "language": "zh_CN", "next": "/cases/1"},
                           follow_redirects=False)
    assert response.headers["location"] == "/cases/1"
    assert "案件队列" in client.get("/", headers={"Accept-Language": "en"}).text
    assert client.post("/language", data={"csrf_token": token, "language": "fr"}).status_code == 400


@pytest.mark.parametrize(("path", "form", "back"), [
    ("/cases/1/suspend", {"duration": "soon", "comment": "x"}, "/cases/1"),
    ("/cases/bulk", {"action": "dismiss", "case_id": "99", "comment": "x"}, "/"),
    ("/allowlist", {"subject_type": "ip", "subject": "not-an-address", "duration": "7d", "comment": "x"}, "/allowlist"),
])
def test_language_switch_on_error_page(client, path, form, back):
    token = log_in(client, "rita")
    failed = client.post(path, data={"csrf_token": token, **form})
    assert failed.status_code >= 400
    next_path = re.search(r'name="next" value="([^"]*)"', failed.text).group(1)

    switched = client.post("/language", data={"csrf_token": token, "language": "zh_CN", "next": unescape(next_path)})

    assert switched.status_code == 200
    assert switched.url.path == back


def test_login_page_in_browser_language(client):
    assert "登录审核控制台" in client.get("/login", headers={"Accept-Language": "zh"}).text


# Hardening -----------------------------------------------------------------------


def test_pages_carry_security_headers(client):
    log_in(client, "vera")

    response = client.get("/cases/1")

    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"


def test_note_markup_is_escaped(client):
    token = log_in(client, "rita")

    client.post("/cases/1/notes", data={"csrf_token": token, "body": "<script>alert(1)</script>"})

    page = client.get("/cases/1").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_unknown_case_action_rejected(client, store):
    token = log_in(client, "rita")

    unknown = client.post("/cases/1/delete", data={"csrf_token": token, "comment": "x"})
    missing = client.post("/cases/999/dismiss", data={"csrf_token": token, "comment": "x"})

    assert unknown.status_code == 400
    assert "unknown case action" in unknown.text
    assert missing.status_code == 404
    assert _count(store, AuditRow) == 1


def test_expired_session_rejected(client, store):
    from sqlalchemy import update

    from detector.store.review_models import StaffSessionRow

    log_in(client, "rita")
    with Session(store.engine) as session, session.begin():
        session.execute(update(StaffSessionRow).values(expires_at=StaffSessionRow.created_at))

    assert client.get("/", follow_redirects=False).status_code == 303
