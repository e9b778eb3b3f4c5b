"""The embedded database, chosen by measurement: the hot paths on nx-27017 and on
SecantusDB side by side, with nothing stored and with --fill files stored.

For each engine it starts a whole stack (the database, Redis, worker, one web instance with
fsync on, as `make run` has it) and, for one account, measures the median of --samples:
- single upload: register + PUT + commit of a 4 KiB file;
- manifest: `GET /api/file/{id}`;
- listing: a page of 100 in a folder of 100;
- folder: `POST /api/folder`;
- feed: a page of the account's events by cursor;
and, once per phase, a bulk tree through the batch API (100 folders, then 1,000 files of
1 KiB in them: `POST /api/batch/folders` and `/api/batch/upload`), in files per second.
Then it stores --fill small files in that same account (1,000 to a folder, through the batch
API: the creates per second and the database's CPU seconds are reported) and measures
again, once the fill's fan-out has settled (its wait is reported). Flat means within 25 %.
Also the database process's RSS and its CPU time over the fill.

The engines run one after the other, never at once. Prints one JSON line.

    python bench/engines.py [--fill 100000] [--samples 30] [--engines nx,replset]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import httpx
import psutil
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.batch import send_batches  # noqa: E402
from tests.conftest import User  # noqa: E402
from tests.stack import Stack  # noqa: E402

ENGINES = {"nx": "nx-27017", "replset": "SecantusDB"}


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def ok(r: object) -> object:
    r.raise_for_status()  # type: ignore[attr-defined]
    return r


def hot_paths(user: User, tag: str, samples: int) -> dict[str, float]:
    http = user.http
    listing_folder = f"/list-{tag}"
    send_batches(user, [(f"{listing_folder}/f{i:03}.txt", b"%d" % i) for i in range(100)])
    cursor = http.get("/api/file/events", params={"cursor": "latest"}).json()["cursor"]
    figures: dict[str, list[float]] = {k: [] for k in ("upload", "manifest", "listing", "folder")}
    files: list[dict] = []
    for i in range(samples):
        data = os.urandom(4096)
        figures["upload"].append(
            timed(lambda d=data, i=i: files.append(user.upload(f"/single-{tag}/f{i}.bin", d)))
        )
        fid = files[-1]["id"]
        figures["manifest"].append(timed(lambda f=fid: ok(http.get(f"/api/file/{f}"))))
        figures["listing"].append(
            timed(lambda: ok(http.get("/api/file", params={"path": listing_folder, "limit": 100})))
        )
        figures["folder"].append(
            timed(lambda i=i: ok(http.post("/api/folder", json={"path": f"/new-{tag}/d{i}"})))
        )
    feed = [
        timed(lambda: ok(http.get("/api/file/events", params={"cursor": cursor, "limit": 100})))
        for _ in range(samples)
    ]
    out = {f"{k}_ms": round(median(v), 1) for k, v in figures.items()}
    out["feed_ms"] = round(median(feed), 1)

    # A bulk tree: 100 folders, then 1,000 files of 1 KiB in them.
    folders = [{"path": f"/tree-{tag}/d{i:02}"} for i in range(100)]
    tree = [(f"/tree-{tag}/d{i % 100:02}/f{i:04}.txt", os.urandom(1024)) for i in range(1000)]
    t = time.perf_counter()
    ok(http.post("/api/batch/folders", json={"folders": folders}, timeout=300))
    created = send_batches(user, tree)
    out["bulk_tree_files_per_s"] = round(created / (time.perf_counter() - t), 1)
    return out


def fill(user: User, count: int, progress: list[float]) -> float:
    """Store `count` tiny files in the account, 1,000 to a folder; seconds taken. Appends
    the creates per second of every 10,000 files to `progress` as it goes (and says so on
    stderr), so that a server that gives up half way still leaves its curve."""
    t = last = time.perf_counter()
    for start in range(0, count, 1000):
        batch = [
            (f"/fill/d{start // 1000:04}/f{i:07}.txt", b"fill %d" % i)
            for i in range(start, min(start + 1000, count))
        ]
        send_batches(user, batch)
        done = start + len(batch)
        if done % 10_000 == 0 or done == count:
            now = time.perf_counter()
            progress.append(round((done - len(progress) * 10_000) / (now - last), 1))
            last = now
            print(f"  {done} files stored, {progress[-1]} files/s", file=sys.stderr)
    return time.perf_counter() - t


def settle(stack: Stack, timeout: float = 600) -> float:
    """Wait until every change of the fill is fanned out (no outbox marker left): the
    figures after it are the steady state, not the fill's tail. Seconds waited."""
    t = time.perf_counter()
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        # `$eq`: the one spelling both servers answer from the outbox_pending index.
        while mongo.coffer.files.find_one({"outbox_pending": {"$eq": True}}, {"_id": 1}):
            if time.perf_counter() - t > timeout:
                break
            time.sleep(0.5)
    time.sleep(2)  # the sweeper's last pass
    return time.perf_counter() - t


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def run_engine(engine: str, fill_count: int, samples: int) -> dict[str, object]:
    out: dict[str, object] = {"server": ENGINES[engine]}
    progress: list[float] = []
    with tempfile.TemporaryDirectory(prefix=f"coffer-bench-engines-{engine}-") as tmp:
        stack = Stack(
            Path(tmp), env={"COFFER_FSYNC": "true", "COFFER_METRICS": "true"}, mongo=engine
        )
        try:
            stack.start_all()
            db = psutil.Process(stack.procs["mongo"].pid)
            me = User(stack.url())
            empty = out["empty"] = hot_paths(me, "empty", samples)
            cpu = cpu_seconds(db)
            try:
                fill_seconds = fill(me, fill_count, progress)
            except httpx.HTTPError as exc:
                # A batch of 1,000 tiny files not answered in 300 s: the curve so far is
                # the result.
                out["fill_failed"] = f"{type(exc).__name__} after {len(progress) * 10_000}+"
                out["fill_creates_per_s_by_10k"] = progress
                out["db_rss_mib"] = round(db.memory_info().rss / 2**20, 1)
                return out
            settle_seconds = settle(stack)
            fill_cpu = cpu_seconds(db) - cpu
            full = hot_paths(me, "full", samples)
            rss = db.memory_info().rss
        finally:
            stack.stop_all()
    out.update(
        {
            "full": full,
            "full_vs_empty": {k: round(full[k] / empty[k], 2) for k in empty},
            "fill_creates_per_s": round(fill_count / fill_seconds, 1) if fill_count else None,
            "fill_creates_per_s_by_10k": progress,
            "fill_db_cpu_s": round(fill_cpu, 1),
            "fill_settle_s": round(settle_seconds, 1),
            "db_rss_mib": round(rss / 2**20, 1),
        }
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fill", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--engines", default="nx,replset")
    args = parser.parse_args()
    results = {}
    for engine in args.engines.split(","):
        print(f"{ENGINES[engine]}:", file=sys.stderr)
        results[engine] = run_engine(engine, args.fill, args.samples)
        print(json.dumps(results[engine]), file=sys.stderr)
    # Fill of 0 is a smoke run: nothing above "full" is comparable then.
    print(json.dumps({"bench": "engines", "fill_files": args.fill, **results}))


if __name__ == "__main__":
    main()
