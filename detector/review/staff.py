"""Staff accounts, their Argon2id password hashes, and console sessions."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from detector.review.cases import shown_id
from detector.review.errors import NotFoundError, ReviewError
from detector.review.vocabulary import ROLES
from detector.store.review_models import ConsoleSettingRow, StaffRow, StaffSessionRow

LANGUAGES = ("en", "zh_CN")
SESSION_LIFETIME = timedelta(hours=12)
MIN_PASSWORD_LENGTH = 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_hasher = PasswordHasher()
# Verified against when the name is unknown, so a login takes as long either way.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


@dataclass(frozen=True, slots=True)
class StaffMember:
    id: int
    name: str
    role: str
    language: str

    @property
    def can_act(self) -> bool:
        """Whether this member may change anything (reviewers and admins); viewers only read."""
        return self.role in ("reviewer", "admin")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class StaffSession:
    """A logged-in member and the CSRF token every form of the session carries."""

    member: StaffMember
    csrf_token: str


class StaffDirectory:
    """Create staff accounts, check passwords and keep console sessions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, name: str, password: str, role: str) -> StaffMember:
        """Create an account; raise ``ReviewError`` for an invalid name, role or password, or a taken name."""
        if not _NAME.match(name):
            raise ReviewError(
                f"invalid staff name {name!r}; use 1 to 64 ASCII letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if role not in ROLES:
            raise ReviewError(f"invalid role {role!r}; expected one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ReviewError(f"password too short for {name!r}; use at least {MIN_PASSWORD_LENGTH} characters")
        row = StaffRow(name=name, password_hash=_hasher.hash(password), role=role, language="",
                       created_at=datetime.now(UTC))
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
                session.flush()
                return _member(row)
        except IntegrityError:
            raise ReviewError(f"staff name {name!r} is taken; pick another name") from None

    def members(self) -> list[StaffMember]:
        with Session(self.engine) as session:
            return [_member(row) for row in session.scalars(select(StaffRow).order_by(StaffRow.name))]

    def acting_member(self, name: str) -> StaffMember:
        """Return the enabled reviewer or admin called ``name``, the one a command acts as; raise otherwise."""
        with Session(self.engine) as session:
            row = session.scalar(select(StaffRow).where(StaffRow.name == name))
        if row is None or row.disabled_at is not None:
            raise NotFoundError(
                f"staff member {shown_id(name)} not found or disabled; pass --staff with the name of a reviewer or admin, "
                f"or create one first with 'fairuse staff add NAME --role reviewer'"
            )
        if row.role not in ("reviewer", "admin"):
            raise ReviewError(f"staff member {shown_id(name)} is a {row.role} and may not act; pass --staff with a reviewer or admin")
        return _member(row)

    def authenticate(self, name: str, password: str) -> StaffMember | None:
        """Return the member whose name and password match, else None. Rehashes outdated hashes.

        MariaDB's collation ignores case and accents ("RITÁ" finds "rita"). The
        login limit counts failures per name ignoring case only, so a spelling
        that differs in more than case would escape it and is treated as unknown.
        """
        with Session(self.engine) as session, session.begin():
            row = session.scalar(select(StaffRow).where(StaffRow.name == name))
            if row is not None and row.name.casefold() != name.casefold():
                row = None
            if row is None or row.disabled_at is not None:
                _verify(_DUMMY_HASH, password)
                return None
            if not _verify(row.password_hash, password):
                return None
            if _hasher.check_needs_rehash(row.password_hash):
                row.password_hash = _hasher.hash(password)
            return _member(row)

    def set_language(self, member_id: int, language: str) -> None:
        """Store a member's language; "" means: follow the browser."""
        if language and language not in LANGUAGES:
            raise ReviewError(f"unsupported language {language!r}; expected one of {', '.join(LANGUAGES)}")
        with Session(self.engine) as session, session.begin():
            row = session.get(StaffRow, member_id)
            if row is None:
                raise NotFoundError(f"staff account {member_id} not found")
            row.language = language

    def start_session(self, member: StaffMember) -> tuple[str, str]:
        """Open a session; return its cookie value (stored only as a SHA-256) and its CSRF token."""
        token = secrets.token_urlsafe(32)
        csrf_token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            session.execute(delete(StaffSessionRow).where(StaffSessionRow.expires_at <= now))
            session.add(StaffSessionRow(id=_digest(token), staff_id=member.id, csrf_token=csrf_token,
                                        created_at=now, expires_at=now + SESSION_LIFETIME))
        return token, csrf_token

    def session_for(self, token: str | None) -> StaffSession | None:
        """Return the session of a cookie value, or None when it is unknown, expired or its account disabled."""
        if not token:
            return None
        with Session(self.engine) as session:
            found = session.execute(
                select(StaffSessionRow, StaffRow)
                .join(StaffRow, StaffRow.id == StaffSessionRow.staff_id)
                .where(StaffSessionRow.id == _digest(token))
            ).first()
        if found is None:
            return None
        stored, row = found
        if stored.expires_at <= datetime.now(UTC) or row.disabled_at is not None:
            return None
        return StaffSession(member=_member(row), csrf_token=stored.csrf_token)

    def end_session(self, token: str | None) -> None:
        if not token:
            return
        with Session(self.engine) as session, session.begin():
            session.execute(delete(StaffSessionRow).where(StaffSessionRow.id == _digest(token)))

    def pseudonym_key(self) -> bytes:
        """Return the key of address pseudonyms, created on first use and kept in the database."""
        try:
            with Session(self.engine) as session, session.begin():
                row = session.get(ConsoleSettingRow, "pseudonym_key")
                if row is None:
                    row = ConsoleSettingRow(name="pseudonym_key", value=secrets.token_hex(32))
                    session.add(row)
                return bytes.fromhex(row.value)
        except IntegrityError:
            # Another console process created the key first; use that one.
            with Session(self.engine) as session:
                return bytes.fromhex(session.get(ConsoleSettingRow, "pseudonym_key").value)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _member(row: StaffRow) -> StaffMember:
    return StaffMember(id=row.id, name=row.name, role=row.role, language=row.language)
