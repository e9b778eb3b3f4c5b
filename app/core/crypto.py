"""Secrets: token hashing, and password hashing on its own small, bounded thread pool.

argon2 is deliberately slow (tens of milliseconds and 64 MiB per hash). Run on the
default thread pool, a flood of logins would queue ahead of chunk reads and fsyncs and
stall every transfer; here hashing has its own pool of `workers` threads and at most
`queue` callers waiting for it. Past that the caller is told to come back later (503 with
Retry-After) instead of waiting: shedding load is cheaper than queueing it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

T = TypeVar("T")


class PasswordHashingBusy(Exception):
    """Every password-hashing slot is taken; try again in a moment."""


def token_hash(raw: str) -> str:
    """How bearer tokens, session cookies and link tokens are stored: SHA-256 only."""
    return hashlib.sha256(raw.encode()).hexdigest()


class PasswordHashing:
    def __init__(self, workers: int = 2, queue: int = 16) -> None:
        self._hasher = PasswordHasher()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._slots = asyncio.Semaphore(workers + queue)
        # Verified against when an account is unknown, so timing reveals nothing.
        self.dummy_hash = self._hasher.hash("not-a-real-password")

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._slots.locked():
            raise PasswordHashingBusy
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self._hasher.hash(password))

    async def verify(self, password_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await self._run(check)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
