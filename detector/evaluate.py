"""Score decisions against the simulator's labels: recall on abuse, false actions on benign keys.

An abuse key is *caught* when some decision on it (on the key itself or on
its account) lists the label's expected reason and was detected no earlier
than ONSET_TOLERANCE before the labelled onset. A benign key has a *false
action* when any decision throttles or suspends it. A benign key whose only
decisions are reviews counts as *review only*. Decisions on IP addresses
cannot be tied to keys from the labels alone and are counted as ignored.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
from rich.console import Group
from rich.table import Table

from detector.decisions import ACTIONS, SUBJECT_TYPES

# A detection this many seconds before the labelled onset still counts, because
# detectors stamp a finding with the start of the window they looked at.
ONSET_TOLERANCE = 300.0

ENFORCING_ACTIONS = frozenset({"throttle", "suspend"})
LABEL_COLUMNS = ("key_id", "account_id", "plan", "kind", "is_abuse", "expected_reason", "onset")


@dataclass(frozen=True, slots=True)
class Label:
    """The truth about one key, from labels.csv."""

    key_id: str
    account_id: str
    kind: str
    is_abuse: bool
    expected_reason: str
    onset: float | None


@dataclass(frozen=True, slots=True)
class KeyDecision:
    """One decision as it applies to one key."""

    action: str
    reasons: frozenset[str]
    detected_at: float


@dataclass(frozen=True, slots=True)
class AbuseKindResult:
    """Detection of one abuse kind; times to detect are in seconds, over the caught keys."""

    kind: str
    expected_reason: str
    keys: int
    caught: int
    caught_any_reason: int
    acted_before_onset: int
    median_seconds_to_detect: float | None
    p95_seconds_to_detect: float | None

    @property
    def recall(self) -> float:
        return self.caught / self.keys if self.keys else 0.0

    @property
    def any_reason_recall(self) -> float:
        return self.caught_any_reason / self.keys if self.keys else 0.0


@dataclass(frozen=True, slots=True)
class BenignKindResult:
    """Actions taken on the keys of one benign kind (or on all benign keys, for the total)."""

    kind: str
    keys: int
    false_action_keys: int
    review_only_keys: int

    @property
    def false_action_share(self) -> float:
        return self.false_action_keys / self.keys if self.keys else 0.0

    @property
    def review_share(self) -> float:
        return self.review_only_keys / self.keys if self.keys else 0.0


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    """Per-kind results, benign totals and counts of the decisions read."""

    abuse: tuple[AbuseKindResult, ...]
    benign: tuple[BenignKindResult, ...]
    benign_total: BenignKindResult
    decisions: int
    ignored_decisions: int

    @property
    def abuse_recall(self) -> float | None:
        """Return the lowest recall over the abuse kinds, or None without abuse keys."""
        recalls = [result.recall for result in self.abuse if result.keys]
        return min(recalls) if recalls else None

    @property
    def pooled_abuse_recall(self) -> float | None:
        """Return caught abuse keys over all abuse keys, or None without abuse keys."""
        keys = sum(result.keys for result in self.abuse)
        return sum(result.caught for result in self.abuse) / keys if keys else None

    def to_dict(self) -> dict:
        """Return the report as JSON-serialisable values, shares included."""
        return {
            "abuse": [
                {**asdict(result), "recall": result.recall, "any_reason_recall": result.any_reason_recall}
                for result in self.abuse
            ],
            "benign": [_benign_dict(result) for result in self.benign],
            "benign_total": _benign_dict(self.benign_total),
            "overall": {
                "abuse_recall": self.abuse_recall,
                "pooled_abuse_recall": self.pooled_abuse_recall,
                "benign_false_action_share": self.benign_total.false_action_share,
                "benign_review_share": self.benign_total.review_share,
            },
            "decisions": {"read": self.decisions, "ignored": self.ignored_decisions},
        }


def _benign_dict(result: BenignKindResult) -> dict:
    return {
        **asdict(result),
        "false_action_share": result.false_action_share,
        "review_share": result.review_share,
    }


def evaluate(labels_path: str | Path, decisions_path: str | Path) -> EvaluationReport:
    """Score a decisions JSON-lines file against labels.csv.

    Raises ValueError, naming the file and line, when a label or decision is
    missing a field or has an invalid value.
    """
    labels = read_labels(Path(labels_path))
    by_key, decisions, ignored = _decisions_by_key(labels, Path(decisions_path))

    abuse_labels = defaultdict(list)
    benign_labels = defaultdict(list)
    for label in labels.values():
        (abuse_labels if label.is_abuse else benign_labels)[label.kind].append(label)

    abuse = tuple(_score_abuse_kind(kind, abuse_labels[kind], by_key) for kind in sorted(abuse_labels))
    benign = tuple(_score_benign_kind(kind, benign_labels[kind], by_key) for kind in sorted(benign_labels))
    total = BenignKindResult(
        kind="all benign",
        keys=sum(result.keys for result in benign),
        false_action_keys=sum(result.false_action_keys for result in benign),
        review_only_keys=sum(result.review_only_keys for result in benign),
    )
    return EvaluationReport(abuse, benign, total, decisions, ignored)


def detection_delays(labels_path: str | Path, decisions_path: str | Path) -> dict[str, list[float | None]]:
    """Return, per abuse kind, each key's seconds from onset to its first catching decision (None if never caught)."""
    labels = read_labels(Path(labels_path))
    by_key, _, _ = _decisions_by_key(labels, Path(decisions_path))
    delays: dict[str, list[float | None]] = defaultdict(list)
    for label in labels.values():
        if label.is_abuse:
            delays[label.kind].append(_delay(label, by_key.get(label.key_id, [])))
    return dict(delays)


def _decisions_by_key(labels: dict[str, Label], path: Path) -> tuple[dict[str, list[KeyDecision]], int, int]:
    """Return the decisions that apply to each labelled key, the decisions read and those tied to no key."""
    keys_of_account: dict[str, list[str]] = defaultdict(list)
    for label in labels.values():
        keys_of_account[label.account_id].append(label.key_id)

    by_key: dict[str, list[KeyDecision]] = defaultdict(list)
    decisions = 0
    ignored = 0
    for record in read_decisions(path):
        decisions += 1
        keys = _keys_covered(record, labels, keys_of_account)
        if not keys:
            ignored += 1
        for key_id in keys:
            by_key[key_id].append(KeyDecision(record["action"], frozenset(record["reasons"]), record["detected_at"]))
    return by_key, decisions, ignored


def _delay(label: Label, decisions: list[KeyDecision]) -> float | None:
    """Return seconds from the label's onset to the first decision with its expected reason, or None."""
    assert label.onset is not None, "read_labels requires an onset on every abuse row"
    matching = [
        decision.detected_at
        for decision in decisions
        if decision.detected_at >= label.onset - ONSET_TOLERANCE and label.expected_reason in decision.reasons
    ]
    # A detection inside the tolerance, before the onset, counts as immediate.
    return max(min(matching) - label.onset, 0.0) if matching else None


def _keys_covered(record: dict, labels: dict[str, Label], keys_of_account: dict[str, list[str]]) -> list[str]:
    """Return the labelled keys a decision applies to: the key, every key of the account, or none for IPs."""
    if record["subject_type"] == "key":
        return [record["subject"]] if record["subject"] in labels else []
    if record["subject_type"] == "account":
        return keys_of_account.get(record["subject"], [])
    return []


def _score_abuse_kind(kind: str, labels: list[Label], by_key: dict[str, list[KeyDecision]]) -> AbuseKindResult:
    caught = 0
    caught_any = 0
    early = 0
    delays = []
    for label in labels:
        assert label.onset is not None, "read_labels requires an onset on every abuse row"
        onset = label.onset
        decisions = by_key.get(label.key_id, [])
        caught_any += any(decision.detected_at >= onset - ONSET_TOLERANCE for decision in decisions)
        early += any(
            decision.action in ENFORCING_ACTIONS and decision.detected_at < onset - ONSET_TOLERANCE
            for decision in decisions
        )
        delay = _delay(label, decisions)
        if delay is not None:
            caught += 1
            delays.append(delay)

    return AbuseKindResult(
        kind=kind,
        expected_reason=labels[0].expected_reason if labels else "",
        keys=len(labels),
        caught=caught,
        caught_any_reason=caught_any,
        acted_before_onset=early,
        median_seconds_to_detect=float(np.median(delays)) if delays else None,
        p95_seconds_to_detect=float(np.percentile(delays, 95)) if delays else None,
    )


def _score_benign_kind(kind: str, labels: list[Label], by_key: dict[str, list[KeyDecision]]) -> BenignKindResult:
    false_actions = 0
    reviews_only = 0
    for label in labels:
        actions = {decision.action for decision in by_key.get(label.key_id, [])}
        if actions & ENFORCING_ACTIONS:
            false_actions += 1
        elif "review" in actions:
            reviews_only += 1
    return BenignKindResult(kind, len(labels), false_actions, reviews_only)


def read_labels(path: Path) -> dict[str, Label]:
    """Read labels.csv into one Label per key_id."""
    labels: dict[str, Label] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in LABEL_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing label columns {missing}; expected {list(LABEL_COLUMNS)}")

        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            if row["is_abuse"] not in ("0", "1"):
                raise ValueError(f"{where}: is_abuse must be 0 or 1, got {row['is_abuse']!r}")
            is_abuse = row["is_abuse"] == "1"
            if is_abuse and not (row["onset"] and row["expected_reason"]):
                raise ValueError(f"{where}: abuse key {row['key_id']} needs an onset and an expected_reason")
            labels[row["key_id"]] = Label(
                key_id=row["key_id"],
                account_id=row["account_id"],
                kind=row["kind"],
                is_abuse=is_abuse,
                expected_reason=row["expected_reason"],
                onset=_parse_time(row["onset"], where, "onset") if row["onset"] else None,
            )
    return labels


def read_decisions(path: Path) -> list[dict]:
    """Read a decisions JSON-lines file, checking the fields evaluation uses; detected_at becomes epoch seconds."""
    records = []
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{line}"
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as error:
                raise ValueError(f"{where}: invalid JSON: {error}") from error
            records.append(_check_decision(record, where))
    return records


def _check_decision(record: object, where: str) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in ("subject_type", "subject", "action", "reasons", "detected_at"):
        if name not in record:
            raise ValueError(f"{where}: missing field {name!r}")
    if record["subject_type"] not in SUBJECT_TYPES:
        raise ValueError(f"{where}: subject_type must be one of {SUBJECT_TYPES}, got {record['subject_type']!r}")
    if record["action"] not in ACTIONS:
        raise ValueError(f"{where}: action must be one of {ACTIONS}, got {record['action']!r}")
    if not isinstance(record["reasons"], list) or not all(isinstance(reason, str) for reason in record["reasons"]):
        raise ValueError(f"{where}: reasons must be a list of reason codes, got {record['reasons']!r}")
    return {**record, "detected_at": _parse_time(record["detected_at"], where, "detected_at")}


def _parse_time(value: object, where: str, name: str) -> float:
    """Parse an RFC 3339 time with a UTC offset or "Z" into epoch seconds."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: {name} must be an RFC 3339 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as error:
        raise ValueError(f"{where}: {name} is not an RFC 3339 time: {value!r}") from error
    if parsed.tzinfo is None:
        raise ValueError(f"{where}: {name} has no UTC offset: {value!r}; add Z or +00:00")
    return parsed.timestamp()


def render_report(report: EvaluationReport) -> Group:
    """Return rich tables: recall per abuse kind, false actions per benign kind, and the overall figures."""
    return Group(_abuse_table(report), _benign_table(report), _overall_table(report))


def _abuse_table(report: EvaluationReport) -> Table:
    table = Table(title="Abuse kinds: caught with the expected reason")
    for header in ("kind", "reason", "keys", "caught", "recall", "any reason", "median to detect", "p95 to detect"):
        table.add_column(header, justify="left" if header in ("kind", "reason") else "right")
    table.add_column("acted before onset", justify="right")

    for result in report.abuse:
        table.add_row(
            result.kind,
            result.expected_reason,
            str(result.keys),
            str(result.caught),
            _percent(result.recall),
            f"{result.caught_any_reason} ({_percent(result.any_reason_recall)})",
            _duration(result.median_seconds_to_detect),
            _duration(result.p95_seconds_to_detect),
            str(result.acted_before_onset),
        )
    return table


def _benign_table(report: EvaluationReport) -> Table:
    table = Table(title="Benign kinds: throttles or suspensions (false actions) and reviews")
    table.add_column("kind")
    for header in ("keys", "false actions", "share", "review only", "share"):
        table.add_column(header, justify="right")

    for result in (*report.benign, report.benign_total):
        table.add_row(
            result.kind,
            str(result.keys),
            str(result.false_action_keys),
            _percent(result.false_action_share),
            str(result.review_only_keys),
            _percent(result.review_share),
            end_section=result is report.benign[-1] if report.benign else False,
        )
    return table


def _overall_table(report: EvaluationReport) -> Table:
    table = Table(title="Overall", show_header=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("abuse recall (lowest kind)", _percent(report.abuse_recall))
    table.add_row("abuse recall (all abuse keys)", _percent(report.pooled_abuse_recall))
    table.add_row("benign keys with a false action", _percent(report.benign_total.false_action_share))
    table.add_row("benign keys with reviews only", _percent(report.benign_total.review_share))
    table.add_row("decisions read / ignored", f"{report.decisions} / {report.ignored_decisions}")
    return table


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
