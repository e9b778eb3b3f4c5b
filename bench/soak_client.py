"""The soak's load clients: a tiny client-side load balancer, and one HTTP client per
simulated device that reports to Locust and counts what a user would call wrong.

Runs under gevent (Locust monkey-patches the standard library on import), so plain
`requests` and `websockets.sync` are cooperative here.

The balancer stands in for a real one: requests go round-robin across the web instances;
an instance that refuses a connection or drops one mid-request is skipped for a moment
(passive health check) and the request goes to the next. A request the server answered
is never re-sent elsewhere, except where the answer says to come back (429/503 with
Retry-After, which is honoured).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from locust.env import Environment

# How long an instance that failed a connection is left out of the rotation.
DOWN_FOR = 2.0
# The longest a client waits for an answer (long-polls ask the server for at most 20 s).
READ_TIMEOUT = 60.0
CONNECT_TIMEOUT = 3.0
# A request that keeps failing to connect anywhere gives up after this long.
GIVE_UP_AFTER = 60.0


class Balancer:
    """Round-robin over the live web instances (all share MongoDB, Redis, blobs, key)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self._down_until: dict[str, float] = dict.fromkeys(self.urls, 0.0)
        self._turn = itertools.count()

    def order(self) -> list[str]:
        """Every instance, the next in turn first, those recently failed last."""
        start = next(self._turn) % len(self.urls)
        ring = self.urls[start:] + self.urls[:start]
        now = time.monotonic()
        return [u for u in ring if self._down_until[u] <= now] + [
            u for u in ring if self._down_until[u] > now
        ]

    def failed(self, url: str) -> None:
        self._down_until[url] = time.monotonic() + DOWN_FOR


def on_host(url: str, base: str) -> str:
    """`url` (a signed chunk URL one instance made) sent to the instance at `base`: every
    instance shares the signing key and the blob store, so any of them takes it."""
    parts, target = urlsplit(url), urlsplit(base)
    return urlunsplit((target.scheme, target.netloc, parts.path, parts.query, ""))


@dataclass
class Tally:
    """What the soak counts beside Locust's per-route timings (one for the whole run)."""

    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    server_errors: list[str] = field(default_factory=list)
    timeouts: list[str] = field(default_factory=list)
    shed: Counter[str] = field(default_factory=Counter)  # 429/503 answers, by route
    shed_without_retry_after: list[str] = field(default_factory=list)
    connect_retries: int = 0  # refused connections, sent again to another instance
    dropped_retries: int = 0  # connections dropped mid-request, sent again
    unexpected: list[str] = field(default_factory=list)  # 4xx nobody should get
    wrong: list[str] = field(default_factory=list)  # answers that contradict the truth
    timeline: list[tuple[float, str, int, float]] = field(default_factory=list)

    def wrong_answer(self, what: str) -> None:
        self.wrong.append(what)


class GaveUp(Exception):
    """No instance answered (all refused connections for GIVE_UP_AFTER seconds)."""


class DeviceHTTP:
    """One device's HTTP client: its token, its own connection pool, the shared balancer.

    `call` reports one Locust request per logical request (its time includes any retry)
    and returns the answer; it never raises for an HTTP status.
    """

    def __init__(
        self, env: Environment, balancer: Balancer, tally: Tally, token: str | None = None
    ) -> None:
        self.env = env
        self.balancer = balancer
        self.tally = tally
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=4)
        self.session.mount("http://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(
        self,
        method: str,
        name: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200,),
        fine: tuple[int, ...] = (),
        record: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """`path` is relative to an instance, or a full URL (a signed chunk URL) that any
        instance serves. `ok`: the statuses that mean success; `fine`: 4xx that a race
        between devices explains (e.g. 404 for a file another device just deleted)."""
        started = time.monotonic()
        t0 = time.perf_counter()
        dropped = False
        while True:
            for base in self.balancer.order():
                url = on_host(path, base) if path.startswith("http") else base + path
                try:
                    r = self.session.request(
                        method, url, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), **kwargs
                    )
                except requests.exceptions.ConnectionError as exc:
                    # Refused (instance down) or dropped mid-request (killed): next one.
                    self.balancer.failed(base)
                    if _refused(exc):
                        self.tally.connect_retries += 1
                    else:
                        self.tally.dropped_retries += 1
                        dropped = True
                    continue
                except requests.exceptions.Timeout as exc:
                    self.tally.timeouts.append(f"{name}: {exc}")
                    self._report(method, name, t0, 0, exc, record)
                    raise
                if r.status_code in (429, 503):
                    self.tally.shed[name] += 1
                    retry_after = r.headers.get("Retry-After")
                    if retry_after is None:
                        self.tally.shed_without_retry_after.append(f"{name} {r.status_code}")
                    self.tally.statuses[name][r.status_code] += 1
                    time.sleep(min(float(retry_after or 1), 5.0))
                    break  # and go round again
                return self._answered(method, name, r, t0, ok, fine, dropped, record)
            if time.monotonic() - started > GIVE_UP_AFTER:
                exc = GaveUp(f"{name}: no instance answered for {GIVE_UP_AFTER:.0f} s")
                self._report(method, name, t0, 0, exc, record)
                raise exc
            time.sleep(0.2)

    def _answered(
        self,
        method: str,
        name: str,
        r: requests.Response,
        t0: float,
        ok: tuple[int, ...],
        fine: tuple[int, ...],
        dropped: bool,
        record: bool,
    ) -> requests.Response:
        self.tally.statuses[name][r.status_code] += 1
        failure: Exception | None = None
        if r.status_code >= 500:
            self.tally.server_errors.append(f"{name} {r.status_code} {r.text[:200]}")
            failure = RuntimeError(f"{r.status_code}")
        elif (
            r.status_code not in ok
            and r.status_code not in fine
            # A request re-sent after its connection dropped may find its own first try
            # done (a delete: 404; a share: 409): that is the retry's answer, not a bug.
            and not (dropped and r.status_code in (404, 409))
        ):
            self.tally.unexpected.append(f"{name} {r.status_code} {r.text[:200]}")
            failure = RuntimeError(f"unexpected {r.status_code}")
        self._report(method, name, t0, len(r.content), failure, record)
        return r

    def _report(
        self,
        method: str,
        name: str,
        t0: float,
        length: int,
        exc: Exception | None,
        record: bool,
    ) -> None:
        elapsed = (time.perf_counter() - t0) * 1000
        if not record:
            return
        self.tally.timeline.append((time.monotonic(), name, 0 if exc is None else 1, elapsed))
        self.env.events.request.fire(
            request_type=method,
            name=name,
            response_time=elapsed,
            response_length=length,
            exception=exc,
            context={},
        )


def _refused(exc: requests.exceptions.ConnectionError) -> bool:
    text = repr(exc)
    return "NewConnectionError" in text or "Connection refused" in text
