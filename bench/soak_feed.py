"""Each simulated device's view of its account, built only from its event feed (the
Zulip test: initial state + every event = a fresh listing), and the follower that keeps
it current over a long-poll or a WebSocket, reconnecting elsewhere when an instance dies.

The model keeps what a sync client keeps: path -> (file id, kind, content hash), and its
cursor. Like a real client it re-lists a subtree only where an event says a whole subtree
appeared (share.added, a restored folder); everything else comes from the events alone.

The follower also checks delivery: seqs strictly increase across reconnects; any seq it
never saw is recorded, to be shown at the end to be a hole the server filled (a writer
that died between taking a seq and writing its event), never a lost event.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import gevent
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from bench.soak_client import Balancer, DeviceHTTP

Entry = tuple[str, str, str | None]  # (file id, kind, content hash)
POLL_WAIT = 20  # seconds a long-poll may wait on the server


def _under(key: str, root: str) -> bool:
    return key == root or key.startswith(root + "/")


@dataclass
class Model:
    http: DeviceHTTP
    username: str
    cursor: int = 0
    start_cursor: int = 0
    tree: dict[str, Entry] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)  # every event seq received, in order
    order_errors: list[str] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)

    # ---------------------------------------------------------------- listings

    def listing(self, path: str | None = None, folder_id: str | None = None) -> dict[str, Entry]:
        """Everything under a folder, recursively (a fresh listing, as a client makes)."""
        out: dict[str, Entry] = {}
        todo: list[dict[str, Any]] = [{"path": path} if folder_id is None else {"id": folder_id}]
        while todo:
            params = todo.pop()
            cursor = None
            while True:
                query = {**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}
                r = self.http.call(
                    "GET",
                    "GET /api/file (replay listing)",
                    "/api/file",
                    params=query,
                    fine=(404,),
                    record=False,
                )
                if r.status_code == 404:  # a shared folder revoked meanwhile
                    break
                body = r.json()
                for item in body["items"]:
                    out[item["path"].casefold()] = (item["id"], item["kind"], item["content_hash"])
                    if item["kind"] == "folder":
                        todo.append({"id": item["id"]})
                cursor = body["cursor"]
                if not cursor:
                    break
        return out

    def fresh(self) -> dict[str, Entry]:
        """What this account can see now: its own tree and everything shared with it."""
        state = self.listing("/")
        r = self.http.call("GET", "GET /api/shared", "/api/shared", record=False)
        for item in r.json()["items"]:
            state[item["path"].casefold()] = (item["id"], item["kind"], item["content_hash"])
            if item["kind"] == "folder":
                state.update(self.listing(folder_id=item["id"]))
        return state

    def begin(self) -> None:
        """Register: the cursor first, then the state, so nothing falls in between."""
        r = self.http.call(
            "GET",
            "GET /api/file/events",
            "/api/file/events",
            params={"cursor": "latest"},
            record=False,
        )
        self.cursor = self.start_cursor = r.json()["cursor"]
        self.tree = self.fresh()

    # ---------------------------------------------------------------- events

    def remove(self, path: str) -> None:
        for key in [k for k in self.tree if _under(k, path)]:
            del self.tree[key]

    def take(self, event: dict) -> None:
        """One event as delivered: check its order, then apply it."""
        seq = event["seq"]
        last = self.seqs[-1] if self.seqs else self.start_cursor
        if seq <= last:
            self.order_errors.append(f"seq {seq} after {last}")
            return
        self.gaps.extend(range(last + 1, seq))
        self.seqs.append(seq)
        self.apply(event)
        self.cursor = max(self.cursor, seq)

    def apply(self, event: dict) -> None:
        kind, path = event["type"], (event.get("path") or "").casefold()
        entry = (event["file_id"], event["kind"], event.get("content_hash"))
        if kind in ("file.created", "file.updated"):
            self.tree[path] = entry
        elif kind == "file.moved":
            old = event["old_path"].casefold()
            for key in [k for k in self.tree if _under(k, old)]:
                self.tree[path + key[len(old) :]] = self.tree.pop(key)
            self.tree[path] = entry
        elif kind == "file.deleted":
            self.remove(path)
        elif kind == "file.restored":
            self.tree[path] = entry
            if event["kind"] == "folder":
                self.tree.update(self.listing(folder_id=event["file_id"]))
        elif kind == "share.added" and event.get("username") == self.username:
            r = self.http.call(
                "GET",
                "GET /api/file/{id} (replay)",
                f"/api/file/{event['file_id']}",
                fine=(404,),
                record=False,
            )
            if r.status_code == 200:  # else revoked since: its share.removed follows
                root = r.json()
                self.tree[root["path"].casefold()] = (
                    root["id"],
                    root["kind"],
                    root["content_hash"],
                )
                if root["kind"] == "folder":
                    self.tree.update(self.listing(folder_id=root["id"]))
        elif kind == "share.removed" and event.get("username") == self.username:
            self.remove("/" + event["path"].rsplit("/", 1)[-1].casefold())

    def catch_up(self) -> None:
        """Read the feed to its end over plain HTTP (the final check)."""
        while True:
            r = self.http.call(
                "GET",
                "GET /api/file/events",
                "/api/file/events",
                params={"cursor": self.cursor, "limit": 1000},
                record=False,
            )
            body = r.json()
            for event in body["events"]:
                self.take(event)
            self.cursor = max(self.cursor, body["cursor"])
            if not body["has_more"]:
                return


class Follower:
    """Keeps one device's model current: a long-poll loop or a WebSocket, until stopped."""

    def __init__(
        self, model: Model, balancer: Balancer, token: str, use_ws: bool, stats: Counter[str]
    ) -> None:
        self.model = model
        self.balancer = balancer
        self.token = token
        self.use_ws = use_ws
        self.stats = stats
        self.stopping = False
        self.greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        self.stopping = True
        if self.greenlet is not None:
            self.greenlet.join(timeout=POLL_WAIT + 10)
            self.greenlet.kill()

    def _run(self) -> None:
        while not self.stopping:
            try:
                if self.use_ws:
                    self._socket()
                else:
                    self._poll()
            except Exception as exc:  # an instance died under us: go to the next one
                self.stats["follower_reconnects"] += 1
                self.stats[f"follower_error:{type(exc).__name__}"] += 1
                gevent.sleep(0.2)

    def _poll(self) -> None:
        while not self.stopping:
            r = self.model.http.call(
                "GET",
                "GET /api/file/events?wait (long-poll)",
                "/api/file/events",
                params={"cursor": self.model.cursor, "wait": POLL_WAIT, "limit": 500},
            )
            body = r.json()
            for event in body["events"]:
                self.model.take(event)
                self.stats["events_polled"] += 1
            self.model.cursor = max(self.model.cursor, body["cursor"])

    def _socket(self) -> None:
        base = self.balancer.order()[0]
        url = base.replace("http://", "ws://") + f"/api/ws?cursor={self.model.cursor}"
        t0 = time.perf_counter()
        try:
            ws = connect(
                url,
                additional_headers={"Authorization": f"Bearer {self.token}"},
                open_timeout=5,
                close_timeout=1,
            )
        except (OSError, WebSocketException, TimeoutError):
            self.balancer.failed(base)
            raise
        self.model.http.env.events.request.fire(
            request_type="WS",
            name="WS /api/ws (connect)",
            response_time=(time.perf_counter() - t0) * 1000,
            response_length=0,
            exception=None,
            context={},
        )
        self.stats["ws_connects"] += 1
        with ws:
            while not self.stopping:
                try:
                    message = ws.recv(timeout=1)
                except TimeoutError:
                    continue
                msg = json.loads(message)
                if msg.get("type") == "heartbeat":
                    self.model.cursor = max(self.model.cursor, msg["cursor"])
                    continue
                self.model.take(msg)
                self.stats["events_pushed"] += 1
