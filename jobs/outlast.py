"""An arq worker that outlasts a Redis outage instead of exiting on it.

arq's poll loop lets the first failed Redis call escape: the worker process exits (the
main worker) or its task dies quietly (the thumbnail worker inside it). Measured in the
soak (bench/soak.py): Redis stopped for 10 s ended both workers for good, and with them
the sweeper that delivers the events the web left for later and every queued fan-out.
Here a poll that fails on Redis waits and polls again (the connection pool reconnects by
itself), so the worker picks up where it was once Redis is back. Jobs are idempotent and
any lost with Redis's queue are redone by the sweeps (jobs/worker.py).
"""

from __future__ import annotations

import asyncio
import logging

from arq.worker import Worker
from redis.exceptions import RedisError

log = logging.getLogger("coffer.worker")

# How long to wait before polling again after Redis failed, doubling up to the last.
BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0)


class OutlastingWorker(Worker):
    _failures = 0

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            wait = BACKOFF[min(self._failures, len(BACKOFF) - 1)]
            if self._failures == 0:
                log.warning("Redis unavailable (%s); polling again until it is back", exc)
            self._failures += 1
            await asyncio.sleep(wait)
            return
        if self._failures:
            log.warning("Redis is back after %d failed polls", self._failures)
            self._failures = 0
