"""Staff actions on every store backend: cases, decisions in Redis, labels and audit records."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from detector.review.actions import StaffActions
from detector.review.audit import AuditLog
from detector.review.cases import CaseFilter, CaseQueue
from detector.review.errors import ConflictError, PublishError, ReviewError, StaleCaseError
from detector.store import open_store
from detector.store.allowlist import StaffAllowlist
from detector.store.models import DecisionRow, LabelRow
from detector.store.review_models import AuditRow, CaseRow
from fairuse_gateway import DecisionClient
from tests.conftest import REDIS_URL
from tests.review_support import policy_decision
from workers.publish import DecisionPublisher


@pytest.fixture
def store(database_url):
    return open_store(database_url)


@pytest.fixture
def actions(store, redis_client, redis_prefix):
    return StaffActions(store.engine, DecisionPublisher(redis_client, prefix=redis_prefix))


@pytest.fixture
def gateway(redis_prefix):
    return DecisionClient(REDIS_URL, prefix=redis_prefix, cache_seconds=0.0)


@pytest.fixture
def queue(store):
    return CaseQueue(store.engine)


def _labels(store):
    with Session(store.engine) as session:
        return list(session.scalars(select(LabelRow).order_by(LabelRow.id)))


def test_review_decisions_open_one_case_per_subject(store, queue):
    store.save_decisions([
        policy_decision("key-a", score=60, ident="a1"),
        policy_decision("key-a", score=80, reasons=("abnormal_cost",), ident="a2"),
        policy_decision("key-b", score=90, ident="b1"),
        policy_decision("key-c", action="suspend", ident="c1"),
    ])

    assert queue.sync() == 2
    assert queue.sync() == 0

    cases = queue.list()
    assert [case.subject for case in cases] == ["key-b", "key-a"]
    assert cases[1].score == 80
    assert cases[1].reasons == ["abnormal_cost", "key_sharing"]
    assert cases[1].plan == "text"
    assert cases[1].opened_by == "policy"


def test_queue_filters_and_sorts(store, queue):
    store.save_decisions([
        policy_decision("key-a", score=60, plan="text", ident="a"),
        policy_decision("key-b", score=90, plan="pro", reasons=("abnormal_cost",), ident="b"),
        policy_decision("key-c", score=75, plan="text", ident="c"),
    ])
    queue.sync()

    assert [case.subject for case in queue.list(CaseFilter(sort="score", descending=False))] == ["key-a", "key-c", "key-b"]
    assert [case.subject for case in queue.list(CaseFilter(plan="text"))] == ["key-c", "key-a"]
    assert [case.subject for case in queue.list(CaseFilter(reason="abnormal_cost"))] == ["key-b"]
    assert [case.subject for case in queue.list(CaseFilter(min_score=70))] == ["key-b", "key-c"]
    assert queue.list(CaseFilter(min_age_hours=1)) == []
    assert queue.list(CaseFilter(status="resolved")) == []
    with pytest.raises(ReviewError, match="invalid sort key 'size'"):
        CaseFilter(sort="size")


def test_suspend_reaches_gateway_and_labels_abuse(store, queue, actions, gateway):
    store.save_decisions([policy_decision("key-a", ident="review-a")])
    queue.sync()
    case = queue.list()[0]

    decision = actions.suspend(case.id, staff="alice", duration=timedelta(hours=6), comment="resold on a forum")

    verdict = gateway.check(key_id="key-a")
    assert verdict.action == "suspend"
    assert verdict.decision_id == decision.id
    assert decision.origin == "staff:alice"
    assert decision.reasons == ["key_sharing"]
    assert queue.get(case.id).status == "resolved"
    assert queue.get(case.id).resolution == "suspended"
    [label] = _labels(store)
    assert (label.verdict, label.decision_id, label.staff) == ("abuse", "review-a", "alice")
    assert label.reasons == ["key_sharing"]


def test_throttle_carries_limit_to_gateway(store, queue, actions, gateway):
    store.save_decisions([policy_decision("key-a")])
    queue.sync()

    actions.throttle(queue.list()[0].id, staff="alice", limit_rpm=5, duration=timedelta(hours=1),
                     comment="slow it down", scope="images")

    verdict = gateway.check(key_id="key-a")
    assert verdict.action == "throttle"
    assert verdict.limit_rpm == 5
    assert verdict.scope == "images"


def test_bulk_suspend_rejects_unknown_scope(store, queue, actions, gateway):
    store.save_decisions([policy_decision("key-a")])
    queue.sync()
    case_id = queue.list()[0].id

    with pytest.raises(ReviewError, match="invalid scope 'everything'"):
        actions.resolve_cases([case_id], "suspend", staff="alice", comment="resold", duration=timedelta(hours=1),
                              scope="everything")

    assert queue.get(case_id).status == "open"
    assert gateway.check(key_id="key-a").action == "allow"


def test_dismiss_lifts_only_exact_subject(store, queue, actions, gateway):
    # MariaDB compares text case-insensitively by default, but key ids are case-sensitive.
    store.save_decisions([
        policy_decision("key-a", ident="review-a"),
        policy_decision("key-a", action="throttle", ident="throttle-a"),
        policy_decision("KEY-A", action="suspend", ident="suspend-upper"),
    ])
    queue.sync()
    DecisionPublisher(actions.publisher.client, prefix=actions.publisher.prefix).publish(store.active_decisions())
    case_id = queue.list()[0].id

    lifted = actions.dismiss(case_id, staff="bob", comment="a team behind one NAT")

    assert [decision.id for decision in lifted] == ["throttle-a"]
    assert gateway.check(key_id="KEY-A").action == "suspend"
    assert [decision.id for decision in queue.detail(case_id).decisions] == ["throttle-a", "review-a"]
    [audit] = [record for record in AuditLog(store.engine).records() if record.action == "dismiss"]
    assert [entry["id"] for entry in audit.before["in_force"]] == ["review-a", "throttle-a"]


def test_dismiss_on_changed_case_rejected(store, queue, actions, gateway):
    store.save_decisions([policy_decision("key-a", ident="review-a")])
    queue.sync()
    case = queue.list()[0]
    seen = queue.get(case.id).updated_at
    # Another member suspends the key while the first still has the case page open.
    actions.add_decision("key", "key-a", "suspend", staff="carol", duration=timedelta(days=1), comment="card fraud")

    with pytest.raises(StaleCaseError, match=f"case {case.id} changed at .* Reload the case"):
        actions.dismiss(case.id, staff="bob", comment="looked fine", seen=seen)

    assert gateway.check(key_id="key-a").action == "suspend"
    assert queue.get(case.id).status == "open"
    assert _labels(store) == []
    lifted = actions.dismiss(case.id, staff="bob", comment="fine after all", seen=queue.get(case.id).updated_at)
    assert [decision.action for decision in lifted] == ["suspend"]


@pytest.mark.parametrize("change", ["lift", "allowlist", "unallowlist"])
def test_suspend_after_subject_change_rejected(store, queue, actions, change):
    store.save_decisions([
        policy_decision("key-a", ident="review-a"),
        policy_decision("key-a", action="throttle", ident="throttle-a"),
    ])
    queue.sync()
    entry = actions.add_allowlist("key", "key-a", staff="carol", duration=timedelta(days=1), comment="partner")
    case = queue.list()[0]
    seen = queue.get(case.id).updated_at
    # Another member changes what the case page shows while the first still has it open.
    if change == "lift":
        store.save_decisions([policy_decision("key-a", action="throttle", ident="throttle-a2")])
        actions.lift("throttle-a2", staff="carol", comment="paid")
    elif change == "allowlist":
        actions.add_allowlist("key", "key-a", staff="carol", duration=timedelta(days=7), comment="renewed")
    else:
        actions.remove_allowlist(entry.id, staff="carol", comment="partner left")

    with pytest.raises(StaleCaseError, match=f"case {case.id} changed at"):
        actions.suspend(case.id, staff="bob", duration=timedelta(hours=6), comment="resold", seen=seen)

    assert queue.get(case.id).status == "open"


def test_dismiss_lifts_enforcement_and_labels_benign(store, queue, actions, gateway):
    store.save_decisions([
        policy_decision("key-a", ident="review-a"),
        policy_decision("key-a", action="throttle", ident="throttle-a"),
    ])
    queue.sync()
    assert gateway.check(key_id="key-a").action == "allow"  # not published yet
    DecisionPublisher(actions.publisher.client, prefix=actions.publisher.prefix).publish(store.active_decisions())
    assert gateway.check(key_id="key-a").action == "throttle"

    lifted = actions.dismiss(queue.list()[0].id, staff="bob", comment="a team behind one NAT")

    assert [decision.id for decision in lifted] == ["throttle-a"]
    assert gateway.check(key_id="key-a").action == "allow"
    assert [decision.id for decision in store.active_decisions()] == ["review-a"]
    [ended] = [decision for decision in store.all_decisions() if decision.id == "throttle-a"]
    assert "lifted_at" in ended.extra  # so policy does not count it as an earlier offence
    [label] = _labels(store)
    assert label.verdict == "benign"
    assert label.comment == "a team behind one NAT"


def test_lift_ends_decision_and_keeps_record(store, actions, gateway):
    decision = actions.add_decision("key", "key-z", "suspend", staff="alice", duration=timedelta(days=1),
                                    comment="chargeback fraud")
    assert gateway.check(key_id="key-z").action == "suspend"

    actions.lift(decision.id, staff="bob", comment="customer paid")

    assert gateway.check(key_id="key-z").action == "allow"
    with Session(store.engine) as session:
        row = session.get(DecisionRow, decision.id)
    assert row.expires_at <= datetime.now(UTC)
    with pytest.raises(ReviewError, match="is not in force"):
        actions.lift(decision.id, staff="bob", comment="again")


def test_audit_records_before_and_after(store, queue, actions):
    store.save_decisions([policy_decision("key-a", ident="review-a")])
    queue.sync()
    case_id = queue.list()[0].id

    decision = actions.suspend(case_id, staff="alice", duration=timedelta(hours=6), comment="resold")

    [record] = AuditLog(store.engine).records(case_id=case_id)
    assert (record.staff, record.action, record.reason) == ("alice", "suspend", "resold")
    assert record.decision_id == decision.id
    assert record.before["open_case"] == case_id
    assert [entry["id"] for entry in record.before["in_force"]] == ["review-a"]
    assert [entry["id"] for entry in record.after["in_force"]] == ["review-a", decision.id]
    assert record.after["case"] == {"id": case_id, "status": "resolved", "resolution": "suspended"}


def test_allowlist_case_lifts_and_is_listed(store, queue, actions, gateway):
    store.save_decisions([policy_decision("key-a", ident="review-a"), policy_decision("key-a", action="suspend", ident="s")])
    actions.publisher.publish(store.active_decisions())
    queue.sync()

    entry = actions.allowlist_case(queue.list()[0].id, staff="alice", duration=timedelta(days=30), comment="partner")

    assert gateway.check(key_id="key-a").action == "allow"
    allowlist = StaffAllowlist(store.engine)
    assert [item.id for item in allowlist.entries()] == [entry.id]
    assert allowlist.active_among([("key", "key-a"), ("key", "key-b")]) == {("key", "key-a")}
    assert _labels(store)[0].verdict == "benign"

    actions.remove_allowlist(entry.id, staff="bob", comment="partnership ended")
    assert allowlist.active_among([("key", "key-a")]) == set()


def test_note_and_case_by_hand(store, queue, actions):
    case = actions.open_case("account", "acct-9", staff="alice", comment="support ticket 12")
    actions.add_note(case.id, staff="alice", body="asked the customer")

    detail = queue.detail(case.id)
    assert detail.case.opened_by == "staff:alice"
    assert [note.body for note in detail.notes] == ["asked the customer"]
    assert [record.action for record in detail.audit] == ["note", "open_case"]
    with pytest.raises(ReviewError, match="already has open case"):
        actions.open_case("account", "acct-9", staff="bob", comment="again")


def test_resolved_case_rejects_second_action(store, queue, actions):
    store.save_decisions([policy_decision("key-a")])
    queue.sync()
    case_id = queue.list()[0].id
    actions.dismiss(case_id, staff="alice", comment="fine")

    with pytest.raises(ConflictError, match=f"case {case_id} was already resolved by alice at .* UTC \\(dismissed\\)"):
        actions.suspend(case_id, staff="bob", duration=timedelta(hours=1), comment="changed my mind")


def test_bad_input_rejected_with_fix(actions):
    with pytest.raises(ReviewError, match="missing comment"):
        actions.add_decision("key", "k", "suspend", staff="a", duration=timedelta(hours=1), comment=" ")
    with pytest.raises(ReviewError, match="invalid duration"):
        actions.add_decision("key", "k", "suspend", staff="a", duration=timedelta(seconds=5), comment="x")
    with pytest.raises(ReviewError, match="invalid subject type 'user'"):
        actions.add_decision("user", "k", "suspend", staff="a", duration=timedelta(hours=1), comment="x")
    with pytest.raises(ReviewError, match="a throttle needs --limit-rpm"):
        actions.add_decision("key", "k", "throttle", staff="a", duration=timedelta(hours=1), comment="x")


def test_redis_down_stores_nothing(store, queue, redis_prefix):
    store.save_decisions([policy_decision("key-a")])
    queue.sync()
    case_id = queue.list()[0].id
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    actions = StaffActions(store.engine, DecisionPublisher(unreachable, prefix=redis_prefix))

    with pytest.raises(PublishError, match="nothing was stored"):
        actions.suspend(case_id, staff="alice", duration=timedelta(hours=1), comment="resold")

    assert queue.get(case_id).status == "open"
    assert [decision.origin for decision in store.all_decisions()] == ["key_sharing/1+policy/default-1"]
    assert AuditLog(store.engine).records() == []
    with Session(store.engine) as session:
        assert session.scalar(select(CaseRow.status)) == "open"


def test_recent_expired_reviews_open_cases(store, queue):
    from dataclasses import replace

    now = datetime.now(UTC)
    old_log = policy_decision("key-old-log", ident="from-old-log")
    old_log = replace(old_log, detected_at=now - timedelta(days=20), expires_at=now - timedelta(days=13))
    forgotten = replace(old_log, id="forgotten", subject="key-forgotten")
    store.save_decisions([old_log])
    store.save_decisions([forgotten], stored_at=now - timedelta(days=8))

    queue.sync()

    assert [case.subject for case in queue.list()] == ["key-old-log"]


def test_queue_sorts_by_reason(store, queue):
    store.save_decisions([
        policy_decision("key-a", reasons=("key_sharing",), ident="a"),
        policy_decision("key-b", reasons=("abnormal_cost",), ident="b"),
    ])
    queue.sync()

    ascending = queue.list(CaseFilter(sort="reason", descending=False))

    assert [case.subject for case in ascending] == ["key-b", "key-a"]


# Concurrent and bulk actions ----------------------------------------------------


def _staff_decisions(store, subject: str) -> list[DecisionRow]:
    with Session(store.engine) as session:
        return list(session.scalars(
            select(DecisionRow).where(DecisionRow.subject == subject, DecisionRow.origin.like("staff:%"))
        ))


def _audit_actions(store, *actions: str) -> list[AuditRow]:
    with Session(store.engine) as session:
        return list(session.scalars(select(AuditRow).where(AuditRow.action.in_(actions))))


def test_parallel_actions_resolve_a_case_once(store, queue, actions):
    store.save_decisions([policy_decision("key-race")])
    queue.sync()
    case_id = queue.list()[0].id
    start = threading.Barrier(8)
    outcomes: list[object] = []

    def act(number: int) -> None:
        start.wait()
        try:
            if number % 2:
                actions.suspend(case_id, staff=f"s{number}", duration=timedelta(hours=1), comment=f"race {number}")
            else:
                actions.throttle(case_id, staff=f"s{number}", limit_rpm=5, duration=timedelta(hours=1),
                                 comment=f"race {number}")
            outcomes.append("resolved")
        except ReviewError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=act, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("resolved") == 1, outcomes
    refused = [outcome for outcome in outcomes if outcome != "resolved"]
    assert all(isinstance(error, ConflictError) for error in refused), refused
    winner = queue.get(case_id).resolved_by
    assert all(f"case {case_id} was already resolved by {winner} at " in str(error) for error in refused)
    assert len(_staff_decisions(store, "key-race")) == 1
    assert len(_labels(store)) == 1
    assert len(_audit_actions(store, "suspend", "throttle")) == 1


def test_parallel_hand_opens_make_one_case(store, queue, actions):
    start = threading.Barrier(8)
    outcomes: list[object] = []

    def open_case(number: int) -> None:
        start.wait()
        try:
            outcomes.append(actions.open_case("key", "key-twice", staff=f"s{number}", comment=f"ticket {number}").id)
        except ReviewError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=open_case, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    opened = [outcome for outcome in outcomes if isinstance(outcome, int)]
    rejected = [outcome for outcome in outcomes if not isinstance(outcome, int)]
    assert len(opened) == 1, outcomes
    assert all("already has open case" in str(error) for error in rejected), rejected
    assert [case.id for case in queue.list()] == opened


def test_sync_links_review_to_hand_opened_case(store, queue, actions):
    case = actions.open_case("key", "key-hand", staff="alice", comment="customer complaint")
    store.save_decisions([policy_decision("key-hand")])

    queue.sync()

    assert [listed.id for listed in queue.list()] == [case.id]


def test_subject_reopens_after_resolution(store, queue, actions):
    first = actions.open_case("key", "key-again", staff="alice", comment="first look")
    actions.dismiss(first.id, staff="alice", comment="fine")

    second = actions.open_case("key", "key-again", staff="alice", comment="second look")

    assert second.id != first.id
    assert [case.id for case in queue.list()] == [second.id]


def test_subjects_differing_in_case_get_own_cases(store, queue, actions):
    # MariaDB compares text ignoring case by default, but "Key-Case" and "key-case" are two API keys.
    lower = actions.open_case("key", "key-case", staff="alice", comment="first key")
    upper = actions.open_case("key", "Key-Case", staff="alice", comment="second key")
    store.save_decisions([policy_decision("KEY-CASE")])

    queue.sync()

    cases = {case.subject: case.id for case in queue.list()}
    assert cases["key-case"] == lower.id
    assert cases["Key-Case"] == upper.id
    assert set(cases) == {"key-case", "Key-Case", "KEY-CASE"}


def test_bulk_resolve_is_all_or_none(store, queue, actions):
    store.save_decisions([policy_decision(f"key-{name}", ident=f"r-{name}") for name in "abc"])
    queue.sync()
    first, resolved, last = (case.id for case in queue.list(CaseFilter(sort="age", descending=False)))
    actions.dismiss(resolved, staff="alice", comment="fine")

    with pytest.raises(ConflictError) as refused:
        actions.resolve_cases([first, resolved, last, 999], "dismiss", staff="bob", comment="batch")

    message = str(refused.value)
    assert f"case {resolved} was already resolved by alice" in message
    assert "case 999 not found" in message
    assert "nothing was changed" in message
    assert queue.get(first).status == "open"
    assert queue.get(last).status == "open"
    assert len(_labels(store)) == 1


def test_bulk_resolve_counts_repeated_ids_once(store, queue, actions, gateway):
    store.save_decisions([policy_decision(f"key-{name}", ident=f"r-{name}") for name in "ab"])
    queue.sync()
    first, second = (case.id for case in queue.list())

    done = actions.resolve_cases([first, first, second, first], "suspend", staff="bob", comment="resold",
                                 duration=timedelta(hours=2))

    assert done == [first, second]
    assert len(_labels(store)) == 2
    assert len(_audit_actions(store, "suspend")) == 2
    assert gateway.check(key_id="key-a").action == "suspend"
    assert gateway.check(key_id="key-b").action == "suspend"


# Subjects and limits staff type ---------------------------------------------------


def test_ip_subjects_stored_in_the_spelling_gateways_check(store, actions, gateway):
    decision = actions.add_decision("ip", "2001:DB8:0:0:0:0:0:99", "suspend", staff="a", duration=timedelta(hours=1),
                                    comment="abuse")
    case = actions.open_case("ip", "::FFFF:198.51.100.8", staff="a", comment="ticket")
    entry = actions.add_allowlist("ip", "2001:DB8::5", staff="a", duration=timedelta(days=1), comment="office")

    assert decision.subject == "2001:db8::99"
    assert gateway.check(ip="2001:DB8:0:0:0:0:0:99").action == "suspend"
    assert gateway.check(ip="2001:db8::99").action == "suspend"
    assert case.subject == "198.51.100.8"
    assert entry.subject == "2001:db8::5"
    assert StaffAllowlist(store.engine).active_among([("ip", "2001:db8::5")]) == {("ip", "2001:db8::5")}


@pytest.mark.parametrize("call", ["add_decision", "open_case", "add_allowlist"])
def test_non_address_ip_subject_rejected(actions, call):
    arguments = {
        "add_decision": dict(action="suspend", duration=timedelta(hours=1), comment="x"),
        "open_case": dict(comment="x"),
        "add_allowlist": dict(duration=timedelta(days=1), comment="x"),
    }[call]
    action = arguments.pop("action", None)
    subject = ("ip", "not-an-ip", action) if action else ("ip", "not-an-ip")

    with pytest.raises(ReviewError, match="invalid ip subject 'not-an-ip'; give an IPv4 or IPv6 address"):
        getattr(actions, call)(*subject, staff="a", **arguments)


def test_control_characters_and_long_ids_rejected_readably(actions):
    with pytest.raises(ReviewError, match=r"character 2 is the control character U\+0001"):
        actions.add_decision("key", "a\x01b", "suspend", staff="a", duration=timedelta(hours=1), comment="x")
    with pytest.raises(ReviewError, match="control character U\\+200B"):
        actions.open_case("account", "acct\u200b7", staff="a", comment="x")

    with pytest.raises(ReviewError) as too_long:
        actions.add_decision("key", "k" * 5000, "suspend", staff="a", duration=timedelta(hours=1), comment="x")

    assert "(5000 characters)" in str(too_long.value)
    assert len(str(too_long.value)) < 300


@pytest.mark.parametrize("limit", [0, 1_000_001, 2**63 - 1, 99999999999999999999])
def test_throttle_limit_out_of_range_rejected(store, queue, actions, limit):
    store.save_decisions([policy_decision("key-a")])
    queue.sync()

    with pytest.raises(ReviewError, match="from 1 to 1,000,000"):
        actions.throttle(queue.list()[0].id, staff="a", limit_rpm=limit, duration=timedelta(hours=1), comment="x")
    with pytest.raises(ReviewError, match="from 1 to 1,000,000"):
        actions.add_decision("key", "key-b", "throttle", staff="a", duration=timedelta(hours=1), comment="x",
                             limit_rpm=limit)

    assert queue.list()[0].status == "open"
