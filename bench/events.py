"""Change-feed benchmark: how fast a commit reaches another device, and push fan-out rate.

Starts a real stack (nx-27017, redis-server, worker, one web instance). Measures, in one run:
- baseline: round trip of a trivial authenticated request (GET /api/me), the floor any
  delivery latency sits on;
- latency: 200 small file commits by device A; for each, time from sending the commit
  until device B's WebSocket (a separate connection) receives the event: p50, p90, p99;
- throughput: 200 WebSocket clients connected to the one web instance (devices of one
  account), 100 changes; deliveries per second across all clients.
Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import websockets  # noqa: E402

from tests.stack import Stack  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def next_event(ws: websockets.ClientConnection) -> dict:
    while True:
        msg = json.loads(await ws.recv())
        if msg["type"] != "heartbeat":
            return msg


async def second_user(http: httpx.AsyncClient, url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=30) as anon:
        creds = {"username": "bench2", "password": "bench-password"}
        (await anon.post("/api/auth/register", json=creds)).raise_for_status()
        r = await anon.post("/api/auth/token", json={**creds, "device_name": "B"})
        return r.json()["token"]


async def deliveries(
    http: httpx.AsyncClient,
    ws: websockets.ClientConnection,
    folder: str,
    commits: int,
    seen_folder: str | None = None,
) -> tuple[list[float], list[float]]:
    """Commit `commits` small files into `folder`; time from commit sent to `ws` event."""
    latencies, commit_rtts = [], []
    await asyncio.sleep(0.2)
    for i in range(commits):
        data = f"file {i} in {folder}".encode() * 10
        reg = (
            await http.post(
                "/api/file",
                json={
                    "path": f"{folder}/{i}.txt",
                    "size": len(data),
                    "chunks": [{"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}],
                },
            )
        ).json()
        for m in reg["missing"]:
            (await http.put(m["url"], content=data)).raise_for_status()
        t0 = time.perf_counter()
        commit = http.post(
            f"/api/file/{reg['file_id']}/commit", json={"upload_id": reg["upload_id"]}
        )
        event_task = asyncio.create_task(next_event(ws))
        resp = await commit
        commit_rtts.append(time.perf_counter() - t0)
        event = await asyncio.wait_for(event_task, 10)
        latencies.append(time.perf_counter() - t0)
        resp.raise_for_status()
        if event["path"] in (folder, seen_folder) and event["kind"] == "folder":
            # The parent folder's event came first (created with the first file).
            await asyncio.wait_for(next_event(ws), 10)
            latencies[-1] = time.perf_counter() - t0
    return latencies, commit_rtts


async def run(url: str, commits: int, clients: int, changes: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await http.post(
            "/api/auth/register", json={"username": "bench", "password": "bench-password"}
        )
        tok = (
            await http.post(
                "/api/auth/token",
                json={"username": "bench", "password": "bench-password", "device_name": "A"},
            )
        ).json()["token"]
        http.headers["Authorization"] = f"Bearer {tok}"
        ws_base = url.replace("http://", "ws://") + "/api/ws?cursor=latest"
        headers = {"Authorization": f"Bearer {tok}"}

        baseline = []
        for _ in range(50):
            t0 = time.perf_counter()
            (await http.get("/api/me")).raise_for_status()
            baseline.append(time.perf_counter() - t0)

        # Device B of the same account, then another user the folder is shared with.
        async with websockets.connect(ws_base, additional_headers=headers) as device_b:
            latencies, commit_rtts = await deliveries(http, device_b, "/bench", commits)
        other = await second_user(http, url)
        folder = (await http.post("/api/folder", json={"path": "/team"})).json()
        (
            await http.post(
                f"/api/file/{folder['id']}/share", json={"username": "bench2", "role": "editor"}
            )
        ).raise_for_status()
        recipient_ws = url.replace("http://", "ws://") + "/api/ws?cursor=latest"
        async with websockets.connect(
            recipient_ws, additional_headers={"Authorization": f"Bearer {other}"}
        ) as recipient:
            await asyncio.sleep(1.0)  # the share.added event, through the worker
            while True:
                try:
                    await asyncio.wait_for(next_event(recipient), 0.5)
                except TimeoutError:
                    break
            shared_latencies, _ = await deliveries(http, recipient, "/team", commits, "/team")

        sockets = [
            await websockets.connect(ws_base, additional_headers=headers) for _ in range(clients)
        ]
        await asyncio.sleep(0.5)
        received = [0] * clients

        async def drain(k: int) -> None:
            while received[k] < changes:
                await next_event(sockets[k])
                received[k] += 1

        drains = [asyncio.create_task(drain(k)) for k in range(clients)]
        t0 = time.perf_counter()
        for i in range(changes):
            (await http.post("/api/folder", json={"path": f"/fan/{i}"})).raise_for_status()
        # "/fan" itself is created with the first folder: one extra event per client.
        changes_total = changes + 1
        for k in range(clients):
            received[k] -= 1
        await asyncio.wait_for(asyncio.gather(*drains), 300)
        elapsed = time.perf_counter() - t0
        for s in sockets:
            await s.close()

    ms = 1000
    return {
        "bench": "events",
        "baseline_request_p50_ms": round(statistics.median(baseline) * ms, 2),
        "commit_rtt_p50_ms": round(statistics.median(commit_rtts) * ms, 2),
        "delivery_p50_ms": round(pct(latencies, 50) * ms, 2),
        "delivery_p90_ms": round(pct(latencies, 90) * ms, 2),
        "delivery_p99_ms": round(pct(latencies, 99) * ms, 2),
        "shared_delivery_p50_ms": round(pct(shared_latencies, 50) * ms, 2),
        "shared_delivery_p99_ms": round(pct(shared_latencies, 99) * ms, 2),
        "commits": commits,
        "ws_clients": clients,
        "changes": changes_total,
        "push_events_per_s": round(clients * changes_total / elapsed, 1),
        "targets": {"delivery_p50_ms": 30, "delivery_p99_ms": 150},
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="coffer-bench-") as tmp:
        stack = Stack(Path(tmp))
        stack.start_all()
        try:
            result = asyncio.run(run(stack.url(), commits=200, clients=200, changes=100))
        finally:
            stack.stop_all()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
