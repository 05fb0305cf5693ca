"""Tests for evaluate(): recall, time to detect and false actions from hand-made labels and decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from rich.console import Console

from detector.evaluate import detection_delays, evaluate, render_report

LABELS = """key_id,account_id,plan,kind,is_abuse,expected_reason,onset
key-1,acct-1,text,bot,1,automation,2026-11-24T10:00:00.000Z
key-2,acct-2,text,bot,1,automation,2026-11-24T12:00:00.000Z
key-3,acct-3,text,resold_key,1,key_sharing,2026-11-25T00:00:00.000Z
key-4,acct-3,text,normal,0,,
key-5,acct-5,text,normal,0,,
key-6,acct-6,coding,cron_job,0,,
key-7,acct-7,coding,cron_job,0,,
key-8,acct-8,coding,cost_spike,1,abnormal_cost,2026-11-24T00:00:00.000Z
"""


def at(text: str, **shift: float) -> str:
    """Return an RFC 3339 time ``shift`` (timedelta arguments) after ``text``."""
    moment = datetime.fromisoformat(text) + timedelta(**shift)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def decision(subject_type: str, subject: str, action: str, reasons: list[str], detected_at: str) -> dict:
    return {
        "subject_type": subject_type,
        "subject": subject,
        "action": action,
        "reasons": reasons,
        "detected_at": detected_at,
        "simulated": True,
    }


DECISIONS = [
    # key-1: caught 10 minutes after onset.
    decision("key", "key-1", "throttle", ["automation"], at("2026-11-24T10:00:00Z", minutes=10)),
    # key-2: an enforcing decision an hour before onset, then only a review with the wrong reason.
    decision("key", "key-2", "throttle", ["automation"], at("2026-11-24T12:00:00Z", hours=-1)),
    decision("key", "key-2", "review", ["key_sharing"], at("2026-11-24T12:00:00Z", hours=1)),
    # acct-3: an account suspension covers key-3 (abuse) and key-4 (benign).
    decision("account", "acct-3", "suspend", ["key_sharing"], at("2026-11-25T00:00:00Z", minutes=30)),
    # key-5: review only.
    decision("key", "key-5", "review", ["anomaly"], "2026-11-26T08:00:00Z"),
    # key-6: a review and a throttle: a false action, not review only.
    decision("key", "key-6", "review", ["automation"], "2026-11-26T08:00:00Z"),
    decision("key", "key-6", "throttle", ["automation"], "2026-11-26T09:00:00+00:00"),
    # key-8: detected two minutes before onset, inside the tolerance.
    decision("key", "key-8", "suspend", ["abnormal_cost"], at("2026-11-24T00:00:00Z", minutes=-2)),
    # Neither an IP nor an unknown key can be tied to a labelled key.
    decision("ip", "203.0.113.7", "throttle", ["key_sharing"], "2026-11-26T08:00:00Z"),
    decision("key", "key-999", "suspend", ["automation"], "2026-11-26T08:00:00Z"),
]


def write_files(tmp_path, labels: str, decisions: list[dict]):
    labels_path = tmp_path / "labels.csv"
    labels_path.write_text(labels)
    decisions_path = tmp_path / "decisions.jsonl"
    decisions_path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in decisions))
    return labels_path, decisions_path


@pytest.fixture
def report(tmp_path):
    return evaluate(*write_files(tmp_path, LABELS, DECISIONS))


def abuse_row(report, kind):
    return next(result for result in report.abuse if result.kind == kind)


def benign_row(report, kind):
    return next(result for result in report.benign if result.kind == kind)


def test_recall_per_abuse_kind(report):
    assert abuse_row(report, "bot").keys == 2
    assert abuse_row(report, "bot").caught == 1
    assert abuse_row(report, "bot").recall == 0.5
    assert abuse_row(report, "resold_key").recall == 1.0
    assert abuse_row(report, "cost_spike").recall == 1.0


def test_any_reason_counts_wrong_reason(report):
    bot = abuse_row(report, "bot")
    assert bot.caught_any_reason == 2
    assert bot.any_reason_recall == 1.0


def test_decision_before_onset_not_counted(report):
    bot = abuse_row(report, "bot")
    assert bot.caught == 1
    assert bot.acted_before_onset == 1


def test_time_to_detect(report):
    assert abuse_row(report, "bot").median_seconds_to_detect == 600.0
    assert abuse_row(report, "bot").p95_seconds_to_detect == 600.0
    assert abuse_row(report, "resold_key").median_seconds_to_detect == 1800.0


def test_detection_within_tolerance_is_immediate(report):
    cost_spike = abuse_row(report, "cost_spike")
    assert cost_spike.caught == 1
    assert cost_spike.median_seconds_to_detect == 0.0


def test_account_decision_covers_its_keys(report):
    assert abuse_row(report, "resold_key").caught == 1
    assert benign_row(report, "normal").false_action_keys == 1


def test_false_actions_and_reviews_per_benign_kind(report):
    normal = benign_row(report, "normal")
    assert (normal.keys, normal.false_action_keys, normal.review_only_keys) == (2, 1, 1)
    cron = benign_row(report, "cron_job")
    assert (cron.keys, cron.false_action_keys, cron.review_only_keys) == (2, 1, 0)
    assert cron.false_action_share == 0.5
    assert cron.review_share == 0.0


def test_benign_totals(report):
    total = report.benign_total
    assert total.keys == 4
    assert total.false_action_keys == 2
    assert total.review_only_keys == 1
    assert total.false_action_share == 0.5
    assert total.review_share == 0.25


def test_overall_recall_is_lowest_kind(report):
    assert report.abuse_recall == 0.5
    assert report.pooled_abuse_recall == 0.75


def test_detection_delays_per_key(tmp_path):
    labels, decisions = write_files(tmp_path, LABELS, DECISIONS)
    delays = detection_delays(labels, decisions)

    assert delays["bot"] == [600.0, None]
    assert delays["resold_key"] == [1800.0]
    assert delays["cost_spike"] == [0.0]
    assert "normal" not in delays


def test_ip_and_unknown_decisions_ignored(report):
    assert report.decisions == len(DECISIONS)
    assert report.ignored_decisions == 2


def test_percentiles_over_several_keys(tmp_path):
    labels = "key_id,account_id,plan,kind,is_abuse,expected_reason,onset\n" + "".join(
        f"key-{n},acct-{n},text,bot,1,automation,2026-11-24T00:00:00Z\n" for n in range(3)
    )
    decisions = [
        decision("key", "key-0", "throttle", ["automation"], "2026-11-24T00:01:00Z"),
        decision("key", "key-1", "throttle", ["automation"], "2026-11-24T00:02:00Z"),
        decision("key", "key-1", "suspend", ["automation"], "2026-11-24T05:00:00Z"),
        decision("key", "key-2", "throttle", ["automation", "anomaly"], "2026-11-24T00:10:00Z"),
    ]
    bot = evaluate(*write_files(tmp_path, labels, decisions)).abuse[0]
    assert bot.median_seconds_to_detect == 120.0
    assert bot.p95_seconds_to_detect == pytest.approx(552.0)


def test_no_decisions_means_no_recall(tmp_path):
    result = evaluate(*write_files(tmp_path, LABELS, []))
    assert result.abuse_recall == 0.0
    assert result.benign_total.false_action_share == 0.0
    assert abuse_row(result, "bot").median_seconds_to_detect is None


def test_to_dict_is_json_serialisable(report):
    data = orjson.loads(orjson.dumps(report.to_dict()))
    assert data["overall"]["abuse_recall"] == 0.5
    assert data["overall"]["benign_false_action_share"] == 0.5
    assert data["benign_total"]["review_only_keys"] == 1
    assert {row["kind"] for row in data["abuse"]} == {"bot", "resold_key", "cost_spike"}
    assert data["decisions"] == {"read": len(DECISIONS), "ignored": 2}


def test_render_report_lists_kinds(report):
    console = Console(record=True, width=200)
    console.print(render_report(report))
    text = console.export_text()
    for kind in ("bot", "resold_key", "cost_spike", "normal", "cron_job", "all benign"):
        assert kind in text
    assert "50.0%" in text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"subject_type": "key", "subject": "key-1", "action": "ban", "reasons": [], "detected_at": "2026-11-24T00:00:00Z"}', "action"),
        ('{"subject_type": "key", "subject": "key-1", "action": "review", "reasons": [], "detected_at": "yesterday"}', "detected_at"),
        ('{"subject_type": "key", "subject": "key-1", "action": "review", "reasons": [], "detected_at": "2026-11-24T00:00:00"}', "UTC offset"),
        ('{"subject_type": "key", "subject": "key-1", "action": "review", "detected_at": "2026-11-24T00:00:00Z"}', "reasons"),
        ('{"subject_type": "user", "subject": "key-1", "action": "review", "reasons": [], "detected_at": "2026-11-24T00:00:00Z"}', "subject_type"),
        ("not json", "invalid JSON"),
    ],
)
def test_invalid_decision_raises_with_line(tmp_path, line, message):
    labels_path, decisions_path = write_files(tmp_path, LABELS, DECISIONS[:1])
    decisions_path.write_text(decisions_path.read_text() + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message) as raised:
        evaluate(labels_path, decisions_path)
    assert "decisions.jsonl:3" in str(raised.value)


def test_abuse_label_without_onset_raises(tmp_path):
    labels = "key_id,account_id,plan,kind,is_abuse,expected_reason,onset\nkey-1,acct-1,text,bot,1,automation,\n"
    with pytest.raises(ValueError, match="onset"):
        evaluate(*write_files(tmp_path, labels, []))


def test_missing_label_column_raises(tmp_path):
    with pytest.raises(ValueError, match="missing label columns"):
        evaluate(*write_files(tmp_path, "key_id,kind\nkey-1,normal\n", []))
