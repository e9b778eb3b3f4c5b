"""Thumbnails: real images uploaded to the real stack, made by the real worker.

What a user (or the grid view) checks: the picture decodes, fits the box and is upright;
it is cached (ETag, 304, immutable with the version in the URL); broken images and
decompression bombs get no thumbnail and never stop the worker; only people who may read
the file see it.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib
from pathlib import Path

import httpx
from PIL import Image
from pymongo import MongoClient

from app.files.imaging import Renderer
from tests.conftest import User, unique_name
from tests.stack import SeaweedFS, Stack
from tests.test_faults import run_in_worker

BIG_CHUNKS = 4 * 1024 * 1024
RED, BLUE = (220, 20, 20), (20, 20, 220)


def two_halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: shows which way an image was turned."""
    im = Image.new("RGB", (width, height), BLUE)
    im.paste(RED, (0, 0, width // 2, height))
    return im


def encoded(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header for width x height pixels with almost no data: a bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width * 3 + 1) * 4)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def thumbnail(user: User, file_id: str, **params: object) -> httpx.Response:
    return user.http.get(f"/api/file/{file_id}/thumbnail", params=params)


def wait_thumbnail(
    user: User, file_id: str, timeout: float = 60, **params: object
) -> httpx.Response:
    """Ask until the answer is not 202 (what the grid's script does), within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        r = thumbnail(user, file_id, **params)
        if r.status_code != 202:
            return r
        assert r.json() == {"status": "pending"}
        assert r.headers["retry-after"] == "1"
        assert r.headers["cache-control"] == "no-store"
        assert time.monotonic() < deadline, "thumbnail still pending"
        time.sleep(0.05)


def picture(r: httpx.Response) -> Image.Image:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "WEBP"
    im.load()
    return im.convert("RGB")


def near(color: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(color, expected, strict=False))


def test_png_and_rotated_jpeg_thumbnails_fit_and_are_cached(alice: User) -> None:
    png = alice.upload("/Photos/wide.png", encoded(two_halves(3000, 2000), "PNG"), BIG_CHUNKS)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned 90 degrees clockwise
    jpeg_bytes = encoded(two_halves(3000, 2000), "JPEG", quality=90, exif=exif)
    jpeg = alice.upload("/Photos/phone.jpg", jpeg_bytes, BIG_CHUNKS)

    wide = picture(wait_thumbnail(alice, png["id"], size=256))
    assert wide.size == (256, 171)
    assert near(wide.getpixel((10, 85)), RED) and near(wide.getpixel((245, 85)), BLUE)

    r = wait_thumbnail(alice, jpeg["id"], size=256, v=jpeg["content_hash"])
    upright = picture(r)
    assert upright.size == (171, 256)  # portrait once the EXIF orientation is applied
    # The left (red) half of the stored image is the top once turned clockwise.
    assert near(upright.getpixel((85, 10)), RED) and near(upright.getpixel((85, 245)), BLUE)
    assert r.headers["etag"] == f'"{jpeg["content_hash"]}-256"'
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"

    # Made once: the next ask is answered at once from the cache, same tag, same bytes.
    again = thumbnail(alice, jpeg["id"], size=256, v=jpeg["content_hash"])
    assert again.status_code == 200
    assert again.headers["etag"] == r.headers["etag"] and again.content == r.content
    # Without the version in the URL it may change, so the browser must revalidate.
    unversioned = thumbnail(alice, jpeg["id"])
    assert unversioned.headers["cache-control"] == "private, no-cache"
    not_modified = alice.http.get(
        f"/api/file/{jpeg['id']}/thumbnail",
        params={"size": 256, "v": jpeg["content_hash"]},
        headers={"If-None-Match": r.headers["etag"]},
    )
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == r.headers["etag"]

    # The lightbox size.
    large = picture(wait_thumbnail(alice, png["id"], size=1024))
    assert large.size == (1024, 683)


def test_other_formats_first_frame(alice: User) -> None:
    frames = [Image.new("RGB", (300, 200), RED), Image.new("RGB", (300, 200), BLUE)]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    webp = encoded(two_halves(600, 400), "WEBP")
    import pillow_heif

    pillow_heif.register_heif_opener()
    heic = encoded(two_halves(640, 480), "HEIF")
    uploaded = {
        name: alice.upload(f"/Mixed/{name}", data)
        for name, data in [("anim.gif", gif), ("pic.webp", webp), ("phone.HEIC", heic)]
    }
    first = picture(wait_thumbnail(alice, uploaded["anim.gif"]["id"]))
    assert first.size == (256, 171) and near(first.getpixel((128, 85)), RED)
    assert picture(wait_thumbnail(alice, uploaded["pic.webp"]["id"])).size == (256, 171)
    heic_thumb = picture(wait_thumbnail(alice, uploaded["phone.HEIC"]["id"]))
    assert heic_thumb.size == (256, 192) and near(heic_thumb.getpixel((5, 96)), RED)


def test_broken_images_and_bombs_get_none_and_the_worker_goes_on(alice: User, stack: Stack) -> None:
    good = encoded(two_halves(800, 600), "JPEG")
    bad = {
        "truncated.jpg": good[: len(good) // 3],
        "bomb.png": png_declaring(30000, 30000),
        "lies.png": b"this is text, not a picture\n" * 10,
    }
    files = {name: alice.upload(f"/Bad/{name}", data) for name, data in bad.items()}
    for name, f in files.items():
        r = wait_thumbnail(alice, f["id"])
        assert r.status_code == 404, (name, r.text)
        assert r.json()["error"]["code"] == "no_thumbnail"
        # Remembered: asked again, the answer is immediate, not another attempt.
        assert thumbnail(alice, f["id"]).status_code == 404
    assert stack.procs["worker"].alive()
    after = alice.upload("/Bad/fine.jpg", good)
    assert picture(wait_thumbnail(alice, after["id"])).size == (256, 192)


def test_who_may_see_a_thumbnail(alice: User, bob: User, base_url: str) -> None:
    photo = alice.upload("/Shared pics/cat.png", encoded(two_halves(500, 500), "PNG"))
    stranger = User(base_url)
    r = thumbnail(stranger, photo["id"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert thumbnail(stranger, "0123456789abcdef01234567").status_code == 404
    assert thumbnail(stranger, "not-an-id").status_code == 404
    shared = alice.http.post(
        f"/api/file/{photo['id']}/share", json={"username": bob.username, "role": "viewer"}
    )
    assert shared.status_code == 201, shared.text
    assert picture(wait_thumbnail(bob, photo["id"])).size == (256, 256)
    assert httpx.get(f"{base_url}/api/file/{photo['id']}/thumbnail").status_code == 401


def test_what_gets_no_thumbnail(alice: User) -> None:
    text = alice.upload("/Docs/notes.txt", b"plain words\n")
    r = thumbnail(alice, text["id"])
    assert r.status_code == 415 and r.json()["error"]["code"] == "not_an_image"
    folder = alice.http.post("/api/folder", json={"path": f"/{unique_name('pics')}.png"}).json()
    assert thumbnail(alice, folder["id"]).status_code == 415
    image = alice.upload("/Docs/dot.png", encoded(Image.new("RGB", (4, 4)), "PNG"))
    for size in (100, 0, 257):
        r = thumbnail(alice, image["id"], size=size)
        assert r.status_code == 400, (size, r.text)
    assert thumbnail(alice, image["id"], size="big").status_code == 400
    # The listing says which rows get a picture.
    items = {
        i["name"]: i for i in alice.http.get("/api/file/", params={"path": "/Docs"}).json()["items"]
    }
    assert items["dot.png"]["thumbnail"] is True
    assert items["notes.txt"]["thumbnail"] is False


def test_renderer_survives_a_hung_or_greedy_decoder(tmp_path: Path) -> None:
    """The decoding child: killed at the time limit, and an allocation past its memory
    limit fails the image, not the process that asked; the next image renders."""
    big = tmp_path / "big.png"
    two_halves(8000, 8000).save(big)  # 64 MP: 192 MB once decoded
    small = tmp_path / "small.png"
    two_halves(400, 300).save(small)
    out = tmp_path / "out.webp"

    async def run() -> list[str | None]:
        results = []
        slow = Renderer(max_pixels=100_000_000, memory_bytes=0, timeout_seconds=0.05)
        results.append(await slow.render(big, out, 256))
        slow.timeout = 30
        results.append(await slow.render(small, out, 256))
        await slow.close()
        tight = Renderer(max_pixels=100_000_000, memory_bytes=150 * 2**20, timeout_seconds=30)
        results.append(await tight.render(big, out, 256))
        results.append(await tight.render(small, out, 256))
        await tight.close()
        return results

    timeout, after_timeout, greedy, after_greedy = asyncio.run(run())
    assert timeout == "timeout"
    assert after_timeout is None
    assert greedy in ("too_much_memory", "decoder_crashed") or greedy.startswith("undecodable")
    assert after_greedy is None
    assert Image.open(out).size == (256, 192)


def test_file_objects_mark_image_names(alice: User) -> None:
    for name in ("a.JPG", "b.jpeg", "c.heif", "d.avif", "e.gif", "f.webp"):
        assert alice.upload(f"/Kinds/{name}", b"x")["thumbnail"] is True, name
    for name in ("g.svg", "h.pdf", "jpg", ".png"):
        assert alice.upload(f"/Kinds/{name}", b"x")["thumbnail"] is False, name


def test_public_folder_link_shows_thumbnails(alice: User, base_url: str) -> None:
    folder = alice.http.post("/api/folder", json={"path": "/Holiday"}).json()
    alice.upload("/Holiday/beach.png", encoded(two_halves(900, 600), "PNG"))
    alice.upload("/Holiday/list.txt", b"towel\n")
    alice.upload("/Elsewhere/private.png", encoded(two_halves(90, 60), "PNG"))
    r = alice.http.post(f"/api/file/{folder['id']}/links", json={})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    visitor = httpx.Client(base_url=base_url, timeout=30)
    url = f"/s/{token}/thumbnail"
    deadline = time.monotonic() + 60
    while (r := visitor.get(url, params={"path": "beach.png"})).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert picture(r).size == (256, 171)
    assert visitor.get(url, params={"path": "list.txt"}).status_code == 415
    escape = visitor.get(url, params={"path": "../Elsewhere/private.png"})
    assert escape.status_code in (400, 404) and "image" not in escape.headers["content-type"]
    assert visitor.get(url, params={"path": "beach.png", "size": 999}).status_code == 400


def test_thumbnails_of_content_no_file_has_are_removed(alice: User, stack: Stack) -> None:
    kept = encoded(two_halves(300, 200), "PNG")
    gone = encoded(two_halves(200, 300), "PNG")
    keep = alice.upload("/Keep/a.png", kept)
    twin = alice.upload("/Gone/a-copy.png", kept)  # same bytes: one shared thumbnail
    lone = alice.upload("/Gone/b.png", gone)
    for f in (keep, twin, lone):
        picture(wait_thumbnail(alice, f["id"]))
    folder = next(
        i
        for i in alice.http.get("/api/file/", params={"path": "/"}).json()["items"]
        if i["name"] == "Gone"
    )
    assert alice.http.delete(f"/api/file/{folder['id']}").status_code == 204
    trash = alice.http.get("/api/trash/").json()["items"]
    trashed = next(t for t in trash if t["name"] == "Gone")
    assert alice.http.delete(f"/api/trash/{trashed['id']}").status_code == 204

    result = asyncio.run(run_in_worker(stack, "remove_thumbnails"))
    assert result["removed"] >= 1
    with MongoClient(stack.env["MONGODB_URL"]) as mongo:
        left = {
            d["content_hash"]
            for d in mongo.coffer.thumbnails.find({"owner_id": alice.id}, {"content_hash": 1})
        }
    assert left == {keep["content_hash"]}
    # The file still there keeps its picture, served at once.
    assert thumbnail(alice, keep["id"]).status_code == 200


def test_thumbnails_with_the_s3_store(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    """A deployment whose chunks are in S3 (SeaweedFS, a real S3 server): the worker reads
    the image from the bucket and every web instance serves the cached thumbnail."""
    s3 = Stack(tmp_path / "stack", env=seaweedfs.s3_env("coffer-thumbs"))
    try:
        s3.start_all()
        s3.start_web("web2")
        carol = User(s3.url())
        photo = carol.upload("/p.jpg", encoded(two_halves(1200, 800), "JPEG"), BIG_CHUNKS)
        assert picture(wait_thumbnail(carol, photo["id"])).size == (256, 171)
        other = httpx.get(
            f"{s3.url('web2')}/api/file/{photo['id']}/thumbnail",
            headers={"Authorization": f"Bearer {carol.token}"},
        )
        assert picture(other).size == (256, 171)
    finally:
        s3.stop_all()
