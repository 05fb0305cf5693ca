"""Schedule for ``rq cron workers.cron_jobs``: keep consumers running and Redis republished.

``FAIRUSE_CONSUMERS`` (default 1) consume jobs are enqueued every minute, each
running 55 s, so that many ``rq worker fairuse`` processes share the stream.
Decisions are republished from the SQL store every five minutes, which also
restores them after Redis lost its data, and every hour the anomaly model
scores the finished days of keys that have gone quiet. Every minute, the
gateways in ``FAIRUSE_GATEWAYS_CONFIG`` are brought in line with the decisions
in force (``workers/enforce``).
"""

import os

from rq import cron

from workers.enforce.jobs import enforce_gateways
from workers.jobs import QUEUE, consume_stream, republish_decisions, rescore_quiet_keys

for slot in range(int(os.environ.get("FAIRUSE_CONSUMERS", "1"))):
    cron.register(
        consume_stream, queue_name=QUEUE, interval=60, kwargs={"seconds": 55.0, "consumer": f"cron-{slot}"},
        job_timeout=180, name=f"consume-stream-{slot}",
    )

cron.register(republish_decisions, queue_name=QUEUE, interval=300, job_timeout=300, name="republish-decisions")
cron.register(rescore_quiet_keys, queue_name=QUEUE, interval=3600, job_timeout=1800, name="rescore-quiet-keys")
cron.register(enforce_gateways, queue_name=QUEUE, interval=60, job_timeout=300, name="enforce-gateways")
