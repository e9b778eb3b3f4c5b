"""Batch API and flat-cost benchmark: many small files per request, and what one file
costs with nothing stored and with 100,000 files stored.

Starts a real stack (the embedded MongoDB-protocol server, Redis, worker, one web
instance with fsync on, as `make run` has it, plus /metrics to count database round
trips) and in one run measures:
- single small-file upload (register + PUT + commit), `GET /api/file/{id}` and a listing
  page: median of --samples each, on an empty server;
- batch creates: files of 1-64 KiB (the bulk-sync workload) sent through
  `POST /api/batch/upload` in requests of up to 1,000 files / 16 MiB, creates per second
  and database round trips per file;
- the server filled to --fill files (through the batch API, another account), then the
  single-file figures again: flat means within 25 %.
Prints one JSON line.

    python bench/batch.py [--fill 100000] [--samples 40]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.conftest import User, manifest  # noqa: E402
from tests.stack import Stack  # noqa: E402

INLINE_TOTAL = 16 * 1024 * 1024


def entry(path: str, data: bytes) -> dict:
    return {"path": path, **manifest(data), "data": base64.b64encode(data).decode()}


def send_batches(user: User, files: list[tuple[str, bytes]]) -> int:
    """Send in requests of at most 1,000 files and 16 MiB inline; returns files committed."""
    done = 0
    batch: list[dict] = []
    size = 0
    for path, data in [*files, ("", b"")]:
        if path and len(batch) < 1000 and size + len(data) <= INLINE_TOTAL:
            batch.append(entry(path, data))
            size += len(data)
            continue
        if batch:
            r = user.http.post("/api/batch/upload", json={"files": batch}, timeout=300)
            r.raise_for_status()
            done += sum(x["status"] == "committed" for x in r.json()["results"])
        if path:
            batch, size = [entry(path, data)], len(data)
    return done


def commands(base: str) -> int:
    return sum(httpx.get(f"{base}/metrics").json()["mongo_commands"].values())


def single_figures(user: User, tag: str, samples: int) -> dict[str, float]:
    upload, describe, listing = [], [], []
    for i in range(samples):
        data = os.urandom(4096)
        t = time.perf_counter()
        f = user.upload(f"/single-{tag}/f{i}.bin", data)
        upload.append(time.perf_counter() - t)
        t = time.perf_counter()
        user.http.get(f"/api/file/{f['id']}").raise_for_status()
        describe.append(time.perf_counter() - t)
        t = time.perf_counter()
        user.http.get(
            "/api/file", params={"path": f"/single-{tag}", "limit": 100}
        ).raise_for_status()
        listing.append(time.perf_counter() - t)
    return {
        "upload_ms": round(median(upload) * 1000, 1),
        "get_file_ms": round(median(describe) * 1000, 1),
        "listing_ms": round(median(listing) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fill", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--batch-files", type=int, default=3000)
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="coffer-bench-batch-") as tmp:
        stack = Stack(Path(tmp), env={"COFFER_FSYNC": "true", "COFFER_METRICS": "true"})
        stack.start_all()
        try:
            base = stack.url()
            me = User(base)
            empty = single_figures(me, "empty", args.samples)

            # Batch creates: the bulk-sync workload, files of 1-64 KiB in 10 folders.
            files = [
                (f"/bulk/d{i % 10}/f{i:05}.txt", os.urandom(rng.randint(1024, 64 * 1024)))
                for i in range(args.batch_files)
            ]
            before = commands(base)
            t = time.perf_counter()
            created = send_batches(me, files)
            seconds = time.perf_counter() - t
            round_trips = (commands(base) - before) / created

            # Fill the server (another account, small files, many folders), then again.
            filler = User(base)
            t = time.perf_counter()
            left, n = args.fill, 0
            while left > 0:
                chunk = [
                    (
                        f"/fill/d{(n + i) // 1000:04}/f{n + i:07}.txt",
                        hashlib.sha256(b"%d" % (n + i)).digest(),
                    )
                    for i in range(min(1000, left))
                ]
                send_batches(filler, chunk)
                n += len(chunk)
                left -= len(chunk)
            fill_seconds = time.perf_counter() - t
            full = single_figures(me, "full", args.samples)
        finally:
            stack.stop_all()
    print(
        json.dumps(
            {
                "bench": "batch",
                "batch_creates_per_s": round(created / seconds, 1),
                "batch_files": created,
                "batch_bytes": sum(len(d) for _, d in files),
                "db_round_trips_per_file": round(round_trips, 2),
                "fill_files": args.fill,
                "fill_creates_per_s": round(args.fill / fill_seconds, 1) if args.fill else None,
                "empty": empty,
                "full": full,
                "full_vs_empty": {k: round(full[k] / empty[k], 2) for k in empty},
            }
        )
    )


if __name__ == "__main__":
    main()
