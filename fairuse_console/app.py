"""Build the console app: services, routers, static files and error pages."""

from __future__ import annotations

import logging
from pathlib import Path

import redis
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine

from detector.review.actions import StaffActions
from detector.review.activity import ActivityLog
from detector.review.audit import AuditLog
from detector.review.cases import CaseQueue
from detector.review.errors import (
    ConflictError, NotFoundError, PublishError, ResolvedCaseError, ReviewError, StaleCaseError,
)
from detector.review.staff import StaffDirectory
from detector.store import open_store
from detector.store.allowlist import StaffAllowlist
from fairuse_console import routes_account, routes_cases
from fairuse_console.context import Console, language_of, make_templates, render
from fairuse_console.display import display_zone
from fairuse_console.i18n import gettext_functions
from fairuse_console.login_limit import LoginLimiter
from fairuse_console.messages import N_
from fairuse_console.security import Forbidden, LoginRequired
from workers.publish import DecisionPublisher

logger = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
# Pages load only their own stylesheet and inline SVG charts, and are never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(
    *, database_url: str | None = None, redis_url: str = "redis://127.0.0.1:6379/0", prefix: str = "fairuse",
    engine: Engine | None = None, publisher: DecisionPublisher | None = None, logins: LoginLimiter | None = None,
    time_zone: str = "UTC",
) -> FastAPI:
    """Build the console on the store at ``database_url`` (or ``engine``), publishing to Redis.

    ``logins`` limits failed logins; the default allows 10 per staff name and per address in 15 minutes.
    Pages show times in ``time_zone``, an IANA name such as ``Asia/Shanghai``.
    """
    zone = display_zone(time_zone)
    engine = engine or open_store(database_url).engine
    publisher = publisher or DecisionPublisher(
        redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5), prefix=prefix
    )
    directory = StaffDirectory(engine)
    app = FastAPI(title="fairuse review console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = Console(
        engine=engine, directory=directory, queue=CaseQueue(engine), actions=StaffActions(engine, publisher),
        allowlist=StaffAllowlist(engine), audit=AuditLog(engine), activity=ActivityLog(engine),
        pseudonym_key=directory.pseudonym_key(), templates=make_templates(zone), logins=logins or LoginLimiter(),
        zone=zone,
    )
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.middleware("http")
    async def add_security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    app.include_router(routes_account.router)
    app.include_router(routes_cases.router)
    _add_error_pages(app)
    return app


def _add_error_pages(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    def login_required(request: Request, _error: LoginRequired):
        if request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={_quoted(target)}", status_code=303)
        message = _translate(request, N_("login required; log in and submit again"))
        return render(request, "error.html", {"message": message}, status_code=401)

    @app.exception_handler(Forbidden)
    def forbidden(request: Request, error: Forbidden):
        logger.warning("rejected %s %s: %s", request.method, request.url.path, error.message)
        message = _translate(request, error.template, **error.values)
        return render(request, "error.html", {"message": message}, status_code=403)

    @app.exception_handler(ReviewError)
    def review_error(request: Request, error: ReviewError):
        status = 400
        if isinstance(error, NotFoundError):
            status = 404
        elif isinstance(error, ConflictError):
            status = 409
        elif isinstance(error, PublishError):
            status = 503
        # Review errors are English text shared with the command line. A message without fields that the
        # catalog lists is shown translated, as are those with a template. Any other stays English.
        if isinstance(error, (StaleCaseError, ResolvedCaseError)):
            message = _translate(request, error.TEMPLATE, **_translated_words(request, error.values))
        else:
            message = _translate(request, str(error))
        return render(request, "error.html", {"message": message}, status_code=status)


def _translate(request: Request, message: str, **values: object) -> str:
    return gettext_functions(language_of(request))["_"](message, **values)


def _translated_words(request: Request, values: dict) -> dict:
    """Return ``values`` with the resolution, a word the catalog lists, in the reader's language."""
    if "resolution" not in values:
        return values
    return {**values, "resolution": _translate(request, values["resolution"])}


def _quoted(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")
