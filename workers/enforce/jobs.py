"""RQ job: one enforcement pass over every gateway in ``FAIRUSE_GATEWAYS_CONFIG``.

``workers/cron_jobs.py`` schedules it every minute. Gateways without an
``enforce`` table are skipped; the admin secrets come from the environment
variables the file names.
"""

from __future__ import annotations

import logging
import os

from detector.readers.gateways import load_gateways
from detector.store import open_store
from workers.enforce import build_enforcer
from workers.enforce.follow import run_passes

logger = logging.getLogger(__name__)

CONFIG_ENV = "FAIRUSE_GATEWAYS_CONFIG"


def enforce_gateways() -> list[dict]:
    """Reconcile every configured gateway with the decisions in force; return each pass's counts."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        logger.info("%s is not set; no gateway to enforce in", CONFIG_ENV)
        return []
    store = open_store(os.environ.get("FAIRUSE_DATABASE_URL"))
    enforcers = [build_enforcer(settings, store) for settings in load_gateways(path).values() if settings.enforce]
    return [vars(report) for report in run_passes(enforcers)]
