"""S3 commit benchmark: what the read-back of staged chunks costs on SeaweedFS.

Starts SeaweedFS (`weed server -s3`, tests/stack.py), nx-27017 and Redis, and two web
instances on the same bucket: one that trusts the checksum the server verified on PUT
(`COFFER_S3_VERIFIES_CHECKSUMS=auto`, which the probe at start settles to true) and one
forced to read every staged chunk back and hash it (`false`). For each, uploads a file of
random bytes in 4 MiB chunks (PUT straight to the bucket, 4 at a time) and times the commit
alone, the median of --runs. Also reports SeaweedFS's start time and its RSS idle and
after the uploads. Prints one JSON line.

    python bench/s3_commit.py [--size-mib 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from tests.conftest import User  # noqa: E402
from tests.stack import Stack, start_seaweedfs  # noqa: E402

MIB = 1024 * 1024
CHUNK = 4 * MIB


def upload_and_time_commit(http: httpx.Client, name: str, data: bytes) -> float:
    """Register, PUT every chunk, then commit: the commit's seconds."""
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    manifest = {
        "size": len(data),
        "chunks": [{"sha256": hashlib.sha256(c).hexdigest(), "size": len(c)} for c in chunks],
    }
    reg = http.post("/api/file", json={"path": f"/bench/{name}", **manifest})
    reg.raise_for_status()
    body = reg.json()

    def put(m: dict) -> None:
        r = httpx.put(m["url"], content=chunks[m["index"]], headers=m["headers"], timeout=120)
        r.raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, body["missing"]))
    t = time.perf_counter()
    r = http.post(
        f"/api/file/{body['file_id']}/commit",
        json={"upload_id": body["upload_id"]},
        timeout=600,
    )
    elapsed = time.perf_counter() - t
    r.raise_for_status()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="coffer-bench-s3-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        weed = start_seaweedfs(root / "seaweedfs")
        start_s = time.perf_counter() - t
        stack = Stack(root / "stack", env={"COFFER_URL_TTL_SECONDS": "3600"})
        try:
            idle_rss = psutil.Process(weed.pid).memory_info().rss
            stack.start_mongo()
            stack.start_redis()
            env = weed.s3_env("coffer-bench")
            stack.start_web("trusting", **env, COFFER_S3_VERIFIES_CHECKSUMS="auto")
            stack.start_web("reading", **env, COFFER_S3_VERIFIES_CHECKSUMS="false")
            user = User(stack.url("trusting"))
            # The same user through the instance that reads chunks back.
            reading = httpx.Client(
                base_url=stack.url("reading"), headers=user.http.headers, timeout=60
            )
            times: dict[str, list[float]] = {"checksum": [], "read_back": []}
            peak = idle_rss
            for run in range(args.runs):
                for label, who in (("checksum", user.http), ("read_back", reading)):
                    data = os.urandom(args.size_mib * MIB)
                    times[label].append(upload_and_time_commit(who, f"{label}{run}.bin", data))
                    peak = max(peak, psutil.Process(weed.pid).memory_info().rss)
            log = (stack.root / "logs" / "trusting.log").read_text()
            assert "enforces signed checksums" in log, "the probe did not find enforcement"
        finally:
            stack.stop_all()
            weed.stop()
    print(
        json.dumps(
            {
                "bench": "s3_commit",
                "size_mib": args.size_mib,
                "chunk_mib": CHUNK // MIB,
                "commit_s_checksum": round(median(times["checksum"]), 3),
                "commit_s_read_back": round(median(times["read_back"]), 3),
                "commit_runs": {k: [round(x, 3) for x in v] for k, v in times.items()},
                "seaweedfs_start_s": round(start_s, 2),
                "seaweedfs_rss_idle_mib": idle_rss // MIB,
                "seaweedfs_rss_peak_mib": peak // MIB,
            }
        )
    )


if __name__ == "__main__":
    main()
