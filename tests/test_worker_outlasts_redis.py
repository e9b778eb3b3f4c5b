"""The worker outlasts a Redis outage (found by the soak, bench/soak.py: arq's poll loop
let the first failed Redis call end the worker process, and with it the sweeper).

A real stack: nx-27017, redis-server and the worker; Redis is stopped for a few seconds
and started again on the same port. The worker must still be running afterwards and
must run jobs again: a job queued after the outage completes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from arq import create_pool
from arq.connections import RedisSettings

from tests.stack import Stack


@pytest.fixture
def small_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path / "stack")
    try:
        stack.start_mongo()
        stack.start_redis()
        stack.start_worker()
        yield stack
    finally:
        stack.stop_all()


async def run_job(stack: Stack, function: str, wait_s: float = 30) -> object:
    pool = await create_pool(RedisSettings.from_dsn(stack.env["REDIS_URL"]))
    try:
        job = await pool.enqueue_job(function)
        assert job is not None
        return await job.result(timeout=wait_s)
    finally:
        await pool.aclose()


async def test_the_worker_keeps_running_through_a_redis_outage(small_stack: Stack) -> None:
    worker, redis = small_stack.procs["worker"], small_stack.procs["redis"]
    assert isinstance(await run_job(small_stack, "sweep_outboxes"), int)

    redis.stop()
    await asyncio.sleep(4)  # the worker polls (and fails) many times meanwhile
    assert worker.alive(), "the worker exited when Redis went away"
    redis.start()

    deadline = time.monotonic() + 30
    while True:  # Redis answers again; the worker picks jobs up by itself
        try:
            assert isinstance(await run_job(small_stack, "sweep_outboxes", wait_s=10), int)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
    assert worker.alive()
    log = (small_stack.root / "logs" / "worker.log").read_text()
    assert "Redis unavailable" in log and "Redis is back" in log
