"""Turning an image file into a small WebP, with Pillow, in a child process.

Image decoders are where hostile files do damage: a decompression bomb (a small file that
declares 30,000 x 30,000 pixels) asks for gigabytes, a truncated file raises anywhere in a
decoder, and a bug in a C decoder can crash the process outright. So decoding never runs in
the worker itself: `Renderer` keeps one child process (`python -m app.files.imaging`) that
renders one image at a time, with
- a pixel limit checked from the header before any pixel is decoded (and Pillow's own
  bomb check set to the same limit),
- JPEG `draft()` decoding straight to 1/2 .. 1/8 scale, so a 12 MP photo never exists
  at full size in memory,
- an address-space limit (RLIMIT_AS): an allocation past it is a MemoryError in the
  child, not the machine's OOM killer,
- a time limit: a child that takes too long is killed by its pid and replaced,
- a fresh child after a crash, a MemoryError, or every `recycle_after` images (so
  fragmentation never accumulates).
Every way an image can fail comes back as a short reason string; the caller remembers it
so the same bytes are not tried again (app/files/thumbnails.py).

Parent and child speak one JSON line each way per image over the child's stdin/stdout:
`{"src", "out", "box"}` -> `{"ok": true}` (the WebP is in `out`) or `{"ok": false,
"reason"}`. The child's own stdout is redirected to stderr so nothing else writes there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from app.files.image_kinds import DECODABLE

log = logging.getLogger("coffer.thumbnails")
MEDIA_TYPE = "image/webp"
WEBP_QUALITY = 80


class NotRenderable(Exception):
    """The bytes make no thumbnail; `reason` says why (kept with the failure)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def render(src: Path, box: int, max_pixels: int) -> bytes:
    """A WebP of the image in `src` (first frame) fitted into box x box, turned upright
    by its EXIF orientation. Raises NotRenderable, or whatever a decoder raises."""
    from PIL import Image, ImageOps

    Image.init()
    # Only formats with a registered decoder: Pillow raises KeyError on any other name
    # (HEIF is missing where pillow-heif did not install).
    formats = [f for f in DECODABLE if f in Image.OPEN]
    try:
        opened = Image.open(src, formats=formats)
    except Image.DecompressionBombError as exc:  # Pillow's own check, at 2x the limit
        raise NotRenderable("too_many_pixels") from exc
    with opened as im:
        width, height = im.size
        if width <= 0 or height <= 0 or width * height > max_pixels:
            raise NotRenderable("too_many_pixels")
        if im.format == "JPEG":
            # Decode at the smallest 1/2^n scale still at least twice the box (what
            # thumbnail()'s reducing_gap would keep): memory and time drop by up to 64x.
            im.draft(im.mode if im.mode in ("RGB", "L") else None, (box * 2, box * 2))
        im.load()
        image: Image.Image = im
        if image.mode in ("P", "PA", "1", "I", "I;16", "F"):
            # Palette images resize only by nearest neighbour: expand them first.
            image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        image.thumbnail((box, box), Image.Resampling.LANCZOS, reducing_gap=2.0)
        # After the resize, on a few kilopixels: the box is square, so rotating last fits
        # the same box. thumbnail() and convert() keep `info`, where the orientation is.
        upright = ImageOps.exif_transpose(image)
        if upright.mode not in ("RGB", "RGBA"):
            upright = upright.convert("RGBA" if upright.has_transparency_data else "RGB")
        out = io.BytesIO()
        upright.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
        return out.getvalue()


def _configure_child(max_pixels: int, memory_bytes: int) -> None:
    """Limits for the child process: address space, Pillow's bomb check, one decoder thread."""
    import resource

    from PIL import Image

    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # Pillow warns past MAX_IMAGE_PIXELS and refuses past twice that; render() already
    # refused anything over max_pixels, this is the second line.
    Image.MAX_IMAGE_PIXELS = max_pixels
    with contextlib.suppress(ImportError):  # HEIC/HEIF only where the plugin installs
        import pillow_heif

        pillow_heif.options.DECODE_THREADS = 1
        pillow_heif.register_heif_opener()


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.files.imaging")
    parser.add_argument("--max-pixels", type=int, required=True)
    parser.add_argument("--memory-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    _configure_child(args.max_pixels, args.memory_bytes)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        fatal = False
        try:
            data = render(Path(request["src"]), int(request["box"]), args.max_pixels)
            Path(request["out"]).write_bytes(data)
            reply: dict[str, Any] = {"ok": True}
        except NotRenderable as exc:
            reply = {"ok": False, "reason": exc.reason}
        except MemoryError:
            reply, fatal = {"ok": False, "reason": "too_much_memory"}, True
        except Exception as exc:  # any decoder error: not an image, truncated, bomb, ...
            reply = {"ok": False, "reason": f"undecodable: {type(exc).__name__}: {exc}"[:200]}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if fatal:  # the heap may be in pieces: let the parent start a fresh child
            return


class Renderer:
    """The parent's handle on the rendering child: one image at a time, in order."""

    def __init__(
        self,
        *,
        max_pixels: int,
        memory_bytes: int,
        timeout_seconds: float,
        recycle_after: int = 500,
    ) -> None:
        self.max_pixels = max_pixels
        self.memory_bytes = memory_bytes
        self.timeout = timeout_seconds
        self.recycle_after = recycle_after
        self._lock = asyncio.Lock()
        self._proc: asyncio.subprocess.Process | None = None
        self._rendered = 0

    @property
    def pid(self) -> int | None:
        """The child's process id while one runs (for measuring its memory)."""
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    async def render(self, src: Path, out: Path, box: int) -> str | None:
        """None when `out` now holds the thumbnail; otherwise the reason there is none."""
        async with self._lock:
            proc = await self._child()
            assert proc.stdin is not None and proc.stdout is not None
            request = json.dumps({"src": str(src), "out": str(out), "box": box})
            try:
                proc.stdin.write(request.encode() + b"\n")
                await proc.stdin.drain()
                line = await asyncio.wait_for(proc.stdout.readline(), self.timeout)
            except TimeoutError:
                log.warning("thumbnail of %s took over %.0fs; child killed", src, self.timeout)
                await self._stop()
                return "timeout"
            except (BrokenPipeError, ConnectionResetError):
                line = b""
            if not line:
                code = await self._stop()
                log.warning("thumbnail child died (exit %s) on %s", code, src)
                return "decoder_crashed"
            self._rendered += 1
            reply = json.loads(line)
            if not reply.get("ok") and reply.get("reason") == "too_much_memory":
                await self._stop()  # it exits by itself; reap it
            elif self._rendered >= self.recycle_after:
                await self._stop()
            return None if reply.get("ok") else str(reply.get("reason", "undecodable"))

    async def close(self) -> None:
        async with self._lock:
            await self._stop()

    async def _child(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.files.imaging",
            "--max-pixels",
            str(self.max_pixels),
            "--memory-bytes",
            str(self.memory_bytes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._rendered = 0
        return self._proc

    async def _stop(self) -> int | None:
        """End the child (ours, by its pid) and wait for it; its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(proc.wait(), 0.5)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        return await proc.wait()


if __name__ == "__main__":
    _child_main(sys.argv[1:])
