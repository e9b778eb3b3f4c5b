"""Sync benchmark: two live `coffer sync` processes (two devices of one account).

`--workload basic` (the default) measures, from the moment a change is complete in folder
A until folder B is identical (polled every 5 ms):
- 20 new 4 KiB files, one at a time: p50 and max seconds (target p50 <= 0.3 s);
- one new 256 MiB random file: seconds and MB/s;
- 1 MiB overwritten in its middle, across a 4 MiB boundary: seconds and the bytes the
  clients sent the server meanwhile (request bodies counted by the server, /metrics);
- 100 bytes inserted near its start (every later byte shifts), saved as a new file
  renamed over the old: seconds and bytes sent;
- 5 deletes, one at a time: p50 seconds (target <= 0.3 s).
Baselines from the same run: `cp` of the 256 MiB file (+ fsync) on the same disk, and the
p50 of a bare HTTP round trip to the server.

`--workload tree` measures bulk sync (issue: "a folder of 1,000 files reaches the other
device as fast as Syncthing does"), each tree renamed into A at once and timed from the
rename until B holds every file (polled every 20 ms by size, then checked byte for byte):
- tree: 1,000 files of 1-64 KiB in 10 folders, then deleted at once (until gone on B);
- stdlib: this machine's Python standard library (`*.py`, about 1,790 files in about 100
  folders), with `--prefill N` other files already in the account;
- first: first sync of 10,000 files of 1-64 KiB: a device holding them uploads them, a new
  device with an empty folder pulls them, a device holding exactly what the server has
  syncs (zero file bytes must be sent);
- syncthing: the baseline, measured in the same run after Coffer has stopped: two local
  Syncthing instances (Debian's package, installed if missing; bench/syncthing.py), the
  same trees, the same rename and poller.
Prints one JSON line.

    python bench/sync.py [--workload basic|tree] [--size-mib 256] [--prefill 10000]\
        [--parts tree,stdlib,first,syncthing]
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
import sysconfig
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batch import entry  # noqa: E402  (bench/, like syncthing below)
from syncthing import (  # noqa: E402  (bench/, the script's own folder)
    SyncthingPair,
    ensure_installed,
    make_tree,
    sizes_under,
    time_delete,
    time_tree,
    version,
    wait_for_tree,
)

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
        self.changed_at = 0.0  # when the poller first saw the file as it is now

    def holds(self, expect: str) -> bool:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if identity != self.seen:
            self.changed_at = time.monotonic()
            self.seen, self.hashed = identity, digest(self.path)
        return self.hashed == expect

    def arrival(self, expect: str) -> float:
        """Seconds until the file became these bytes: the moment the poller first saw it
        so (both syncers rename a finished file into place), not the moment it finished
        hashing 256 MiB to be sure."""
        start = time.monotonic()
        wait_until(lambda: self.holds(expect))
        return self.changed_at - start


def copy_stdlib(dest: Path) -> int:
    """This machine's Python standard library sources (*.py) under `dest`; how many."""
    src = Path(sysconfig.get_paths()["stdlib"])
    n = 0
    for path in src.rglob("*.py"):
        rel = path.relative_to(src)
        if "site-packages" in rel.parts or "__pycache__" in rel.parts:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / rel)
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["basic", "tree"], default="basic")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--prefill", type=int, default=10_000)
    parser.add_argument("--first-sync-files", type=int, default=10_000)
    parser.add_argument(
        "--parts",
        default="tree,stdlib,first,syncthing",
        help="tree workload parts, comma-separated: tree, stdlib, first, syncthing",
    )
    args = parser.parse_args()
    if args.workload == "tree":
        tree_workload(args)
        return
    with tempfile.TemporaryDirectory(prefix="coffer-bench-sync-") as tmp:
        work = Path(tmp)
        stack = Stack(work / "stack", env={"COFFER_FSYNC": "true"})
        stack.start_mongo()
        stack.start_redis()
        stack.start_worker()
        stack.start_web(COFFER_METRICS="true")
        url = stack.url()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            user = "bench"
            httpx.post(f"{url}/api/auth/register", json={"username": user, "password": "benchmark"})
            # COFFER_SYNC_TRACE=1 python bench/sync.py: the clients' timestamped logs.
            a, b = work / "folder-a", work / "folder-b"
            for name, folder in (("a", a), ("b", b)):
                folder.mkdir()
                procs.append(start_sync(work, folder, login(url, work, name, user)))
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
            big_seconds = big_on_b.arrival(big_hash)

            # 1 MiB overwritten across a 4 MiB boundary in the middle, in place. The
            # expected bytes are hashed first, on a copy: the clock starts at the write.
            at, patch = args.size_mib // 2 * MIB - MIB // 2, os.urandom(MIB)
            shutil.copyfile(a / "big.bin", scratch / "edited.bin")
            with open(scratch / "edited.bin", "r+b") as fh:
                fh.seek(at)
                fh.write(patch)
            changed = digest(scratch / "edited.bin")
            (scratch / "edited.bin").unlink()
            sent_before = wire_bytes(url)
            with open(a / "big.bin", "r+b") as fh:
                fh.seek(at)
                fh.write(patch)
            edit_seconds = big_on_b.arrival(changed)
            edit_sent = wire_bytes(url) - sent_before

            # 100 bytes inserted near the start (every later byte shifts), saved the safe
            # way: a new file renamed over the old.
            sent_before = wire_bytes(url)
            staged = scratch / "big.new"
            with open(a / "big.bin", "rb") as src, open(staged, "wb") as out:
                out.write(src.read(4096))
                out.write(os.urandom(100))
                shutil.copyfileobj(src, out, 16 * MIB)
            inserted = digest(staged)
            os.replace(staged, a / "big.bin")
            insert_seconds = big_on_b.arrival(inserted)
            insert_sent = wire_bytes(url) - sent_before

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
                        "edit_bytes_sent": edit_sent,
                        "edit_sent_per_changed_byte": round(edit_sent / MIB, 2),
                        "insert_100b_s": round(insert_seconds, 3),
                        "insert_bytes_sent": insert_sent,
                        "insert_sent_share_of_file": round(insert_sent / (args.size_mib * MIB), 4),
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


def wire_bytes(url: str) -> int:
    """Request body bytes the web server has received (what clients sent, as sent)."""
    return int(httpx.get(f"{url}/metrics").json()["request_body_bytes"])


def login(url: str, work: Path, name: str, user: str) -> dict[str, str]:
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
    return env


def start_sync(work: Path, folder: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "client.cli", "sync", str(folder)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(work / f"{folder.name}.log", "wb"),
        start_new_session=True,
    )


def sync_once(
    folder: Path, env: dict[str, str], remote: str = "/"
) -> tuple[float, dict[str, object]]:
    t = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "client.cli",
            "--quiet",
            "sync",
            "--once",
            "--remote",
            remote,
            str(folder),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return time.monotonic() - t, json.loads(done.stdout)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        os.killpg(proc.pid, signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def prefill(url: str, user: str, count: int) -> None:
    """`count` small files in the account, outside the synced tree (batch API)."""
    token = httpx.post(
        f"{url}/api/auth/token",
        json={"username": user, "password": "benchmark", "device_name": "prefill"},
    ).json()["token"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        for start in range(0, count, 1000):
            files = [
                entry(f"/other/p{i // 1000:03}/f{i:06}.txt", b"prefill %d" % i)
                for i in range(start, min(start + 1000, count))
            ]
            http.post("/api/batch/upload", json={"files": files}, timeout=300).raise_for_status()


def tree_workload(args: argparse.Namespace) -> None:
    parts = set(args.parts.split(","))
    figures: dict[str, object] = {"bench": "sync-tree"}
    with tempfile.TemporaryDirectory(prefix="coffer-bench-tree-") as tmp:
        work = Path(tmp)
        scratch = work / "scratch"
        scratch.mkdir()
        stack = Stack(work / "stack", env={"COFFER_FSYNC": "true", "COFFER_METRICS": "true"})
        stack.start_all()
        url = stack.url()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            user = "bench"
            httpx.post(f"{url}/api/auth/register", json={"username": user, "password": "benchmark"})
            envs = {name: login(url, work, name, user) for name in ("a", "b", "c", "d", "e")}
            a, b = work / "folder-a", work / "folder-b"
            a.mkdir()
            b.mkdir()
            # The account already holds --prefill other files, which both devices sync
            # before anything is timed.
            prefill(url, user, args.prefill)
            procs = [start_sync(work, a, envs["a"]), start_sync(work, b, envs["b"])]
            t = time.monotonic()
            while any(len(sizes_under(f)) < args.prefill for f in (a, b)):
                if time.monotonic() - t > 600:
                    raise TimeoutError("the devices did not pull the prefilled files")
                time.sleep(0.2)
            figures["prefill_pulled_by_both_s"] = round(time.monotonic() - t, 1)
            time.sleep(2)
            figures["prefilled_files"] = args.prefill

            if "tree" in parts:
                make_tree(scratch / "tree", 1000, 10, seed=1)
                os.rename(scratch / "tree", a / "tree")
                figures["tree_1000_files_s"] = round(
                    wait_for_tree(a / "tree", b / "tree", start=time.monotonic()), 2
                )
                shutil.rmtree(a / "tree")
                t = time.monotonic()
                while (b / "tree").exists() and any(sizes_under(b / "tree")):
                    time.sleep(0.02)
                figures["tree_1000_delete_s"] = round(time.monotonic() - t, 2)

            if "stdlib" in parts:
                figures["stdlib_files"] = copy_stdlib(scratch / "stdlib")
                figures["stdlib_mb"] = round(sum(sizes_under(scratch / "stdlib").values()) / 1e6, 1)
                sent_before = wire_bytes(url)
                os.rename(scratch / "stdlib", a / "stdlib")
                figures["stdlib_s"] = round(
                    wait_for_tree(a / "stdlib", b / "stdlib", start=time.monotonic()), 2
                )
                sent = wire_bytes(url) - sent_before
                figures["stdlib_bytes_sent"] = sent
                figures["stdlib_sent_share"] = round(
                    sent / sum(sizes_under(a / "stdlib").values()), 3
                )
            stop(procs)
            procs = []

            if "first" in parts:
                first_sync(figures, work, envs, args.first_sync_files)
        finally:
            if os.environ.get("COFFER_SYNC_TRACE"):
                for name in ("folder-a", "folder-b"):
                    sys.stderr.write((work / f"{name}.log").read_text())
            stop(procs)
            stack.stop_all()

        # The baseline, alone on the machine after Coffer has stopped: Syncthing with the
        # same trees, renamed in the same way, timed by the same poller.
        if "syncthing" in parts:
            syncthing_baseline(figures, work, parts)
    print(json.dumps(figures))


def first_sync(
    figures: dict[str, object], work: Path, envs: dict[str, dict[str, str]], n: int
) -> None:
    """First sync of `n` files in the server folder /first (the account holds the trees of
    the other parts too): a device holding them uploads them, an empty device pulls them,
    and a device already holding exactly the same sends no file bytes."""
    c = work / "folder-c"
    made = make_tree(c, n, 100, seed=2)
    upload_s, up_report = sync_once(c, envs["c"], "/first")
    d = work / "folder-d"
    d.mkdir()
    pull_s, _ = sync_once(d, envs["d"], "/first")
    pulled = sizes_under(d)
    assert pulled == {rel: len(data) for rel, data in made.items()}, "pull incomplete"
    e = work / "folder-e"
    shutil.copytree(d, e, ignore=shutil.ignore_patterns(".coffer"))
    equal_s, equal_report = sync_once(e, envs["e"], "/first")
    figures.update(
        {
            "first_sync_files": n,
            "first_sync_upload_s": round(upload_s, 2),
            "first_sync_upload_bytes_sent": up_report["bytes_sent"],
            "first_sync_pull_s": round(pull_s, 2),
            "first_sync_pulled_files": len(pulled),
            "first_sync_equal_s": round(equal_s, 2),
            "first_sync_equal_bytes_sent": equal_report["bytes_sent"],
        }
    )


def syncthing_baseline(figures: dict[str, object], work: Path, parts: set[str]) -> None:
    binary = ensure_installed()
    if binary is None:
        figures["syncthing"] = "unavailable"
        return
    base = work / "syncthing"
    base.mkdir()
    with SyncthingPair(base, binary) as pair:
        result: dict[str, object] = {"version": version(binary)}
        if "tree" in parts:
            make_tree(base / "tree", 1000, 10, seed=1)
            result["tree_1000_files_s"] = round(time_tree(pair, base / "tree", "tree"), 2)
            result["tree_1000_delete_s"] = round(time_delete(pair, "tree"), 2)
        if "stdlib" in parts:
            copy_stdlib(base / "stdlib")
            result["stdlib_s"] = round(time_tree(pair, base / "stdlib", "stdlib"), 2)
    figures["syncthing"] = result


if __name__ == "__main__":
    main()
