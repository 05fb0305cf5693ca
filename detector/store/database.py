"""Engine creation and schema migrations, applied on first use."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text

logger = logging.getLogger(__name__)

DATABASE_ENV = "FAIRUSE_DATABASE_URL"
DEFAULT_URL = "sqlite:///fairuse.db"
# Name of the lock that one migrating process holds at a time (PostgreSQL advisory lock key, MariaDB GET_LOCK name).
_MIGRATION_LOCK_KEY = 0x66616972  # "fair"
_MIGRATION_LOCK_NAME = "fairuse-migrate"
_MIGRATION_LOCK_SECONDS = 300
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def resolve_url(url: str | None = None) -> str:
    """Return ``url``, else ``$FAIRUSE_DATABASE_URL``, else a SQLite file in the working folder."""
    return url or os.environ.get(DATABASE_ENV) or DEFAULT_URL


def create_store_engine(url: str) -> Engine:
    """Create an engine. A SQLite file's folder is created, and SQLite gets WAL so readers never block the writer."""
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _configure_sqlite)
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    # Imported here, not with the module, because Alembic takes about 0.15 s to import
    # (python -X importtime). ``fairuse score`` imports it in a background thread while it reads.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    # The locks are held until the migration's transaction has committed. The SQLite file's lock comes
    # before the first connection, because each new connection switches the file to WAL.
    with (
        _sqlite_file_lock(engine),
        engine.connect() as lock_connection,
        _server_lock(engine, lock_connection),
        engine.begin() as connection,
    ):
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextmanager
def _server_lock(engine: Engine, connection: Connection) -> Iterator[None]:
    """Hold a lock that one process at a time can hold while it migrates ``engine``'s database server.

    Workers started together on a new database otherwise all create the
    first tables, and all but one fail with "table already exists".
    PostgreSQL takes a session advisory lock and MariaDB and MySQL a named
    lock, both on ``connection``. SQLite takes ``_sqlite_file_lock`` instead.
    """
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with _advisory_lock(connection):
            yield
    elif dialect in ("mysql", "mariadb"):
        with _named_lock(connection):
            yield
    else:
        yield


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Hold an exclusive ``flock`` on a file beside a SQLite database file; other databases need none.

    An in-memory SQLite database has a single user.
    """
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        yield
        return
    with _file_lock(Path(f"{engine.url.database}.migrate-lock")):
        yield


@contextmanager
def _advisory_lock(connection: Connection) -> Iterator[None]:
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    connection.commit()
    try:
        yield
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        connection.commit()


@contextmanager
def _named_lock(connection: Connection) -> Iterator[None]:
    acquired = connection.execute(
        text("SELECT GET_LOCK(:name, :seconds)"), {"name": _MIGRATION_LOCK_NAME, "seconds": _MIGRATION_LOCK_SECONDS}
    ).scalar()
    if acquired != 1:
        raise TimeoutError(
            f"another process held the migration lock {_MIGRATION_LOCK_NAME!r} for {_MIGRATION_LOCK_SECONDS} s; "
            "check for a stuck fairuse process migrating this database"
        )
    connection.commit()
    try:
        yield
    finally:
        connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _MIGRATION_LOCK_NAME})
        connection.commit()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def open_store(url: str | None = None):  # -> DecisionStore, imported late to avoid a cycle
    """Open the store at ``url`` (see ``resolve_url``), migrating the schema first."""
    from detector.store.repository import DecisionStore

    resolved = resolve_url(url)
    engine = create_store_engine(resolved)
    migrate(engine)
    logger.debug("store ready at %s", engine.url.render_as_string(hide_password=True))
    return DecisionStore(engine)


def _configure_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
