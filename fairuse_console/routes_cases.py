"""The queue and case pages, and the staff actions posted from them."""

from __future__ import annotations

import logging
import math

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from starlette.datastructures import FormData

from detector.review.cases import SORT_KEYS, CaseFilter, shown_id
from detector.review.errors import NotFoundError, ReviewError
from detector.review.staff import StaffSession
from fairuse_console.charts import activity_charts
from fairuse_console.context import (
    MAX_ROW_ID, console_of, duration_field, int_field, render, seen_field, text_field,
)
from fairuse_console.messages import N_
from fairuse_console.security import acting_session, checked_form, current_session

logger = logging.getLogger(__name__)
router = APIRouter()
BULK_ACTIONS = ("suspend", "throttle", "dismiss")
# Maximum min_age filter, 100 years in hours. A timedelta overflows far beyond it.
MAX_AGE_HOURS = 24 * 365 * 100


@router.get("/")
def queue_page(request: Request, session: StaffSession = Depends(current_session)):
    """Render the case queue with filters, sorting and bulk actions."""
    console = console_of(request)
    console.queue.sync()
    params = request.query_params
    case_filter = _case_filter(params)
    reasons, plans = console.queue.reasons_and_plans()
    return render(request, "queue.html", {
        "cases": console.queue.list(case_filter), "case_filter": case_filter, "reasons": reasons, "plans": plans,
        "sort_keys": list(SORT_KEYS), "bulk_actions": BULK_ACTIONS, "done": params.get("done", ""),
        "count": params.get("count", ""),
    })


@router.post("/cases")
def open_case(request: Request, form: FormData = Depends(checked_form), session: StaffSession = Depends(acting_session)):
    console = console_of(request)
    case = console.actions.open_case(
        text_field(form, "subject_type"), text_field(form, "subject"), staff=session.member.name,
        comment=text_field(form, "comment"),
    )
    logger.info("staff %s opened case %d", session.member.name, case.id)
    return RedirectResponse(f"/cases/{case.id}?done=open", status_code=303)


@router.post("/cases/bulk")
def bulk_action(request: Request, form: FormData = Depends(checked_form), session: StaffSession = Depends(acting_session)):
    """Apply one action to every ticked case, all or none; each case is audited on its own."""
    action = text_field(form, "action")
    if action not in BULK_ACTIONS:
        raise ReviewError(f"invalid bulk action {action!r}; expected one of {', '.join(BULK_ACTIONS)}")
    case_ids = [_case_id(value) for value in form.getlist("case_id")]
    if not case_ids:
        raise ReviewError(N_("no case ticked; tick the cases to act on"))
    # The queue row of each case carries its updated_at as shown, so a case changed since is not acted on.
    seen = {case_id: seen_field(form, f"seen_{case_id}") for case_id in case_ids}
    resolved = console_of(request).actions.resolve_cases(
        case_ids, action, staff=session.member.name, comment=text_field(form, "comment"),
        duration=duration_field(form) if action != "dismiss" else None,
        limit_rpm=int_field(form, "limit_rpm") if action == "throttle" else None,
        scope=text_field(form, "scope", required=False) or "all",
        seen={case_id: value for case_id, value in seen.items() if value is not None},
    )
    logger.info("staff %s: bulk %s on cases %s", session.member.name, action, resolved)
    return RedirectResponse(f"/?done=bulk-{action}&count={len(resolved)}", status_code=303)


@router.get("/cases/{case_id}")
def case_page(case_id: int, request: Request, session: StaffSession = Depends(current_session)):
    """Render a case: subject, plan, decisions with evidence, charts of the last 7 days, notes and audit."""
    console = console_of(request)
    detail = console.queue.detail(_checked_case_id(case_id))
    series = console.activity.series(detail.case.subject_type, detail.case.subject)
    return render(request, "case.html", {
        "detail": detail, "case": detail.case, "series": series, "charts": activity_charts(series, console_of(request).zone),
        "done": request.query_params.get("done", ""),
    })


@router.post("/cases/{case_id}/{action}")
def case_action(case_id: int, action: str, request: Request, form: FormData = Depends(checked_form),
                session: StaffSession = Depends(acting_session)):
    """Suspend, throttle, dismiss, allowlist or add a note to a case."""
    if action not in ("suspend", "throttle", "dismiss", "allowlist", "notes"):
        raise ReviewError(f"unknown case action {action!r}")
    _apply(request, action, _checked_case_id(case_id), form, session)
    return RedirectResponse(f"/cases/{case_id}?done={action}", status_code=303)


@router.post("/decisions/{decision_id}/lift")
def lift_decision(decision_id: str, request: Request, form: FormData = Depends(checked_form),
                  session: StaffSession = Depends(acting_session)):
    console = console_of(request)
    console.actions.lift(decision_id, staff=session.member.name, comment=text_field(form, "comment"))
    logger.info("staff %s lifted decision %s", session.member.name, decision_id)
    back = form.get("case_id")
    target = f"/cases/{_case_id(back)}?done=lift" if back else "/"
    return RedirectResponse(target, status_code=303)


def _apply(request: Request, action: str, case_id: int, form: FormData, session: StaffSession) -> None:
    actions = console_of(request).actions
    staff = session.member.name
    seen = seen_field(form)
    if action == "suspend":
        actions.suspend(case_id, staff=staff, duration=duration_field(form), comment=text_field(form, "comment"),
                        seen=seen)
    elif action == "throttle":
        actions.throttle(case_id, staff=staff, limit_rpm=int_field(form, "limit_rpm"), duration=duration_field(form),
                         comment=text_field(form, "comment"), scope=text_field(form, "scope", required=False) or "all",
                         seen=seen)
    elif action == "dismiss":
        actions.dismiss(case_id, staff=staff, comment=text_field(form, "comment"), seen=seen)
    elif action == "allowlist":
        actions.allowlist_case(case_id, staff=staff, duration=duration_field(form), comment=text_field(form, "comment"),
                               seen=seen)
    else:
        actions.add_note(case_id, staff=staff, body=text_field(form, "body"))
    logger.info("staff %s: %s on case %d", staff, action, case_id)


def _case_id(value: object) -> int:
    try:
        case_id = int(str(value))
    except ValueError:
        raise ReviewError(f"invalid case id {shown_id(str(value))}; expected a number") from None
    return _checked_case_id(case_id)


def _checked_case_id(case_id: int) -> int:
    """Return ``case_id``, or raise ``NotFoundError`` when no case can have it."""
    if not 1 <= case_id <= MAX_ROW_ID:
        raise NotFoundError(f"case {shown_id(str(case_id))} not found; list cases with 'fairuse review list'")
    return case_id


def _case_filter(params) -> CaseFilter:
    def number(name: str) -> float | None:
        text = params.get(name, "").strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise ReviewError(f"invalid {name} {shown_id(text)}; give a number") from None
        if not math.isfinite(value) or (name == "min_age" and not 0 <= value <= MAX_AGE_HOURS):
            raise ReviewError(f"invalid {name} {shown_id(text)}; give a finite number, for min_age 0 to {MAX_AGE_HOURS:,} hours")
        return value

    status = params.get("status", "open")
    return CaseFilter(
        status=None if status == "all" else status, reason=params.get("reason") or None,
        plan=params.get("plan") or None, min_score=number("min_score"), min_age_hours=number("min_age"),
        sort=params.get("sort", "score"), descending=params.get("order", "desc") != "asc",
    )
