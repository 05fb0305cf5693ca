"""Logins, sessions, roles and CSRF checks of the console.

A session is a random cookie value whose SHA-256 is stored with the staff
member and a per-session CSRF token (``detector.review.staff``). Every POST
form carries that token in a hidden ``csrf_token`` field, compared in
constant time. The login form, which has no session yet, uses a
double-submit cookie instead. Cookies are HttpOnly and SameSite=Strict, and
Secure when the console is reached over HTTPS.

Failed logins are logged and limited per staff name and per client address
(``fairuse_console.login_limit``).
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import Depends, Request
from starlette.datastructures import FormData
from starlette.responses import Response

from detector.review.staff import SESSION_LIFETIME, StaffSession
from fairuse_console.messages import N_

SESSION_COOKIE = "fairuse_session"
LOGIN_CSRF_COOKIE = "fairuse_login_csrf"


class LoginRequired(Exception):
    """Raised when a request has no valid session."""


class Forbidden(Exception):
    """Raised when a logged-in member's role does not allow the request, or its CSRF token is missing or wrong.

    ``template`` is a catalog message with ``%(name)s`` fields filled from ``values``, so the error page can
    show it in the member's language. ``message`` is the English text for logs.
    """

    def __init__(self, template: str, **values: object) -> None:
        self.template = template
        self.values = values
        self.message = template % values if values else template
        super().__init__(self.message)


def current_session(request: Request) -> StaffSession:
    """Return the request's session or raise ``LoginRequired``."""
    session = request.app.state.console.directory.session_for(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise LoginRequired()
    request.state.staff_session = session
    return session


async def checked_form(request: Request, session: StaffSession = Depends(current_session)) -> FormData:
    """Return the posted form after checking its CSRF token against the session's."""
    form = await request.form()
    if not tokens_match(form.get("csrf_token"), session.csrf_token):
        raise Forbidden(N_("missing or invalid CSRF token; reload the page and submit the form again"))
    return form


def acting_session(session: StaffSession = Depends(current_session), form: FormData = Depends(checked_form)) -> StaffSession:
    """Return the session of a reviewer or admin posting a valid form; viewers get 403."""
    if not session.member.can_act:
        raise Forbidden(N_("role %(role)r can only read; ask an admin for the reviewer role"), role=session.member.role)
    return session


def admin_session(session: StaffSession = Depends(current_session)) -> StaffSession:
    if not session.member.is_admin:
        raise Forbidden(N_("role %(role)r cannot manage staff; this page is for admins"), role=session.member.role)
    return session


def tokens_match(submitted: object, expected: str | None) -> bool:
    """Return whether a submitted token equals the expected one, compared in constant time."""
    if not isinstance(submitted, str) or not expected:
        return False
    return hmac.compare_digest(submitted.encode(), expected.encode())


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    set_cookie(response, request, SESSION_COOKIE, token, int(SESSION_LIFETIME.total_seconds()))


def local_path(target: object, default: str = "/") -> str:
    """Return ``target`` if it is a path on this site, else ``default`` (no open redirects).

    >>> local_path("/cases/3")
    '/cases/3'
    >>> local_path("//example.org/x")
    '/'
    """
    if isinstance(target, str) and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default
