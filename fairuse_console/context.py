"""Shared state of console requests (the store, the review services, the templates) and form parsing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from functools import partial
from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine
from starlette.datastructures import FormData
from starlette.responses import Response

from detector.plans import ConfigError
from fairuse_console.login_limit import LoginLimiter
from detector.policy import parse_duration
from detector.review.actions import StaffActions
from detector.review.activity import ActivityLog
from detector.review.audit import AuditLog
from detector.review.cases import CaseQueue, shown_id
from detector.review.errors import ReviewError
from detector.review.staff import StaffDirectory
from detector.store.allowlist import StaffAllowlist
from fairuse_console.display import Display, age_hours, in_force, when
from fairuse_console.i18n import LANGUAGES, gettext_functions, language_from_header

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Row ids (cases, allowlist entries) are 32-bit integers on PostgreSQL and MariaDB, and larger numbers make
# the database driver raise.
MAX_ROW_ID = 2**31 - 1


@dataclass(slots=True)
class Console:
    engine: Engine
    directory: StaffDirectory
    queue: CaseQueue
    actions: StaffActions
    allowlist: StaffAllowlist
    audit: AuditLog
    activity: ActivityLog
    pseudonym_key: bytes
    templates: Jinja2Templates
    logins: LoginLimiter = field(default_factory=LoginLimiter)
    # The time zone pages show times in.
    zone: tzinfo = UTC


def make_templates(zone: tzinfo = UTC) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.add_extension("jinja2.ext.i18n")
    templates.env.install_null_translations(newstyle=True)
    templates.env.globals.update(when=partial(when, zone=zone), age_hours=age_hours, in_force=in_force,
                                 LANGUAGES=LANGUAGES)
    return templates


def console_of(request: Request) -> Console:
    return request.app.state.console


def language_of(request: Request) -> str:
    """Return the member's chosen language, else the browser's."""
    session = getattr(request.state, "staff_session", None)
    if session is not None and session.member.language:
        return session.member.language
    return language_from_header(request.headers.get("accept-language"))


def render(request: Request, template: str, context: dict | None = None, status_code: int = 200) -> Response:
    """Render ``template`` in the request's language, with the member, CSRF token and display rules."""
    console = console_of(request)
    session = getattr(request.state, "staff_session", None)
    member = session.member if session else None
    language = language_of(request)
    values = {
        "member": member,
        "csrf_token": session.csrf_token if session else "",
        "language": language,
        "show": Display(member, console.pseudonym_key),
        "path": _page_path(request),
        **gettext_functions(language),
        **(context or {}),
    }
    response = console.templates.TemplateResponse(request, template, values, status_code=status_code)
    response.headers["Content-Language"] = language.replace("_", "-")
    return response


def _page_path(request: Request) -> str:
    """Return the page the language menu goes back to: this one, or for a failed POST the page its form was on.

    A POST route such as ``/cases/3/suspend`` has no GET page, so going back to it would get 405.
    """
    if request.method == "GET":
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")
    case_id = str(request.path_params.get("case_id", ""))
    if case_id.isdigit():
        return f"/cases/{case_id}"
    section = "/" + request.url.path.strip("/").split("/")[0]
    return section if section in ("/allowlist", "/audit", "/staff") else "/"


# Form fields ------------------------------------------------------------------


def text_field(form: FormData, name: str, *, required: bool = True) -> str:
    value = form.get(name)
    text = value.strip() if isinstance(value, str) else ""
    if required and not text:
        raise ReviewError(f"missing form field {name!r}; fill it in and submit again")
    return text


def duration_field(form: FormData, name: str = "duration"):
    text = text_field(form, name)
    try:
        return parse_duration(text, f"field {name!r}")
    except ConfigError as error:
        raise ReviewError(str(error)) from None


def seen_field(form: FormData, name: str = "seen") -> datetime | None:
    """Return a case's ``updated_at`` as the page showed it (field ``name``), or None when the form has none."""
    text = text_field(form, name, required=False)
    if not text:
        return None
    try:
        seen = datetime.fromisoformat(text)
    except ValueError:
        raise ReviewError(f"invalid seen {shown_id(text)}; reload the case and act again") from None
    if seen.tzinfo is None:
        raise ReviewError(f"invalid seen {shown_id(text)}: no time zone; reload the case and act again")
    try:
        # The store compares times in UTC, which a time within a day of year 1 or 9999 can lack.
        return seen.astimezone(UTC)
    except OverflowError:
        raise ReviewError(f"invalid seen {shown_id(text)}: out of range; reload the case and act again") from None


def int_field(form: FormData, name: str) -> int:
    text = text_field(form, name)
    try:
        return int(text)
    except ValueError:
        raise ReviewError(f"invalid {name} {shown_id(text)}; give a whole number") from None
