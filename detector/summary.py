"""The end-of-run summary table of ``fairuse score``."""

from __future__ import annotations

import re

from rich.console import Group
from rich.table import Table
from rich.text import Text

from detector.batch import BatchReport

TOP_SUBJECTS = 10
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: object) -> Text:
    """Return ``value`` as literal text: no console markup, control characters shown escaped."""
    return Text(_CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(value)))


def render_summary(report: BatchReport) -> Group:
    """Return the summary: counts, decisions by action and reason, and the top subjects."""
    return Group(_counts(report), _decision_table(report), _top_subjects(report))


def _counts(report: BatchReport) -> Table:
    read = report.read
    subjects = report.result.subjects
    title = "fairuse score (simulated: decisions are stored, never enforced)" if report.simulated else "fairuse score"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("records read", f"{read.records:,}")
    table.add_row("records rejected", f"{len(read.rejects):,}")
    table.add_row("duplicate request_id", f"{read.duplicates:,}")
    table.add_row("events scored", f"{len(read.frame):,}")
    table.add_row("subjects seen", f"{len(subjects):,}")
    table.add_row("subjects with findings", f"{int((subjects['risk_score'] > 0).sum()):,}")
    table.add_row("findings", f"{len(report.result.findings):,}")
    table.add_row("decisions on this input", f"{len(report.decisions):,}")
    table.add_row("decisions stored by this run", f"{report.new_decisions:,}")
    table.add_row("anomaly model", report.model_version or "none")
    if report.shadow:
        table.add_row("shadow", printable(report.shadow))
    table.add_row("database", printable(report.database))
    return table


def _decision_table(report: BatchReport) -> Table:
    table = Table(title="decisions", title_justify="left")
    table.add_column("by")
    table.add_column("value")
    table.add_column("count", justify="right")
    for action, count in sorted(report.decisions_by("action").items()):
        table.add_row("action", action, f"{count:,}")
    for reason, count in sorted(report.decisions_by("reasons").items()):
        table.add_row("reason", reason, f"{count:,}")
    if not report.decisions:
        table.add_row("-", "no decisions on this input", "0")
    return table


def _top_subjects(report: BatchReport) -> Table:
    table = Table(title=f"top {TOP_SUBJECTS} subjects by risk score", title_justify="left")
    for column in ("subject", "plan", "requests", "risk", "reasons", "actions"):
        table.add_column(column, justify="right" if column in ("requests", "risk") else "left")
    top = report.result.subjects.head(TOP_SUBJECTS)
    for row in top.itertuples(index=False):
        if row.risk_score <= 0:
            break
        table.add_row(
            printable(f"{row.subject_type}:{row.subject}"),
            printable(row.plan),
            f"{row.requests:,}",
            f"{row.risk_score:.0f}",
            ", ".join(row.reasons),
            ", ".join(row.actions) or "-",
        )
    if not table.row_count:
        table.add_row("-", "-", "0", "0", "no findings on this input", "-")
    return table
