"""WebDAV benchmark: 1 GiB PUT and GET through /dav/ against the native API, same run,
and a PROPFIND Depth 1 of a folder holding 10,000 files.

Starts a real stack (embedded MongoDB-protocol server, Redis, worker, web, fsync on),
then, alternating, --runs times each (a fresh user per run, so dedup never skips bytes):
the API upload and download the sync client does (bench/transfer.py's figures), and a
streamed WebDAV PUT and GET with httpx (what rclone and davfs2 do). Then 10,000 small
files go into one folder (batch uploads) and PROPFIND Depth 1 lists it. Prints one JSON
line; the targets are the issue's (DAV at >= 0.7x the API, the listing in <= 1 s).

    python bench/dav.py [--size-mib 1024] [--runs 3] [--entries 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from batch import entry  # noqa: E402
from transfer import sha256_file, write_random  # noqa: E402

from client.api import CofferClient  # noqa: E402
from tests.stack import Stack  # noqa: E402

MIB = 1024 * 1024
PASSWORD = "bench-password"


async def api_round(url: str, user: str, src: Path, dst: Path) -> tuple[float, float]:
    async with CofferClient(url, parallel=4) as client:
        await client.register(user, PASSWORD)
        await client.login_token(user, PASSWORD, "bench")
        t0 = time.perf_counter()
        f = await client.upload(src, "/api/random.bin")
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        await client.download(f["id"], dst)
        return up, time.perf_counter() - t0


def pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(MIB):
            yield block


def dav_round(url: str, user: str, src: Path, dst: Path) -> tuple[float, float]:
    httpx.post(f"{url}/api/auth/register", json={"username": user, "password": PASSWORD})
    with httpx.Client(base_url=f"{url}/dav", auth=(user, PASSWORD), timeout=600) as dav:
        dav.request("PROPFIND", "/", headers={"Depth": "0"})  # sign in (argon2) first
        t0 = time.perf_counter()
        r = dav.put("/random.bin", content=pieces(src))
        assert r.status_code == 201, r.text
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        with dav.stream("GET", "/random.bin") as resp, open(dst, "wb") as out:
            for block in resp.iter_bytes(MIB):
                out.write(block)
        return up, time.perf_counter() - t0


async def fill_folder(url: str, user: str, entries: int) -> None:
    async with CofferClient(url) as client:
        await client.register(user, PASSWORD)
        await client.login_token(user, PASSWORD, "bench")
        for start in range(0, entries, 1000):
            files = [
                entry(f"/many/file-{i:05d}.txt", f"file {i}\n".encode())
                for i in range(start, min(entries, start + 1000))
            ]
            results = await client.batch_upload(files)
            assert all(r["status"] == "committed" for r in results), results[:3]


def propfind_many(url: str, user: str) -> tuple[float, float, int]:
    """Seconds to the first byte and to the whole answer, and the entries listed."""
    with httpx.Client(base_url=f"{url}/dav", auth=(user, PASSWORD), timeout=120) as dav:
        dav.request("PROPFIND", "/", headers={"Depth": "0"})
        t0 = time.perf_counter()
        first = None
        body = bytearray()
        with dav.stream("PROPFIND", "/many/", headers={"Depth": "1"}) as resp:
            assert resp.status_code == 207
            for block in resp.iter_bytes():
                first = first or time.perf_counter() - t0
                body += block
        total = time.perf_counter() - t0
    return first or total, total, body.count(b"response>") // 2 - 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="coffer-bench-", dir=ROOT / "bench") as tmp:
        work = Path(tmp)
        src, down = work / "src.bin", work / "down.bin"
        digest = write_random(src, size)
        stack = Stack(work / "stack", env={"COFFER_FSYNC": "true"})
        stack.start_all()
        url = stack.url()
        api_up, api_down, dav_up, dav_down = [], [], [], []
        try:
            for run in range(args.runs):
                up, dn = asyncio.run(api_round(url, f"api{run}", src, down))
                assert sha256_file(down) == digest, "API download differs"
                api_up.append(up)
                api_down.append(dn)
                up, dn = dav_round(url, f"dav{run}", src, down)
                assert sha256_file(down) == digest, "WebDAV download differs"
                dav_up.append(up)
                dav_down.append(dn)
            asyncio.run(fill_folder(url, "lister", args.entries))
            first_byte, listed_in, listed = propfind_many(url, "lister")
        finally:
            stack.stop_all()
    mb = size / 1e6
    figures = {
        "api_upload_mb_s": round(mb / median(api_up), 1),
        "api_download_mb_s": round(mb / median(api_down), 1),
        "dav_put_mb_s": round(mb / median(dav_up), 1),
        "dav_get_mb_s": round(mb / median(dav_down), 1),
    }
    print(
        json.dumps(
            {
                "bench": "dav",
                "size_mib": args.size_mib,
                "runs": args.runs,
                **figures,
                "dav_put_vs_api": round(median(api_up) / median(dav_up), 2),
                "dav_get_vs_api": round(median(api_down) / median(dav_down), 2),
                "propfind_entries": listed,
                "propfind_first_byte_s": round(first_byte, 3),
                "propfind_s": round(listed_in, 3),
                "targets": {"dav_vs_api": 0.7, "propfind_s": 1.0},
            }
        )
    )


if __name__ == "__main__":
    main()
