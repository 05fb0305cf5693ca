"""Alembic migrations: the schema matches the models, 0006 keeps one open case per subject, 0007 renumbers findings,
0008 compares subjects exactly on MariaDB."""

import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from detector.detectors.base import Finding

# Imported for their tables, which they register on Base.
from detector.store import database, gateway_sync, model_assignments, review_models  # noqa: F401
from detector.store.database import create_store_engine, migrate
from detector.store.models import Base
from detector.store.repository import finding_id

_DETECTED = datetime(2026, 11, 23, 10, 0, 0, 734000, tzinfo=UTC)
_FINDINGS = sa.table("findings", *(sa.column(name) for name in (
    "id", "subject_type", "subject", "account_id", "plan", "reason", "score", "impact", "detected_at", "window_start",
    "window_end", "origin")), sa.column("evidence", sa.JSON))


def _upgrade(engine, revision: str) -> None:
    _migrate(engine, command.upgrade, revision)


def _downgrade(engine, revision: str) -> None:
    _migrate(engine, command.downgrade, revision)


def _migrate(engine, step, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(database._MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        step(config, revision)


def test_schema_matches_models(database_url):
    engine = create_store_engine(database_url)
    migrate(engine)

    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)

    # Type differences between dialects are not compared; tables, columns and indexes are.
    structural = [item for item in differences if item[0] in {"add_table", "remove_table", "add_column",
                                                                "remove_column", "add_index", "remove_index"}]
    assert structural == []


def test_open_slot_backfilled_for_oldest_open_case(database_url):
    engine = create_store_engine(database_url)
    _upgrade(engine, "0005")
    now = datetime.now(UTC)
    cases = sa.table("cases", *(sa.column(name) for name in (
        "subject_type", "subject", "account_id", "plan", "status", "score", "reasons", "opened_by", "opened_at",
        "updated_at", "resolution", "resolved_by")))
    row = {"subject_type": "key", "account_id": "", "plan": "", "score": 0.0, "reasons": "[]", "opened_by": "policy",
           "opened_at": now, "updated_at": now, "resolution": "", "resolved_by": ""}
    with engine.begin() as connection:
        for subject, status in (("key-a", "open"), ("key-a", "open"), ("key-b", "resolved"), ("key-c", "open")):
            connection.execute(sa.insert(cases).values(**row, subject=subject, status=status))

    _upgrade(engine, "head")

    with engine.connect() as connection:
        slots = connection.execute(sa.text("SELECT subject, open_subject FROM cases ORDER BY id")).all()
    assert [subject for subject, slot in slots if slot] == ["key-a", "key-c"]
    assert slots[1][1] is None
    assert slots[2][1] is None


def test_finding_ids_gain_evidence_kind(database_url):
    engine = create_store_engine(database_url)
    _upgrade(engine, "0006")
    with_kind = _finding_row("old-1", {"kind": "short_window", "value": 1})
    without_kind = _finding_row("old-2", {"value": 2}, reason="key_sharing")
    with engine.begin() as connection:
        connection.execute(sa.insert(_FINDINGS), [with_kind, without_kind])

    _upgrade(engine, "head")

    with engine.connect() as connection:
        ids = dict(connection.execute(sa.select(_FINDINGS.c.reason, _FINDINGS.c.id)).all())
    assert ids["abnormal_cost"] == finding_id(_finding(evidence={"kind": "short_window"}))
    assert ids["key_sharing"] == "old-2"


def _finding_row(finding_id: str, evidence: dict, reason: str = "abnormal_cost") -> dict:
    return {"id": finding_id, "subject_type": "key", "subject": "key-a", "account_id": "", "plan": "", "reason": reason,
            "score": 80.0, "impact": 2.0, "detected_at": _DETECTED, "window_start": _DETECTED, "window_end": _DETECTED,
            "origin": f"{reason}/3", "evidence": evidence}


def test_finding_ids_lose_kind_on_downgrade(database_url):
    """Two findings that differ only in kind share the old id, so one of them goes."""
    engine = create_store_engine(database_url)
    _upgrade(engine, "head")
    with engine.begin() as connection:
        connection.execute(sa.insert(_FINDINGS), [
            _finding_row("new-1", {"kind": "rolling_hour"}), _finding_row("new-2", {"kind": "short_window"}),
        ])

    _downgrade(engine, "0006")

    with engine.connect() as connection:
        ids = connection.execute(sa.select(_FINDINGS.c.id)).scalars().all()
    assert ids == [finding_id(_finding(evidence={}))]


def _finding(evidence: dict) -> Finding:
    return Finding(
        subject_type="key", subject="key-a", account_id="", plan="", reason="abnormal_cost", score=80.0, impact=2.0,
        detected_at=_DETECTED.timestamp(), window_start=0.0, window_end=0.0, origin="abnormal_cost/3",
        evidence=evidence,
    )


def test_subjects_compared_exactly_after_0008(mariadb_url):
    engine = create_store_engine(mariadb_url)
    _upgrade(engine, "0007")
    with engine.begin() as connection:
        connection.execute(sa.insert(_FINDINGS), [_finding_row("old-1", {})])
        before = connection.execute(sa.select(_FINDINGS.c.id).where(_FINDINGS.c.subject == "KEY-A")).scalars().all()

    _upgrade(engine, "head")

    with engine.connect() as connection:
        upper = connection.execute(sa.select(_FINDINGS.c.id).where(_FINDINGS.c.subject == "KEY-A")).scalars().all()
        exact = connection.execute(sa.select(_FINDINGS.c.id).where(_FINDINGS.c.subject == "key-a")).scalars().all()
    # Before, MariaDB's default collation found key-a's finding under KEY-A.
    assert before == ["old-1"]
    assert upper == []
    assert exact == ["old-1"]


def test_0008_downgrades(mariadb_url):
    engine = create_store_engine(mariadb_url)
    _upgrade(engine, "head")

    _downgrade(engine, "0007")

    with engine.connect() as connection:
        collation = connection.execute(sa.text(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = 'findings' AND column_name = 'subject'"
        )).scalar_one()
    assert collation != "utf8mb4_bin"


def test_0008_downgrade_stops_before_changing(mariadb_url):
    engine = create_store_engine(mariadb_url)
    _upgrade(engine, "head")
    hour = datetime(2026, 12, 1, 10, tzinfo=UTC)
    activity = sa.table("subject_activity", *(sa.column(name) for name in (
        "subject_type", "subject", "hour", "requests", "cost", "networks", "countries", "user_agents")),
        sa.column("gaps", sa.JSON))
    with engine.begin() as connection:
        connection.execute(sa.insert(activity), [
            {"subject_type": "key", "subject": subject, "hour": hour, "requests": 1, "cost": 0.0, "networks": 1,
             "countries": 1, "user_agents": 1, "gaps": []}
            for subject in ("key-a", "KEY-A")
        ])

    with pytest.raises(RuntimeError, match="subject_activity"):
        _downgrade(engine, "0007")

    # Nothing was changed, so the database still matches its recorded revision.
    with engine.connect() as connection:
        version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        collations = connection.execute(sa.text(
            "SELECT DISTINCT collation_name FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND column_name IN ('subject', 'target')"
        )).scalars().all()
    assert version == "0008"
    assert collations == ["utf8mb4_bin"]


def test_batch_import_leaves_alembic_to_migrate():
    # fairuse score imports Alembic in a background thread while it reads. Imported with the store, it cost 0.15 s.
    probe = "import sys, detector.batch; print(sorted(name for name in sys.modules if name.startswith('alembic')))"
    imported = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout

    assert imported.strip() == "[]"


_MIGRATE_AT = """
import sys, time
import alembic.command, alembic.config  # imported before the start time, so the processes migrate together
from detector.store.database import create_store_engine, migrate
engine = create_store_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
migrate(engine)
"""


def test_processes_migrate_new_database_together(database_url):
    # Workers started together on a new database all ran the first migration, and all but one failed
    # with "table decisions already exists".
    start = time.time() + 3.0
    processes = [
        subprocess.Popen([sys.executable, "-c", _MIGRATE_AT, database_url, str(start)], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [process.communicate(timeout=120)[1] for process in processes]

    for process, error in zip(processes, errors):
        assert process.returncode == 0, error
    with create_store_engine(database_url).connect() as connection:
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == _head()


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from detector.store.database import _MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()
