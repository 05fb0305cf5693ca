"""Engine creation and schema migrations, applied on first use."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event

logger = logging.getLogger(__name__)

DATABASE_ENV = "FAIRUSE_DATABASE_URL"
DEFAULT_URL = "sqlite:///fairuse.db"
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
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


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
