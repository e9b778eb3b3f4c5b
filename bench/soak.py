"""Load, soak and faults: hundreds of simulated devices against several web instances and
workers, with a web instance and a worker killed and Redis stopped while they work.

One command (`make soak`, or `.venv/bin/python bench/soak.py`): starts a real stack
(MongoDB-protocol server, Redis, `--workers` arq workers, `--web` web instances sharing
them, the blob directory and the secret key), sets up accounts with two devices each
(`--devices` in all), then runs Locust as a library (headless, one process, gevent) for
`--duration` seconds. Each device lists folders, uploads small files (register + chunk PUT
+ commit, and inline batch uploads), makes new versions, downloads with Range, moves,
deletes, shares and revokes, and follows its feed (half over WebSockets, half by
long-poll) keeping its cursor. Clients go round-robin across the web instances and retry
on the others when a connection fails (soak_client.Balancer).

Faults (unless --no-faults), at fixed fractions of the run: kill -9 one web instance and
restart it 15 s later, kill -9 one worker and restart it 15 s later, stop Redis for 10 s.

Checks, all of which must hold (exit status 1 otherwise):
- no 5xx; overload answered only with 429/503 carrying Retry-After; no request timed out
  without an answer;
- no wrong answer (soak_world.py: listings and downloads against the operations that had
  finished before they began; every commit's content hash);
- events: per device, seqs strictly increase; every seq a device never received is a hole
  the server filled (checked in the database); re-reading the feed from the device's
  starting cursor gives exactly the seqs it received live;
- replay: every device's initial listing + its events = a fresh listing at the end;
- no committed upload lost: every file committed and not deleted downloads whole, with
  the bytes of its last committed version;
- web and worker RSS: reported with its slope over the soak.

Prints one JSON line; writes the chart to --chart (SVG).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Locust runs on gevent: the standard library is patched before anything imports it
# (requests, ssl), as Locust itself would do on import, only earlier.
from gevent import monkey  # noqa: E402

monkey.patch_all()

import gevent  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from locust import between  # noqa: E402
from locust.env import Environment  # noqa: E402
from pymongo import MongoClient  # noqa: E402
from pymongo.database import Database  # noqa: E402

from app.db.events import HOLE  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench import soak_devices  # noqa: E402
from bench.soak_chart import render  # noqa: E402
from bench.soak_client import Balancer  # noqa: E402
from bench.soak_devices import DeviceUser, Soak, make_account, share, start_followers  # noqa: E402
from bench.soak_world import data_for  # noqa: E402
from tests.stack import Proc, Stack, wait_http  # noqa: E402

MIB = 1024 * 1024
LONG_POLL = "GET /api/file/events?wait (long-poll)"


# ----------------------------------------------------------------------------- stack


def start_stack(root: Path, webs: int, workers: int) -> tuple[Stack, list[str], list[str]]:
    stack = Stack(root)
    stack.start_mongo()
    stack.start_redis()
    worker_names = []
    for i in range(workers):
        name = "worker" if i == 0 else f"worker{i + 1}"
        if i == 0:  # with the scrub every ten minutes, as deployed
            stack.start_worker(
                COFFER_SCRUB_RUN_SECONDS=str(Settings.model_fields["scrub_run_seconds"].default)
            )
        else:  # Stack names its one worker "worker"; more share its command and env
            stack._proc(name, [sys.executable, "-m", "app.cli", "worker"], None).start()
        worker_names.append(name)
    web_names = [f"web{i + 1}" for i in range(webs)]
    for name in web_names:
        stack.start_web(name)
    return stack, web_names, worker_names


def rss_mib(proc: Proc) -> float | None:
    """The process's resident memory with its children (the worker's thumbnail decoder)."""
    if not proc.alive():
        return None
    try:
        p = psutil.Process(proc.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / MIB
    except psutil.Error:
        return None


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / var if var else 0.0


# ----------------------------------------------------------------------------- phases


def set_up(soak: Soak, accounts: int, devices_each: int) -> None:
    """Accounts, devices, folders; each team folder shared with the next account as
    editor; then every device registers its model (cursor, then a fresh listing)."""
    run = os.urandom(3).hex()
    pool = Pool(12)
    results = pool.map(lambda i: make_account(soak, i, run, devices_each), range(accounts))
    for devices in results:
        soak.devices.extend(devices)
    soak.accounts.sort(key=lambda a: a.index)
    owners = {d.account.index: d for d in soak.devices}
    for account in soak.accounts:
        nxt = soak.accounts[(account.index + 1) % len(soak.accounts)]
        share(soak, owners[account.index], nxt, "editor")
    pool.map(lambda d: d.model.begin(), soak.devices)
    soak.unassigned = list(reversed(soak.devices))


def faults(stack: Stack, duration: float, t0: float, log: list[tuple[float, str]]) -> None:
    """kill -9 a web instance, then a worker, restarting each 15 s later; Redis down 10 s."""

    def at(fraction: float) -> None:
        gevent.sleep(max(0.0, t0 + fraction * duration - time.monotonic()))

    def mark(what: str) -> None:
        log.append((time.monotonic() - t0, what))

    web, worker, redis = stack.procs["web2"], stack.procs["worker2"], stack.procs["redis"]
    # 15 s and 10 s outages in the 3-minute soak; shorter in short trial runs.
    outage, redis_outage = min(15.0, 0.1 * duration), min(10.0, 0.07 * duration)
    at(0.2)
    web.kill9()
    mark("kill -9 web2")
    gevent.sleep(outage)
    web.start()
    wait_http(f"{stack.url('web2')}/healthz")
    mark("web2 back")
    at(0.4)
    worker.kill9()
    mark("kill -9 worker2")
    gevent.sleep(outage)
    worker.start()
    mark("worker2 back")
    at(0.6)
    redis.stop()
    mark("Redis stopped")
    gevent.sleep(redis_outage)
    redis.start()
    mark("Redis back")


def sample_rss(stack: Stack, names: list[str], t0: float, out: dict, stop: list[bool]) -> None:
    while not stop:
        for name in names:
            proc = stack.procs[name]
            value = rss_mib(proc)
            if value is not None:
                out[(name, proc.pid)].append((time.monotonic() - t0, value))
        gevent.sleep(2)


def login_burst(soak: Soak, url: str, n: int = 40) -> dict:
    """Overload where the server sheds load today: `n` sign-ins at once at one instance
    (argon2 runs on 2 threads with 16 waiting; past that: 503 with Retry-After). Every
    answer must be 201, or 429/503 with Retry-After; none a timeout or a 500."""
    statuses: Counter[str] = Counter()

    def one(i: int) -> None:
        account = soak.accounts[i % len(soak.accounts)]  # many people, as after an outage
        creds = {"username": account.username, "password": soak_devices.PASSWORD}
        try:
            r = requests.post(
                f"{url}/api/auth/token", json={**creds, "device_name": f"burst-{i}"}, timeout=60
            )
        except requests.RequestException as exc:
            statuses[type(exc).__name__] += 1
            return
        ok = r.status_code == 201 or (r.status_code in (429, 503) and "Retry-After" in r.headers)
        statuses[str(r.status_code) if ok else f"{r.status_code} without Retry-After"] += 1

    Pool(n).map(one, range(n))
    return dict(statuses)


def live_share(db: Database, recipient: str, event: dict) -> bool:
    """Whether the recipient holds a share, granted before the event's change, on one of
    the shared items the event came through (else readers rightly hide it)."""
    for root in event["via"]:
        grant = db.acl.find_one({"_id": f"{root}:{recipient}"})
        if grant and grant.get("role") and str(grant["created_at"]) <= str(event["at"]):
            return True
    return False


def final_checks(soak: Soak, stack: Stack, settle_s: float) -> dict:
    """After the load: replay = listing per device, feed re-read, holes, committed files."""
    report: dict = {}
    # Replay: each model, caught up, must equal a fresh listing (late is fine, wrong not).
    mismatched: list[str] = []

    def replay(device: soak_devices.Device) -> None:
        deadline = time.monotonic() + settle_s
        while True:
            device.model.catch_up()
            fresh = device.model.fresh()
            if device.model.tree == fresh:
                return
            if time.monotonic() > deadline:
                missing = {k: v for k, v in fresh.items() if device.model.tree.get(k) != v}
                extra = {k: v for k, v in device.model.tree.items() if fresh.get(k) != v}
                mismatched.append(
                    f"device {device.index}: not learned {list(missing.items())[:3]}, "
                    f"wrongly believed {list(extra.items())[:3]}"
                )
                return
            gevent.sleep(0.5)

    Pool(8).map(replay, soak.devices)
    report["replay_equal"] = len(soak.devices) - len(mismatched)
    report["replay_mismatches"] = mismatched[:10]

    # Delivery: the whole feed re-read from each device's start equals what it received.
    db = MongoClient(stack.env["MONGODB_URL"]).get_database("coffer")
    lost, duplicated, unexplained, holes, hidden, hidden_now = [], [], [], 0, 0, 0
    account_ids: dict[int, str] = {}
    for device in soak.devices:
        model = device.model
        http = device.http
        if device.account.index not in account_ids:
            me = http.call("GET", "GET /api/me", "/api/me", record=False).json()
            account_ids[device.account.index] = me["id"]
        recipient = account_ids[device.account.index]
        seqs, cursor = [], model.start_cursor
        while True:
            body = http.call(
                "GET",
                "GET /api/file/events",
                "/api/file/events",
                params={"cursor": cursor, "limit": 1000},
                record=False,
            ).json()
            seqs += [e["seq"] for e in body["events"]]
            cursor = body["cursor"]
            if not body["has_more"]:
                break
        if model.order_errors:
            duplicated.append(f"device {device.index}: {model.order_errors[:3]}")
        missing = sorted(set(seqs) - set(model.seqs))
        if missing:
            lost.append(f"device {device.index}: never received {missing[:5]}")
        # Received live, hidden on this re-read: only events of a share revoked since.
        for seq in sorted(set(model.seqs) - set(seqs)):
            doc = db.events.find_one({"recipient_id": recipient, "seq": seq})
            if doc is not None and doc.get("via") and not live_share(db, recipient, doc):
                hidden_now += 1
            else:
                unexplained.append(f"device {device.index}: re-read lacks seq {seq}")
        for seq in model.gaps:
            doc = db.events.find_one({"recipient_id": recipient, "seq": seq})
            if doc is not None and doc.get("type") == HOLE:
                holes += 1
            elif doc is not None and doc.get("via") and not live_share(db, recipient, doc):
                hidden += 1  # a late event of a revoked share, rightly never shown
            else:
                unexplained.append(f"device {device.index}: seq {seq} is {doc and doc['type']}")
    report["events_received"] = sum(len(d.model.seqs) for d in soak.devices)
    report["events_lost"] = lost[:10]
    report["events_duplicated"] = duplicated[:10]
    report["holes_filled"] = holes
    report["hidden_after_revoke"] = hidden
    report["shown_then_revoked"] = hidden_now
    report["gaps_unexplained"] = unexplained[:10]

    # No committed upload lost: the last committed bytes of every live file, whole.
    lost_files, checked = [], 0
    by_index = {d.index: d for d in soak.devices}

    def download(rec_id: str) -> None:
        nonlocal checked
        rec = soak.world.files[rec_id]
        head = rec.head()
        if head is None or rec.deleted() or any(o.ok is None for o in rec.ops):
            return
        http = by_index[rec.creator].http
        r = http.call("GET", "GET content (final)", f"/api/file/{rec.id}/content", record=False)
        checked += 1
        want = hashlib.sha256(data_for(*head)).hexdigest()
        if r.status_code != 200 or hashlib.sha256(r.content).hexdigest() != want:
            lost_files.append(f"{rec.id}: {r.status_code}")

    Pool(8).map(download, list(soak.world.files))
    report["committed_files_checked"] = checked
    report["committed_files_lost"] = lost_files[:10]
    return report


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--duration", type=float, default=180)
    parser.add_argument("--web", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--think", default="2,6", help="seconds between a device's actions")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--chart", default=str(ROOT / "docs" / "soak.svg"))
    parser.add_argument("--keep", help="keep the stack's data and logs in this directory")
    args = parser.parse_args()
    devices_each = 2
    accounts = max(2, args.devices // devices_each)
    low, high = (float(v) for v in args.think.split(","))
    DeviceUser.wait_time = between(low, high)
    if args.web < 2 or args.workers < 2:
        args.no_faults = True  # nothing left to fail over to

    tmp = tempfile.TemporaryDirectory(prefix="coffer-soak-") if not args.keep else None
    root = Path(args.keep or tmp.name)  # type: ignore[union-attr]
    root.mkdir(parents=True, exist_ok=True)
    stack, web_names, worker_names = start_stack(root, args.web, args.workers)
    stop_sampling: list[bool] = []
    try:
        env = Environment(user_classes=[DeviceUser], stop_timeout=30)
        runner = env.create_local_runner()
        soak = Soak(env, Balancer([stack.url(n) for n in web_names]))
        soak_devices.SOAK = soak
        t_setup = time.monotonic()
        set_up(soak, accounts, devices_each)
        setup_s = time.monotonic() - t_setup
        setup_shed = sum(soak.tally.shed.values())
        start_followers(soak)
        gevent.sleep(1)
        env.stats.reset_all()
        t0 = time.monotonic()
        soak.tally.timeline.clear()
        rss: dict = defaultdict(list)
        gevent.spawn(
            sample_rss, stack, [*web_names, *worker_names, "mongo", "redis"], t0, rss, stop_sampling
        )
        fault_log: list[tuple[float, str]] = []
        fault_task = (
            None if args.no_faults else gevent.spawn(faults, stack, args.duration, t0, fault_log)
        )
        runner.start(len(soak.devices), spawn_rate=50)
        gevent.sleep(args.duration)
        runner.quit()
        elapsed = time.monotonic() - t0
        if fault_task is not None:
            fault_task.join()
        stop_sampling.append(True)
        for device in soak.devices:
            assert device.follower is not None
            device.follower.stopping = True
        for device in soak.devices:
            assert device.follower is not None
            device.follower.stop()
        checks = final_checks(soak, stack, settle_s=60)
        checks["login_burst_40"] = login_burst(soak, stack.url(web_names[0]))
        report = build_report(
            args,
            soak,
            env,
            elapsed,
            setup_s,
            setup_shed,
            rss,
            fault_log,
            checks,
            web_names,
            worker_names,
        )
        write_chart(Path(args.chart), args, soak, elapsed, rss, fault_log)
        print(json.dumps(report), flush=True)
        return 0 if report["passed"] else 1
    finally:
        stop_sampling.append(True)
        stack.stop_all()
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.cleanup()


def build_report(
    args, soak, env, elapsed, setup_s, setup_shed, rss, fault_log, checks, web_names, worker_names
) -> dict:
    tally = soak.tally
    routes = {}
    for (name, _method), entry in sorted(env.stats.entries.items()):
        if entry.num_requests == 0:
            continue
        routes[name] = {
            "count": entry.num_requests,
            "per_s": round(entry.num_requests / elapsed, 2),
            "p50_ms": entry.get_response_time_percentile(0.5),
            "p99_ms": entry.get_response_time_percentile(0.99),
            "max_ms": round(entry.max_response_time),
            "failures": entry.num_failures,
        }
    total = sum(r["count"] for n, r in routes.items() if n != LONG_POLL)
    memory = {}
    labels = series_labels(rss)
    for (name, pid), points in sorted(rss.items(), key=lambda kv: labels[kv[0]]):
        if name not in (*web_names, *worker_names) or len(points) < 3:
            continue
        # The second half of the run: after warm-up, and after the web instance's restart
        # moved a third of the load onto the others (a step, not a leak).
        steady = [(t, v) for t, v in points if t >= elapsed / 2]  # none: killed before
        key = labels[(name, pid)]
        memory[key] = {
            "first_mib": round(points[0][1], 1),
            "half_mib": round(steady[0][1], 1) if steady else None,
            "last_mib": round(points[-1][1], 1),
            "max_mib": round(max(v for _, v in points), 1),
            "slope_mib_per_min_2nd_half": round(slope_per_min(steady), 2) if steady else None,
        }
    statuses = Counter()
    for counts in tally.statuses.values():
        statuses.update(counts)
    report = {
        "bench": "soak",
        "devices": len(soak.devices),
        "accounts": len(soak.accounts),
        "web": args.web,
        "workers": args.workers,
        "think_s": args.think,
        "duration_s": round(elapsed, 1),
        "setup_s": round(setup_s, 1),
        "setup_shed_503": setup_shed,
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "routes": routes,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "status_5xx": len(tally.server_errors),
        "server_errors": tally.server_errors[:10],
        "timeouts": len(tally.timeouts),
        "shed_429_503": dict(tally.shed),
        "shed_without_retry_after": tally.shed_without_retry_after[:10],
        "unexpected_4xx": tally.unexpected[:10],
        "unexpected_4xx_count": len(tally.unexpected),
        "wrong_answers": len(tally.wrong),
        "wrong_examples": tally.wrong[:10],
        "listings_judged": soak.world.checked_listings,
        "downloads_judged": soak.world.checked_downloads,
        "retried_refused": tally.connect_retries,
        "retried_dropped": tally.dropped_retries,
        "follower": dict(soak.stats),
        "faults": [[round(t, 1), what] for t, what in fault_log],
        "rss": memory,
        **checks,
    }
    burst_ok = all(k in ("201", "429", "503") for k in report["login_burst_40"])
    report["passed"] = not (
        not burst_ok
        or report["status_5xx"]
        or report["timeouts"]
        or report["shed_without_retry_after"]
        or report["wrong_answers"]
        or report["unexpected_4xx_count"]
        or report["replay_mismatches"]
        or report["events_lost"]
        or report["events_duplicated"]
        or report["gaps_unexplained"]
        or report["committed_files_lost"]
    )
    return report


def series_labels(rss: dict) -> dict[tuple[str, int], str]:
    """Each sampled process by its name; a restarted one's later life "<name> restarted"."""
    labels = {}
    by_name: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for (name, pid), points in rss.items():
        by_name[name].append((points[0][0], pid))
    for name, lives in by_name.items():
        for i, (_, pid) in enumerate(sorted(lives)):
            labels[(name, pid)] = name if i == 0 else f"{name} restarted"
    return labels


def write_chart(path, args, soak, elapsed, rss, fault_log) -> None:
    bucket = 5.0
    t_start = min((t for t, *_ in soak.tally.timeline), default=0.0)
    per_bucket: dict[int, list[float]] = defaultdict(list)
    errors: Counter[int] = Counter()
    for t, name, failed, ms in soak.tally.timeline:
        if name == LONG_POLL:
            continue
        b = int((t - t_start) // bucket)
        per_bucket[b].append(ms)
        errors[b] += failed
    buckets = [b for b in sorted(per_bucket) if (b + 1) * bucket <= elapsed]  # whole ones
    throughput = [(b * bucket + bucket / 2, len(per_bucket[b]) / bucket) for b in buckets]
    failures = [(b * bucket + bucket / 2, errors[b] / bucket) for b in buckets]

    def pct(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    p50 = [(b * bucket + bucket / 2, pct(per_bucket[b], 0.5)) for b in buckets]
    p99 = [(b * bucket + bucket / 2, pct(per_bucket[b], 0.99)) for b in buckets]
    labels = series_labels(rss)
    memory = sorted(
        (labels[(name, pid)], points)
        for (name, pid), points in rss.items()
        if name not in ("mongo", "redis")
    )
    memory.append(("mongo (nx-27017)", next((p for (n, _), p in rss.items() if n == "mongo"), [])))
    svg = render(
        f"Coffer soak: {len(soak.devices)} devices, {args.web} web, {args.workers} workers, "
        f"{elapsed:.0f} s",
        elapsed,
        fault_log,
        [
            (
                "Requests per second (long-polls excluded)",
                "req/s",
                [("all routes", throughput), ("failed", failures)],
            ),
            ("Latency per 5 s (all routes but long-polls)", "ms", [("p50", p50), ("p99", p99)]),
            ("Resident memory", "MiB", memory),
        ],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg)


if __name__ == "__main__":
    sys.exit(main())
