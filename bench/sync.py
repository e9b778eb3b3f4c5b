"""Sync benchmark: two live `coffer sync` processes (two devices of one account).

Measured from the moment a change is complete in folder A until folder B is identical
(polled every 5 ms):
- 20 new 4 KiB files, one at a time: p50 and max seconds (target p50 <= 0.3 s);
- one new 256 MiB random file: seconds and MB/s (target >= 100 MB/s);
- 1 MiB overwritten in the middle of it: seconds and bytes uploaded (target <= 1.0 s and
  <= 2 chunks);
- 5 deletes, one at a time: p50 seconds (target <= 0.3 s).
Baselines from the same run: `cp` of the 256 MiB file (+ fsync) on the same disk, and the
p50 of a bare HTTP round trip to the server. Prints one JSON line.

    python bench/sync.py [--size-mib 256]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stack import Stack  # noqa: E402

MIB = 1024 * 1024


def digest(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def wait_until(check, timeout: float = 120.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError("B did not catch up")
        time.sleep(0.005)
    return time.monotonic() - start


class Watch:
    """Is `path` now the file with this SHA-256? Hashes only when the file was replaced or
    modified since it was last hashed: re-hashing 256 MiB on every 5 ms poll would steal
    the CPU the clients being measured need (2 cores) and add its own delay."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: tuple[int, int, int] | None = None
        self.hashed: str | None = None

    def holds(self, expect: str) -> bool:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if identity != self.seen:
            self.seen, self.hashed = identity, digest(self.path)
        return self.hashed == expect


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coffer-bench-sync-") as tmp:
        work = Path(tmp)
        stack = Stack(work / "stack", env={"COFFER_FSYNC": "true"})
        stack.start_mongo()
        stack.start_redis()
        stack.start_worker()
        stack.start_web()
        url = stack.url()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            user = "bench"
            httpx.post(f"{url}/api/auth/register", json={"username": user, "password": "benchmark"})
            folders, envs = [], []
            for name in ("a", "b"):
                # COFFER_SYNC_TRACE=1 python bench/sync.py: the clients' timestamped logs.
                env = {**os.environ, "COFFER_CONFIG_DIR": str(work / f"config-{name}")}
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "client.cli",
                        "login",
                        url,
                        "--username",
                        user,
                        "--password-stdin",
                        "--device-name",
                        name,
                    ],
                    input=b"benchmark\n",
                    env=env,
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                )
                folder = work / f"folder-{name}"
                folder.mkdir()
                folders.append(folder)
                envs.append(env)
            for folder, env in zip(folders, envs, strict=True):
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "client.cli", "sync", str(folder)],
                        env=env,
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=open(work / f"{folder.name}.log", "wb"),  # noqa: SIM115
                        start_new_session=True,
                    )
                )
            a, b = folders
            time.sleep(2)

            # Baselines.
            rtts = []
            with httpx.Client() as http:
                for _ in range(50):
                    t = time.monotonic()
                    http.get(f"{url}/healthz")
                    rtts.append(time.monotonic() - t)
            scratch = work / "scratch"
            scratch.mkdir()
            big_src = scratch / "big.bin"
            with open(big_src, "wb") as fh:
                for _ in range(args.size_mib):
                    fh.write(os.urandom(MIB))
            big_hash = digest(big_src)
            t = time.monotonic()
            shutil.copyfile(big_src, scratch / "copy.bin")
            fd = os.open(scratch / "copy.bin", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            cp_seconds = time.monotonic() - t

            small = []
            for i in range(20):
                body = os.urandom(4096)
                staged = scratch / f"s{i}"
                staged.write_bytes(body)
                os.replace(staged, a / f"small-{i}.bin")  # complete the moment it appears
                expect = hashlib.sha256(body).hexdigest()
                small.append(wait_until(lambda i=i, e=expect: digest(b / f"small-{i}.bin") == e))

            print(f"{time.time():.3f} big file in", file=sys.stderr)
            os.replace(big_src, a / "big.bin")
            big_on_b = Watch(b / "big.bin")
            big_seconds = wait_until(lambda: big_on_b.holds(big_hash))

            with MongoClient(stack.env["MONGODB_URL"]) as mongo:
                t0_ms = int(time.time() * 1000)
                with open(a / "big.bin", "r+b") as fh:
                    fh.seek(args.size_mib // 2 * MIB)
                    fh.write(os.urandom(MIB))
                changed = digest(a / "big.bin")
                edit_seconds = wait_until(lambda: big_on_b.holds(changed))
                # Chunks PUT since the edit: what the sync client uploaded for it.
                new_chunks = list(
                    mongo.coffer.chunks.find({"put_ms": {"$gte": t0_ms}}, {"size": 1})
                )
            uploaded_bytes = sum(c["size"] for c in new_chunks)

            deletes = []
            for i in range(5):
                (a / f"small-{i}.bin").unlink()
                deletes.append(wait_until(lambda i=i: not (b / f"small-{i}.bin").exists()))

            print(
                json.dumps(
                    {
                        "bench": "sync",
                        "small_files_p50_s": round(median(small), 3),
                        "small_files_max_s": round(max(small), 3),
                        "big_file_mib": args.size_mib,
                        "big_file_s": round(big_seconds, 2),
                        "big_file_mb_s": round(args.size_mib * MIB / 1e6 / big_seconds, 1),
                        "edit_1mib_s": round(edit_seconds, 3),
                        "edit_uploaded_bytes": uploaded_bytes,
                        "edit_uploaded_chunks": len(new_chunks),
                        "delete_p50_s": round(median(deletes), 3),
                        "baseline_cp_mb_s": round(args.size_mib * MIB / 1e6 / cp_seconds, 1),
                        "baseline_http_rtt_p50_ms": round(median(rtts) * 1000, 2),
                    }
                )
            )
        finally:
            if os.environ.get("COFFER_SYNC_TRACE"):
                for name in ("folder-a", "folder-b"):
                    sys.stderr.write((work / f"{name}.log").read_text())
            for proc in procs:
                os.killpg(proc.pid, signal.SIGINT)
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            stack.stop_all()


if __name__ == "__main__":
    main()
