"""Transfer benchmark: 1 GiB of random bytes up and down through the API vs. `cp`.

Starts a real stack (nx-27017, redis-server, worker, web with the local blob store and
fsync on, as `make run` has it), then in one run measures:
- `cp` of the file plus `sync` (the baseline, same disk, durable like our fsync),
- upload through the API as the sync client does it (content-defined chunks, parallel
  PUTs, commit),
- download through /api/file/{id}/content,
and the web server's peak RSS during the transfers (and apart, during sign-ups and logins:
argon2 takes 64 MiB a hash). Each figure is the median of --runs runs (the disk here is
noisy: cp alone varies 2-4x between runs). Prints one JSON line.

    python bench/transfer.py [--size-mib 1024] [--parallel 4]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from client.api import CofferClient  # noqa: E402
from tests.stack import Stack  # noqa: E402

MIB = 1024 * 1024


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0  # while `measuring`: the transfers
        self.peak_other = 0  # the rest: sign-ups and logins (argon2 uses 64 MiB a hash)
        self.measuring = False
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                rss = self.proc.memory_info().rss
                if self.measuring:
                    self.peak = max(self.peak, rss)
                else:
                    self.peak_other = max(self.peak_other, rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)


def write_random(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 16 * MIB))
            h.update(block)
            fh.write(block)
            left -= len(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(16 * MIB):
            h.update(block)
    return h.hexdigest()


async def api_transfer(
    url: str, src: Path, dst: Path, parallel: int, runs: int, rss: PeakRss
) -> tuple[list[float], list[float]]:
    """Upload `runs` times (a fresh user each time: dedup never skips bytes), download each;
    `rss` measures the server during the transfers only."""
    ups, downs = [], []
    for run in range(runs):
        async with CofferClient(url, parallel=parallel) as client:
            await client.register(f"bench{run}", "bench-password")
            await client.login_token(f"bench{run}", "bench-password", "bench")
            rss.measuring = True
            t0 = time.perf_counter()
            f = await client.upload(src, "/bench/random.bin")
            ups.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            n = await client.download(f["id"], dst)
            downs.append(time.perf_counter() - t0)
            rss.measuring = False
            assert n == os.path.getsize(src)  # noqa: ASYNC240
    return ups, downs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="median of this many runs")
    args = parser.parse_args()
    size = args.size_mib * MIB

    with tempfile.TemporaryDirectory(prefix="coffer-bench-", dir=ROOT / "bench") as tmp:
        work = Path(tmp)
        src, copy, down = work / "src.bin", work / "copy.bin", work / "down.bin"
        digest = write_random(src, size)

        cps = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run(["cp", str(src), str(copy)], check=True)
            subprocess.run(["sync", str(copy)], check=False)
            cps.append(time.perf_counter() - t0)
            copy.unlink()

        stack = Stack(work / "stack", env={"COFFER_FSYNC": "true"})
        stack.start_mongo()
        stack.start_redis()
        stack.start_worker()
        web = stack.start_web()
        rss = PeakRss(web.pid)
        rss.start()
        try:
            ups, downs = asyncio.run(
                api_transfer(stack.url(), src, down, args.parallel, args.runs, rss)
            )
        finally:
            rss.running = False
            stack.stop_all()
        assert sha256_file(down) == digest, "downloaded bytes differ"
        shutil.rmtree(work / "stack", ignore_errors=True)

    cp_s, up_s, down_s = median(cps), median(ups), median(downs)
    mb = size / 1e6
    result = {
        "bench": "transfer",
        "size_mib": args.size_mib,
        "parallel": args.parallel,
        "runs": args.runs,
        "cp_mb_s": round(mb / cp_s, 1),
        "upload_mb_s": round(mb / up_s, 1),
        "download_mb_s": round(mb / down_s, 1),
        "upload_vs_cp": round(cp_s / up_s, 2),
        "download_vs_cp": round(cp_s / down_s, 2),
        "server_peak_rss_mb": round(rss.peak / 1e6, 1),
        "server_peak_rss_logins_mb": round(rss.peak_other / 1e6, 1),
        "targets": {"upload_vs_cp": 0.5, "download_vs_cp": 0.8, "server_peak_rss_mb": 200},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
