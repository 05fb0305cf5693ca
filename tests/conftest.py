"""Shared fixtures: plans, policy, and a clean database per test on every backend.

PostgreSQL and MariaDB are real servers on loopback. A test that needs one
fails when the server is down, so a missing service never passes as a skip;
.ci/run starts both before the tests.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from detector.plans import load_plans
from detector.policy import load_policy
from detector.store import DecisionStore, open_store

POSTGRES_URL = os.environ.get("FAIRUSE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIADB_URL = os.environ.get("FAIRUSE_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/mysql")


@pytest.fixture(scope="session")
def plans():
    return load_plans()


@pytest.fixture(scope="session")
def policy():
    return load_policy()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'fairuse.db'}"


@pytest.fixture
def postgres_url():
    yield from _scratch_database(POSTGRES_URL)


@pytest.fixture
def mariadb_url():
    yield from _scratch_database(MARIADB_URL)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(request):
    """A fresh, empty database on each backend the store supports."""
    name = {"sqlite": "sqlite_url", "postgresql": "postgres_url", "mariadb": "mariadb_url"}[request.param]
    return request.getfixturevalue(name)


@pytest.fixture
def store(sqlite_url):
    return open_store(sqlite_url)


def _scratch_database(admin_url: str):
    name = f"fairuse_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
    except Exception as error:  # noqa: BLE001 - any connection failure means the server is missing
        pytest.fail(f"cannot reach {admin.url.render_as_string(hide_password=True)}: {error}; start the server (see .ci/run)")

    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            if admin.dialect.name == "postgresql":
                connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


REDIS_URL = os.environ.get("FAIRUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_client():
    """A Redis connection; tests use ``redis_prefix`` keys only, removed afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"cannot reach Redis at {REDIS_URL}: {error}; start it (see .ci/run)")
    yield client
    client.close()


@pytest.fixture
def redis_prefix(redis_client):
    prefix = f"fairuse-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    # RQ keeps the queues named after the prefix ({prefix}-queue) and their registries under rq:.
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    keys += redis_client.scan_iter(match=f"rq:*{prefix}-*", count=1000)
    if keys:
        redis_client.delete(*keys)
    redis_client.srem("rq:queues", f"rq:queue:{prefix}-queue")


@dataclass(frozen=True)
class ScoredSimulation:
    """Simulated traffic in time order, its events read, and the store the batch command wrote for it."""

    events_path: Path
    frame: pd.DataFrame
    batch: DecisionStore


@pytest.fixture(scope="session")
def scored_simulation(tmp_path_factory) -> ScoredSimulation:
    """Return 80 simulated keys over 3 days scored by the batch command, shared by the state worker tests.

    Tests only read the batch store: each builds its own workers and stores.
    """
    from detector.batch import BatchOptions, run_batch
    from detector.readers import read_events
    from detector.simulate import simulate_traffic

    folder = tmp_path_factory.mktemp("scored-simulation")
    traffic = simulate_traffic(folder / "traffic", keys=80, days=3, seed=5)
    database = f"sqlite:///{folder / 'batch.db'}"
    run_batch(BatchOptions(paths=[traffic.events_path], database_url=database))
    return ScoredSimulation(
        events_path=traffic.events_path, frame=read_events([traffic.events_path]).frame, batch=open_store(database)
    )
