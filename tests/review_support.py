"""Builders shared by the staff review tests: stored decisions, staff accounts and console logins."""

from __future__ import annotations

import re
from functools import cache
from datetime import UTC, datetime, timedelta

from detector.decisions import Decision

PASSWORD = "correct horse battery staple"


def policy_decision(
    subject: str, *, action: str = "review", score: float = 70.0, reasons=("key_sharing",), subject_type: str = "key",
    plan: str = "text", hours: float = 168.0, ident: str | None = None,
) -> Decision:
    """Return a decision as policy makes it, detected an hour ago and in force for ``hours``."""
    now = datetime.now(UTC)
    return Decision(
        id=ident or f"{action}-{subject_type}-{subject}",
        subject_type=subject_type, subject=subject, action=action, reasons=list(reasons), score=score,
        evidence={reasons[0]: {"networks": 4, "seen_from": "203.0.113.77"}},
        detected_at=now - timedelta(hours=1), created_at=now, expires_at=now + timedelta(hours=hours),
        origin=f"{reasons[0]}/1+policy/default-1", plan=plan, account_id=f"acct-{subject}",
        limit_rpm=10 if action == "throttle" else None, rule="test rule",
    )


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


def log_in(client, name: str, password: str = PASSWORD) -> str:
    """Log ``client`` in through the login form and return the session's CSRF token."""
    token = csrf_token(client.get("/login").text)
    response = client.post("/login", data={"csrf_token": token, "name": name, "password": password, "next": "/"},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf_token(client.get("/").text)


@cache
def _password_hash() -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(PASSWORD)


def add_staff(engine, name: str, role: str) -> None:
    """Insert a staff account with ``PASSWORD``, hashing it once per test run (Argon2 is slow on purpose)."""
    from sqlalchemy.orm import Session

    from detector.store.review_models import StaffRow

    with Session(engine) as session, session.begin():
        session.add(StaffRow(name=name, password_hash=_password_hash(), role=role, language="",
                             created_at=datetime.now(UTC)))
