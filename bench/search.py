"""Search benchmark: how long `GET /api/search` takes in a 10,000-file account.

Starts a real stack (embedded MongoDB-protocol server, Redis, worker, one web instance),
fills one account with --files files in 100 folders (names like people's: photos, invoices,
drafts, some with accents), another account with --others files (search must not grow with
other people's files), and shares a 1,000-file folder of the other account with the first
(searched too). Then times, --samples times each, searches that match many, few and no
names (the worst case: every name of the account read), an accent-insensitive one, and a
two-letter one; the baseline is a listing of a 100-item folder in the same run.
Target (issue 19): every median at or under 100 ms. Prints one JSON line.

    python bench/search.py [--files 10000] [--others 50000] [--samples 30]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import median, quantiles

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.batch import send_batches  # noqa: E402
from tests.conftest import User  # noqa: E402
from tests.stack import Stack  # noqa: E402

WORDS = [
    "Invoice", "Résumé", "holiday", "IMG", "draft", "report", "budget", "notes", "Straße",
    "contract", "scan", "meeting", "photo", "final", "backup", "plan", "café", "receipt",
]  # fmt: skip
EXTS = [".pdf", ".jpg", ".docx", ".txt", ".xlsx", ".png"]


def names(rng: random.Random, count: int, prefix: str) -> list[tuple[str, bytes]]:
    out = []
    for i in range(count):
        name = f"{rng.choice(WORDS)} {rng.choice(WORDS).lower()} {i:05}{rng.choice(EXTS)}"
        out.append((f"{prefix}/folder {i % 100:02}/{name}", b"%d" % i))
    return out


def timed(user: User, url: str, params: dict, samples: int) -> dict[str, float]:
    times, found = [], 0
    for _ in range(samples):
        t = time.perf_counter()
        r = user.http.get(url, params=params)
        times.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
        found = len(r.json()["items"])
    return {
        "median_ms": round(median(times), 1),
        "p95_ms": round(quantiles(times, n=20)[-1], 1),
        "hits": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--others", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    rng = random.Random(19)
    with tempfile.TemporaryDirectory(prefix="coffer-bench-search-") as tmp:
        stack = Stack(Path(tmp))
        stack.start_all()
        try:
            base = stack.url()
            me, other = User(base), User(base)
            send_batches(me, names(rng, args.files, ""))
            send_batches(other, names(rng, args.others, "/private"))
            send_batches(other, names(rng, 1000, "/Team share"))
            team = other.http.get("/api/file", params={"path": "/"}).json()["items"]
            team_id = next(i["id"] for i in team if i["name"] == "Team share")
            grant = {"username": me.username, "role": "viewer"}
            other.http.post(f"/api/file/{team_id}/share", json=grant).raise_for_status()
            deadline = time.monotonic() + 30
            while not me.http.get("/api/shared").json()["items"]:
                if time.monotonic() > deadline:
                    raise SystemExit("the share never reached the recipient")
                time.sleep(0.1)
            queries = {
                "common": "invoice",
                "few": "00042",
                "none": "zqxj-nothing",
                "accents": "resume cafe",
                "two_letters": "ce",
            }
            figures = {
                name: timed(me, "/api/search", {"q": q, "limit": 50}, args.samples)
                for name, q in queries.items()
            }
            listing = timed(me, "/api/file", {"path": "/folder 07", "limit": 100}, args.samples)
        finally:
            stack.stop_all()
    worst = max(f["median_ms"] for f in figures.values())
    print(
        json.dumps(
            {
                "bench": "search",
                "account_files": args.files,
                "other_files": args.others + 1000,
                "shared_files": 1000,
                **{f"search_{k}": v for k, v in figures.items()},
                "baseline_listing_100": listing,
                "worst_search_median_ms": worst,
                "worst_vs_listing": round(worst / max(listing["median_ms"], 0.1), 2),
                "target_ms": 100,
                "met": worst <= 100,
            }
        )
    )


if __name__ == "__main__":
    main()
