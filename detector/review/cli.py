"""``fairuse decisions``, ``review``, ``allowlist``, ``audit``, ``staff`` and ``console`` commands.

Acting commands record the staff member from ``--staff``, else
``$FAIRUSE_STAFF``, else the login name, and publish to the Redis that
gateways read.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import sys
import warnings
from datetime import UTC, datetime

import click

from detector.decisions import MAX_LIMIT_RPM, SCOPES, SUBJECT_TYPES
from detector.review.errors import ReviewError
from detector.review.vocabulary import CASE_STATUSES, ROLES

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _database_option(command):
    return click.option("--db", "database_url",
                        help="SQLAlchemy database URL (default: $FAIRUSE_DATABASE_URL or sqlite:///fairuse.db).")(command)


def _acting_options(command):
    """Add the options of commands that change decisions: the database, Redis and the staff name."""
    command = click.option("--staff", default=lambda: os.environ.get("FAIRUSE_STAFF") or getpass.getuser(),
                           show_default="$FAIRUSE_STAFF or the login name", help="Staff name kept in the audit record; a reviewer or admin from 'fairuse staff add'.")(command)
    command = click.option("--prefix", default=lambda: os.environ.get("FAIRUSE_PREFIX", "fairuse"),
                           show_default="fairuse or $FAIRUSE_PREFIX", help="Redis key prefix decisions are published under.")(command)
    command = click.option("--redis", "redis_url", default=DEFAULT_REDIS, show_default=True,
                           help="Redis that gateways read decisions from.")(command)
    return _database_option(command)


def _reporting_errors(command):
    """Print a ``ReviewError`` as one line on standard error and exit with status 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ReviewError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
    return wrapper


def _duration(_context, parameter, value):
    from detector.plans import ConfigError
    from detector.policy import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value, f"--{parameter.name.replace('_', '-')}")
    except ConfigError as error:
        raise click.BadParameter(str(error)) from None


def _engine(database_url):
    from detector.store import open_store

    return open_store(database_url).engine


def _actions(database_url, redis_url, prefix, staff):
    """Return the staff actions on the store, after checking that ``staff`` names a reviewer or admin."""
    import redis

    from detector.review.actions import StaffActions
    from detector.review.staff import StaffDirectory
    from workers.publish import DecisionPublisher

    engine = _engine(database_url)
    StaffDirectory(engine).acting_member(staff)
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    return StaffActions(engine, DecisionPublisher(client, prefix=prefix))


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment else "-"


# decisions ---------------------------------------------------------------------


@click.group()
def decisions() -> None:
    """List, add and delete (lift) decisions."""


@decisions.command("list")
@click.option("--subject", help="Only this subject's decisions.")
@click.option("--active", is_flag=True, help="Only enforced decisions in force now.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="Maximum decisions listed, newest first.")
@_database_option
def decisions_list(subject, active, limit, database_url) -> None:
    """List decisions, newest detection first."""
    from sqlalchemy import or_, select
    from sqlalchemy.orm import Session

    from detector.readers.checks import normalize_ip
    from detector.review.records import decision_from_row
    from detector.store.models import DecisionRow

    now = datetime.now(UTC)
    query = select(DecisionRow).order_by(DecisionRow.detected_at.desc(), DecisionRow.id).limit(limit)
    if subject:
        query = query.where(DecisionRow.subject == (normalize_ip(subject) or subject))
    if active:
        query = query.where(
            DecisionRow.simulated.is_(False), DecisionRow.expires_at > now,
            or_(DecisionRow.detected_at <= now, DecisionRow.created_at <= now),
        )
    with Session(_engine(database_url)) as session:
        found = [decision_from_row(row) for row in session.scalars(query)]
    for decision in found:
        state = "in force" if decision.in_force_at(now) else "ended"
        limit_text = f" {decision.limit_rpm} rpm" if decision.limit_rpm else ""
        click.echo(
            f"{decision.id}\t{decision.subject_type}:{decision.subject}\t{decision.action}{limit_text}\t"
            f"{','.join(decision.reasons)}\t{decision.score:.0f}\t{_when(decision.detected_at)} to "
            f"{_when(decision.expires_at)}\t{state}\t{decision.origin}"
            + ("\tsimulated" if decision.simulated else "")
        )


@decisions.command("add")
@click.argument("subject_type", type=click.Choice(SUBJECT_TYPES))
@click.argument("subject")
@click.option("--action", required=True, type=click.Choice(["suspend", "throttle", "review"]), help="Action gateways enforce; review only queues the subject for staff.")
@click.option("--duration", required=True, callback=_duration, help="How long, like 30m, 6h, 7d or 2w.")
@click.option("--limit-rpm", type=click.IntRange(1, MAX_LIMIT_RPM), help="Requests per minute a throttle allows.")
@click.option("--scope", type=click.Choice(SCOPES), default="all", show_default=True, help="Endpoints a throttle covers.")
@click.option("--comment", required=True, help="Why; kept in the decision and the audit record.")
@_acting_options
@_reporting_errors
def decisions_add(subject_type, subject, action, duration, limit_rpm, scope, comment, database_url, redis_url, prefix, staff) -> None:
    """Add a staff decision on SUBJECT_TYPE SUBJECT and publish it at once."""
    decision = _actions(database_url, redis_url, prefix, staff).add_decision(
        subject_type, subject, action, staff=staff, duration=duration, comment=comment, limit_rpm=limit_rpm, scope=scope,
    )
    click.echo(f"decision {decision.id}: {action} {subject_type}:{decision.subject} until {_when(decision.expires_at)}")


@decisions.command("delete")
@click.argument("decision_id")
@click.option("--comment", required=True, help="Why it is lifted; kept in the audit record.")
@_acting_options
@_reporting_errors
def decisions_delete(decision_id, comment, database_url, redis_url, prefix, staff) -> None:
    """Lift DECISION_ID: it ends now and gateways stop enforcing it. The record stays."""
    lifted = _actions(database_url, redis_url, prefix, staff).lift(decision_id, staff=staff, comment=comment)
    click.echo(f"decision {lifted.id} lifted: {lifted.action} {lifted.subject_type}:{lifted.subject}")


# review ------------------------------------------------------------------------


@click.group()
def review() -> None:
    """Work the case queue: list, show, open and resolve cases."""


@review.command("list")
@click.option("--status", type=click.Choice([*CASE_STATUSES, "all"]), default="open", show_default=True,
              help="Only cases with this status; all lists every case.")
@click.option("--reason", help="Only cases with this reason code, like key_sharing.")
@click.option("--plan", help="Only cases of subjects on this plan.")
@click.option("--min-score", type=click.FloatRange(0, 100), help="Only cases scoring at least this.")
@click.option("--min-age", "min_age_hours", type=click.FloatRange(0), help="Only cases opened at least this many hours ago.")
@click.option("--sort", type=click.Choice(["score", "reason", "age", "plan", "status", "updated"]), default="score",
              show_default=True, help="Sort key; descending unless --asc.")
@click.option("--asc", is_flag=True, help="Sort ascending instead of descending.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="Maximum cases listed.")
@_database_option
@_reporting_errors
def review_list(status, reason, plan, min_score, min_age_hours, sort, asc, limit, database_url) -> None:
    """List cases; review decisions not yet in a case open one first.

    Prints one tab-separated line per case: case id, subject, plan, score,
    reason codes, status, and the time and origin of its opening. A header
    line names the columns when standard output is a terminal.
    """
    from detector.review.cases import CaseFilter, CaseQueue

    queue = CaseQueue(_engine(database_url))
    queue.sync()
    case_filter = CaseFilter(status=None if status == "all" else status, reason=reason, plan=plan, min_score=min_score,
                        min_age_hours=min_age_hours, sort=sort, descending=not asc, limit=limit)
    _header_on_terminal("case", "subject", "plan", "score", "reasons", "status", "opened")
    for case in queue.list(case_filter):
        click.echo(
            f"{case.id}\t{case.subject_type}:{case.subject}\t{case.plan or '-'}\t{case.score:.0f}\t"
            f"{','.join(case.reasons) or '-'}\t{case.status}{' ' + case.resolution if case.resolution else ''}\t"
            f"opened {_when(case.opened_at)} by {case.opened_by}"
        )


@review.command("show")
@click.argument("case_id", type=int)
@_database_option
@_reporting_errors
def review_show(case_id, database_url) -> None:
    """Show a case: subject, plan, decisions with evidence, notes, verdicts and audit."""
    from detector.review.cases import CaseQueue

    queue = CaseQueue(_engine(database_url))
    queue.sync()
    detail = queue.detail(case_id)
    case = detail.case
    click.echo(f"case {case.id}: {case.subject_type}:{case.subject} (account {case.account_id or '-'}, plan {case.plan or '-'})")
    click.echo(f"status: {case.status}{' ' + case.resolution if case.resolution else ''}; score {case.score:.0f}; "
               f"reasons {', '.join(case.reasons) or '-'}; opened {_when(case.opened_at)} by {case.opened_by}")
    now = datetime.now(UTC)
    click.echo("decisions:")
    for decision in detail.decisions:
        state = "in force" if decision.in_force_at(now) and not decision.simulated else "ended"
        click.echo(f"  {decision.id} {decision.action} {_when(decision.detected_at)} to {_when(decision.expires_at)} "
                   f"{state} {decision.origin}")
        click.echo("    evidence: " + json.dumps(decision.evidence, sort_keys=True, default=str))
    for note in detail.notes:
        click.echo(f"note {_when(note.created_at)} {note.staff}: {note.body}")
    for label in detail.labels:
        click.echo(f"verdict {_when(label.created_at)} {label.staff}: {label.verdict} ({label.comment})")
    for record in detail.audit:
        click.echo(f"audit {_when(record.created_at)} {record.staff}: {record.action} ({record.reason})")


@review.command("open")
@click.argument("subject_type", type=click.Choice(SUBJECT_TYPES))
@click.argument("subject")
@click.option("--comment", required=True, help="Why the case is opened.")
@_acting_options
@_reporting_errors
def review_open(subject_type, subject, comment, database_url, redis_url, prefix, staff) -> None:
    """Open a case on SUBJECT_TYPE SUBJECT by hand."""
    case = _actions(database_url, redis_url, prefix, staff).open_case(subject_type, subject, staff=staff, comment=comment)
    click.echo(f"case {case.id} opened on {subject_type}:{case.subject}")


@review.command("resolve")
@click.argument("case_ids", type=int, nargs=-1, required=True)
@click.option("--action", required=True, type=click.Choice(["suspend", "throttle", "dismiss", "allowlist"]),
              help="suspend or throttle confirm abuse; dismiss and allowlist mark a false positive.")
@click.option("--duration", callback=_duration, help="For suspend, throttle and allowlist: how long, like 6h or 30d.")
@click.option("--limit-rpm", type=click.IntRange(1, MAX_LIMIT_RPM), help="For throttle: requests per minute allowed.")
@click.option("--scope", type=click.Choice(SCOPES), default="all", show_default=True, help="For throttle: endpoints covered.")
@click.option("--comment", required=True, help="Why; kept in the verdict and the audit record.")
@_acting_options
@_reporting_errors
def review_resolve(case_ids, action, duration, limit_rpm, scope, comment, database_url, redis_url, prefix, staff) -> None:
    """Resolve one or more cases with the same action, all or none; each is audited on its own.

    Every case is checked first: when one is unknown or already resolved, no
    case is changed and the error names each such case. Repeated ids count once.
    """
    if action != "dismiss" and duration is None:
        raise ReviewError(f"--action {action} needs --duration, like 6h or 30d")
    if action == "throttle" and limit_rpm is None:
        raise ReviewError("--action throttle needs --limit-rpm, the requests per minute allowed")
    resolved = _actions(database_url, redis_url, prefix, staff).resolve_cases(
        case_ids, action, staff=staff, comment=comment, duration=duration, limit_rpm=limit_rpm, scope=scope,
    )
    for case_id in resolved:
        click.echo(f"case {case_id} resolved: {action}")


@review.command("note")
@click.argument("case_id", type=int)
@click.argument("text")
@_acting_options
@_reporting_errors
def review_note(case_id, text, database_url, redis_url, prefix, staff) -> None:
    """Add a note to CASE_ID."""
    _actions(database_url, redis_url, prefix, staff).add_note(case_id, staff=staff, body=text)
    click.echo(f"note added to case {case_id}")


# allowlist ---------------------------------------------------------------------


@click.group()
def allowlist() -> None:
    """Manage the staff allowlist: subjects policy never throttles or suspends."""


@allowlist.command("add")
@click.argument("subject_type", type=click.Choice(SUBJECT_TYPES))
@click.argument("subject")
@click.option("--duration", required=True, callback=_duration, help="How long the entry lasts, like 30d.")
@click.option("--comment", required=True, help="Why; kept with the entry and in the audit record.")
@_acting_options
@_reporting_errors
def allowlist_add(subject_type, subject, duration, comment, database_url, redis_url, prefix, staff) -> None:
    """Allowlist SUBJECT_TYPE SUBJECT and lift its throttles and suspensions."""
    entry = _actions(database_url, redis_url, prefix, staff).add_allowlist(
        subject_type, subject, staff=staff, duration=duration, comment=comment,
    )
    click.echo(f"allowlist entry {entry.id}: {subject_type}:{entry.subject} until {_when(entry.expires_at)}")


@allowlist.command("remove")
@click.argument("entry_id", type=int)
@click.option("--comment", required=True, help="Why; kept in the audit record.")
@_acting_options
@_reporting_errors
def allowlist_remove(entry_id, comment, database_url, redis_url, prefix, staff) -> None:
    """End allowlist entry ENTRY_ID now."""
    entry = _actions(database_url, redis_url, prefix, staff).remove_allowlist(entry_id, staff=staff, comment=comment)
    click.echo(f"allowlist entry {entry.id} removed: {entry.subject_type}:{entry.subject}")


@allowlist.command("list")
@click.option("--all", "include_ended", is_flag=True, help="Include expired and removed entries.")
@_database_option
def allowlist_list(include_ended, database_url) -> None:
    """List allowlist entries in force, newest first."""
    from detector.store.allowlist import StaffAllowlist

    for entry in StaffAllowlist(_engine(database_url)).entries(include_ended=include_ended):
        ended = f"\tremoved {_when(entry.removed_at)} by {entry.removed_by}" if entry.removed_at else ""
        click.echo(f"{entry.id}\t{entry.subject_type}:{entry.subject}\tuntil {_when(entry.expires_at)}\t"
                   f"by {entry.staff}\t{entry.comment}{ended}")


# audit -------------------------------------------------------------------------


@click.command()
@click.option("--staff", help="Only this staff member's actions.")
@click.option("--subject", help="Only actions on this subject.")
@click.option("--case", "case_id", type=int, help="Only actions on this case.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1), help="Maximum records, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines with the state before and after.")
@_database_option
def audit(staff, subject, case_id, limit, as_json, database_url) -> None:
    """Show the audit trail of staff actions."""
    from detector.review.audit import AuditLog

    for record in AuditLog(_engine(database_url)).records(staff=staff, subject=subject, case_id=case_id, limit=limit):
        if as_json:
            click.echo(json.dumps({
                "id": record.id, "at": record.created_at.isoformat(), "staff": record.staff, "action": record.action,
                "subject_type": record.subject_type, "subject": record.subject, "case_id": record.case_id,
                "decision_id": record.decision_id, "reason": record.reason, "before": record.before, "after": record.after,
            }, sort_keys=True))
        else:
            case_text = f"case {record.case_id}" if record.case_id else "-"
            click.echo(f"{_when(record.created_at)}\t{record.staff}\t{record.action}\t"
                       f"{record.subject_type}:{record.subject}\t{case_text}\t{record.reason}")


# staff and console -------------------------------------------------------------


@click.group()
def staff() -> None:
    """Staff accounts of the review console."""


@staff.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="reviewer", show_default=True,
              help="viewer reads; reviewer also acts; admin also manages staff.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@_database_option
@_reporting_errors
def staff_add(name, role, password_stdin, database_url) -> None:
    """Create staff account NAME; the password is asked for and stored as an Argon2id hash.

    The password needs at least 10 characters.
    """
    from detector.review.staff import StaffDirectory

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = _ask_password()
    member = StaffDirectory(_engine(database_url)).add(name, password, role)
    click.echo(f"staff {member.name} added as {member.role}")


def _ask_password() -> str:
    """Return a password typed twice, or read twice from standard input when that is not a terminal."""
    try:
        with warnings.catch_warnings():
            # getpass warns that it cannot hide input that does not come from a terminal.
            warnings.simplefilter("ignore", getpass.GetPassWarning)
            return click.prompt("password", hide_input=True, confirmation_prompt=True)
    except click.Abort:
        if sys.stdin.isatty():
            raise
        raise click.UsageError("standard input is not a terminal and ended before the password; "
                               "pipe the password in with --password-stdin") from None


@staff.command("list")
@_database_option
def staff_list(database_url) -> None:
    """List staff accounts and their roles."""
    from detector.review.staff import StaffDirectory

    _header_on_terminal("name", "role", "console language")
    for member in StaffDirectory(_engine(database_url)).members():
        click.echo(f"{member.name}\t{member.role}\t{member.language or 'browser language'}")


def _header_on_terminal(*names: str) -> None:
    """Print a header line of tab-separated column names when standard output is a terminal, not a pipe."""
    if _stdout_is_terminal():
        click.echo("\t".join(names))


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8081, show_default=True, type=click.IntRange(1, 65535), help="TCP port to listen on.")
@_database_option
@click.option("--redis", "redis_url", default=DEFAULT_REDIS, show_default=True, help="Redis that gateways read decisions from.")
@click.option("--prefix", default=lambda: os.environ.get("FAIRUSE_PREFIX", "fairuse"), show_default="fairuse or $FAIRUSE_PREFIX",
              help="Redis key prefix decisions are published under.")
@click.option("--time-zone", default=lambda: os.environ.get("FAIRUSE_CONSOLE_TIME_ZONE", "UTC"),
              show_default="UTC or $FAIRUSE_CONSOLE_TIME_ZONE",
              help="Time zone pages show times in, an IANA name such as Asia/Shanghai.")
def console(host, port, database_url, redis_url, prefix, time_zone) -> None:
    """Serve the staff review console (log in with an account from 'fairuse staff add')."""
    import uvicorn

    from fairuse_console import create_app
    from fairuse_console.display import display_zone

    try:
        display_zone(time_zone)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--time-zone") from None
    app = create_app(database_url=database_url, redis_url=redis_url, prefix=prefix, time_zone=time_zone)
    uvicorn.run(app, host=host, port=port, log_level="info")


COMMANDS = (decisions, review, allowlist, audit, staff, console)
