"""Login and logout, the language choice, and the allowlist, audit and staff pages."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from detector.review.errors import NotFoundError, ReviewError
from detector.review.staff import StaffSession
from fairuse_console.context import MAX_ROW_ID, console_of, duration_field, render, text_field
from fairuse_console.security import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    acting_session,
    admin_session,
    checked_form,
    current_session,
    local_path,
    new_login_token,
    set_cookie,
    set_session_cookie,
    tokens_match,
)

logger = logging.getLogger(__name__)
router = APIRouter()


@router.get("/login")
def login_page(request: Request):
    return _login_form(request, error="", status_code=200)


@router.post("/login")
async def login(request: Request):
    form = await request.form()
    # Checking the password hash and writing the session block for tens of milliseconds: in a worker
    # thread, as FastAPI runs plain ``def`` routes, other pages are served meanwhile.
    return await run_in_threadpool(_log_in, request, form)


def _log_in(request: Request, form: FormData):
    if not tokens_match(form.get("csrf_token"), request.cookies.get(LOGIN_CSRF_COOKIE)):
        return _login_form(request, error="csrf", status_code=403)
    console = console_of(request)
    name = text_field(form, "name", required=False)
    address = request.client.host if request.client else ""
    wait = console.logins.retry_after(name, address)
    if wait:
        logger.warning("console login for staff name %r from %s rejected: too many failed logins, retry in %d s",
                       name[:64], address, wait)
        return _login_form(request, error="locked", status_code=429, retry_after=wait)

    member = console.directory.authenticate(name, str(form.get("password") or ""))
    if member is None:
        console.logins.failed(name, address)
        logger.warning("failed console login for staff name %r from %s", name[:64], address)
        return _login_form(request, error="credentials", status_code=401)
    console.logins.succeeded(name)
    token, _csrf = console.directory.start_session(member)
    logger.info("staff %s logged in", member.name)
    response = RedirectResponse(local_path(form.get("next")), status_code=303)
    set_session_cookie(response, request, token)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, session: StaffSession = Depends(current_session), form: FormData = Depends(checked_form)):
    console_of(request).directory.end_session(request.cookies.get(SESSION_COOKIE))
    logger.info("staff %s logged out", session.member.name)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/language")
def choose_language(request: Request, session: StaffSession = Depends(current_session),
                    form: FormData = Depends(checked_form)):
    """Store the member's language; viewers may choose theirs too."""
    console_of(request).directory.set_language(session.member.id, text_field(form, "language", required=False))
    return RedirectResponse(local_path(form.get("next")), status_code=303)


@router.get("/allowlist")
def allowlist_page(request: Request, session: StaffSession = Depends(current_session)):
    entries = console_of(request).allowlist.entries(include_ended=request.query_params.get("all") == "1")
    return render(request, "allowlist.html", {"entries": entries, "done": request.query_params.get("done", "")})


@router.post("/allowlist")
def allowlist_add(request: Request, form: FormData = Depends(checked_form), session: StaffSession = Depends(acting_session)):
    console_of(request).actions.add_allowlist(
        text_field(form, "subject_type"), text_field(form, "subject"), staff=session.member.name,
        duration=duration_field(form), comment=text_field(form, "comment"),
    )
    return RedirectResponse("/allowlist?done=add", status_code=303)


@router.post("/allowlist/{entry_id}/remove")
def allowlist_remove(entry_id: int, request: Request, form: FormData = Depends(checked_form),
                     session: StaffSession = Depends(acting_session)):
    if not 1 <= entry_id <= MAX_ROW_ID:
        raise NotFoundError(f"allowlist entry {entry_id} not found or already ended; see 'fairuse allowlist list'")
    console_of(request).actions.remove_allowlist(entry_id, staff=session.member.name, comment=text_field(form, "comment"))
    return RedirectResponse("/allowlist?done=remove", status_code=303)


@router.get("/audit")
def audit_page(request: Request, session: StaffSession = Depends(current_session)):
    params = request.query_params
    records = console_of(request).audit.records(staff=params.get("staff") or None, limit=300)
    return render(request, "audit.html", {"records": records, "staff_filter": params.get("staff", "")})


@router.get("/staff")
def staff_page(request: Request, session: StaffSession = Depends(admin_session)):
    return render(request, "staff.html", {"members": console_of(request).directory.members(),
                                          "done": request.query_params.get("done", "")})


@router.post("/staff")
def staff_add(request: Request, form: FormData = Depends(checked_form), session: StaffSession = Depends(admin_session)):
    password = form.get("password")
    if not isinstance(password, str):
        raise ReviewError("missing form field 'password'; fill it in and submit again")
    member = console_of(request).directory.add(text_field(form, "name"), password, text_field(form, "role"))
    logger.info("staff %s added staff %s as %s", session.member.name, member.name, member.role)
    return RedirectResponse("/staff?done=add", status_code=303)


def _login_form(request: Request, *, error: str, status_code: int, retry_after: int = 0):
    token = new_login_token()
    response = render(request, "login.html", {
        "login_token": token, "error": error, "next": local_path(request.query_params.get("next")),
        "retry_minutes": (retry_after + 59) // 60,
    }, status_code=status_code)
    set_cookie(response, request, LOGIN_CSRF_COOKIE, token, max_age=3600)
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response
