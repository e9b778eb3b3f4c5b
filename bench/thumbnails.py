"""Thumbnail benchmark: how long a 256 px thumbnail of a phone photo takes, and what the
worker's memory does meanwhile.

Starts a real stack (embedded MongoDB-protocol server, Redis, worker, one web instance)
and measures, for a 12 MP JPEG (4000 x 3000, quality 90, photo-like noise) and a
4000 x 3000 PNG:
- `first_ms`: from the first `GET /api/file/{id}/thumbnail` (which queues the job) until
  it answers 200, polling every 10 ms: what a grid waits for one new image;
- `cached_ms`: median of later requests (served from the cache);
- the peak RSS of the worker process and of its decoding child while it works;
then the time until all `--folder` distinct 12 MP JPEGs of a folder have thumbnails when
asked for at once (what opening a folder of new photos in the grid costs).
Prints one JSON line.

    python bench/thumbnails.py [--folder 20]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from tests.conftest import User  # noqa: E402
from tests.stack import Stack  # noqa: E402

CHUNK = 4 * 1024 * 1024


def photo(width: int = 4000, height: int = 3000) -> Image.Image:
    """Noise and gradients: compresses like a photo, not like a flat test card."""
    noise = Image.effect_noise((width, height), 40)
    across = Image.linear_gradient("L").resize((width, height))
    around = Image.radial_gradient("L").resize((width, height))
    return Image.merge("RGB", (noise, across, around))


def encoded(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


class PeakRss:
    """Samples the RSS of a process and, separately, of its children, every 5 ms."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.parent = self.children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.parent = max(self.parent, self.proc.memory_info().rss)
                kids = sum(c.memory_info().rss for c in self.proc.children(recursive=True))
                self.children = max(self.children, kids)
            except psutil.Error:
                pass
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def until_ready(user: User, file_id: str, timeout: float = 120) -> float:
    start = time.perf_counter()
    while True:
        r = user.http.get(f"/api/file/{file_id}/thumbnail", params={"size": 256})
        if r.status_code == 200:
            return time.perf_counter() - start
        assert r.status_code == 202, r.text
        assert time.perf_counter() - start < timeout
        time.sleep(0.01)


def one_image(stack: Stack, user: User, name: str, data: bytes) -> dict:
    f = user.upload(f"/bench/{name}", data, CHUNK)
    worker = stack.procs["worker"].pid
    idle = psutil.Process(worker).memory_info().rss
    with PeakRss(worker) as peak:
        first = until_ready(user, f["id"])
    cached = []
    for _ in range(20):
        t = time.perf_counter()
        assert user.http.get(f"/api/file/{f['id']}/thumbnail").status_code == 200
        cached.append(time.perf_counter() - t)
    return {
        "bytes": len(data),
        "first_ms": round(first * 1000),
        "cached_ms": round(median(cached) * 1000, 1),
        "worker_rss_idle_mib": round(idle / 2**20),
        "worker_rss_peak_mib": round(peak.parent / 2**20),
        "decoder_rss_peak_mib": round(peak.children / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=int, default=20)
    args = parser.parse_args()
    base = photo()
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encoded(base, "JPEG", quality=90, exif=exif)
    png = encoded(base, "PNG")
    with tempfile.TemporaryDirectory(prefix="coffer-bench-") as tmp:
        stack = Stack(Path(tmp)).start_all()
        try:
            user = User(stack.url())
            out: dict = {
                "bench": "thumbnails",
                "jpeg_12mp": one_image(stack, user, "photo.jpg", jpeg),
                "png_4000x3000": one_image(stack, user, "photo.png", png),
            }
            ids = []
            for i in range(args.folder):
                im = base.copy()
                ImageDraw.Draw(im).rectangle((i * 50, 0, i * 50 + 40, 40), fill=(i, 0, 0))
                ids.append(user.upload(f"/bench/folder/{i}.jpg", encoded(im, "JPEG"), CHUNK)["id"])
            start = time.perf_counter()
            pending = set(ids)
            while pending:
                for file_id in list(pending):
                    r = user.http.get(f"/api/file/{file_id}/thumbnail")
                    if r.status_code == 200:
                        pending.discard(file_id)
                time.sleep(0.05)
            took = time.perf_counter() - start
            out["folder"] = {
                "images": args.folder,
                "all_ready_s": round(took, 2),
                "per_image_ms": round(took / args.folder * 1000),
            }
        finally:
            stack.stop_all()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
