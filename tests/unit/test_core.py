"""Pure building blocks, as decision tables: user paths, HTTP Range headers, query filters."""

from __future__ import annotations

import unicodedata

import pytest

from app.core import paths
from app.core.errors import BadRequest, RangeNotSatisfiable
from app.core.http import ByteRange, cross_site, parse_range
from app.core.query import match
from app.core.ratelimit import sliding_wait


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/a", "/a"),
        ("/a//b/", "/a/b"),
        ("/Photos/2024/IMG 1.jpg", "/Photos/2024/IMG 1.jpg"),
        (unicodedata.normalize("NFD", "/Café"), "/Café"),  # macOS hands out NFD
        ("/" + "x" * 255, "/" + "x" * 255),
    ],
)
def test_paths_are_normalised(raw: str, expected: str) -> None:
    assert paths.normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a/b",  # not absolute
        "/a/../b",
        "/a/./b",
        "/..",
        "/a\x00b",
        "/a\\b",
        "/tab\there",
        "/" + "x" * 256,  # a name over 255 bytes
        "/" + "é" * 128,  # 256 bytes in UTF-8
        "/a" * 65,  # deeper than 64 levels
        "/" + "a/" * 2100,  # longer than 4,096 characters
        None,
        42,
    ],
)
def test_bad_paths_are_refused_with_400(raw: object) -> None:
    with pytest.raises(BadRequest) as exc:
        paths.normalize_path(raw)
    assert exc.value.code == "invalid_path"


def test_path_helpers() -> None:
    assert paths.path_key("/Docs/Ärger.TXT") == "/docs/ärger.txt"
    assert paths.split("/a/b/c") == ("/a/b", "c") and paths.split("/c") == ("/", "c")
    assert paths.ancestors("/a/b/c") == ["/a", "/a/b"] and paths.ancestors("/a") == []
    assert paths.join("/a", "b/c") == "/a/b/c" and paths.join("/", "x") == "/x"
    with pytest.raises(BadRequest):
        paths.join("/a", "../etc")
    assert paths.relative_path("/Team/Q3/x.pdf", "/Team", "Team") == "/Team/Q3/x.pdf"
    assert paths.relative_path("/Work/Team/x.pdf", "/Work/Team", "Team") == "/Team/x.pdf"
    inside = paths.subtree_range("/a")
    for key, below in [("/a/b", True), ("/a/b/c", True), ("/a", False), ("/ab", False)]:
        assert (inside["$gt"] < key < inside["$lt"]) is below, key
    assert paths.within("/A/b", "/a") and paths.within("/a", "/a") and paths.within("/x", "/")
    assert not paths.within("/ab", "/a")


SIZE = 100


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-9", (0, 9)),
        ("bytes=90-", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),  # more than the file: all of it
        ("bytes=0-1000", (0, 99)),  # past the end: to the end
        ("bytes=99-99", (99, 99)),
        ("bytes=-0", None),  # malformed: the whole file (RFC 9110 allows ignoring it)
        ("bytes=5-2", None),
        ("bytes=abc", None),
        ("bytes=0-9,20-29", None),  # multi-range: answered with the whole file
        ("items=0-9", None),
    ],
)
def test_range_headers(header: str | None, expected: tuple[int, int] | None) -> None:
    got = parse_range(header, SIZE)
    assert (None if got is None else (got.start, got.end)) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-200"])
def test_unsatisfiable_ranges_are_416_with_the_size(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as exc:
        parse_range(header, SIZE)
    assert exc.value.extra["headers"] == {"Content-Range": f"bytes */{SIZE}"}


def test_byte_range_length() -> None:
    assert ByteRange(10, 19).length == 10


@pytest.mark.parametrize(
    ("headers", "forged"),
    [
        ({}, False),  # the sync client, curl
        ({"sec-fetch-site": "same-origin"}, False),
        ({"sec-fetch-site": "none"}, False),  # typed in the address bar
        ({"sec-fetch-site": "cross-site"}, True),
        ({"sec-fetch-site": "same-site"}, True),  # another app on a sibling domain
        ({"origin": "https://evil.example", "host": "coffer.example"}, True),
        ({"origin": "https://coffer.example", "host": "coffer.example"}, False),
        ({"origin": "null", "host": "coffer.example"}, False),
    ],
)
def test_cross_site_requests_are_recognised(headers: dict[str, str], forged: bool) -> None:
    assert cross_site(headers) is forged


def test_filters_use_explicit_equality_the_embedded_server_can_index() -> None:
    assert match(owner_id="u1", deleted_at=None, seq={"$gt": 3}) == {
        "owner_id": {"$eq": "u1"},
        "deleted_at": None,
        "seq": {"$gt": 3},
    }
    assert match({"outbox.at": {"$lt": 5}}, outbox_pending=True) == {
        "outbox.at": {"$lt": 5},
        "outbox_pending": {"$eq": True},
    }


def test_which_requests_are_idle_by_design() -> None:
    from app.core.admission import idle_by_design

    table = [
        ({"path": "/api/file/events", "query_string": b"cursor=3&wait=25"}, True),
        ({"path": "/api/file/events", "query_string": b"cursor=3&wait=0"}, False),
        ({"path": "/api/file/events", "query_string": b"cursor=3"}, False),
        ({"path": "/api/file/events", "query_string": b"wait=abc"}, False),
        ({"path": "/healthz", "query_string": b""}, True),
        ({"path": "/readyz", "query_string": b""}, True),
        ({"path": "/api/file", "query_string": b"wait=25"}, False),
        ({"path": "/files", "query_string": b""}, False),
    ]
    for scope, idle in table:
        assert idle_by_design(scope) is idle, scope


@pytest.mark.parametrize(
    ("previous", "current", "elapsed", "expected"),
    [
        (0, 1, 0, 0),  # first try
        (0, 10, 899, 0),  # the limit itself is allowed
        (0, 11, 100, 800 + 164),  # this window alone is over: it ends, then fades
        (0, 11, 899.9, 164),  # at the very end of it: the fade, in the next window
        (41, 1, 1, 724),  # a burst just before the boundary still counts right after it
        (41, 1, 702.5, 0),  # ... until it has faded: 41 * (1 - 702.5/900) + 1 <= 10
        (20, 1, 500, 0),  # 20 * 4/9 + 1 fits
        (10, 1, 90, 0),  # 10 * 0.9 + 1 = 10: allowed
        (10, 1, 89, 91),  # the retry is a second attempt: 10 * (1 - t/900) + 2 <= 10
        (5, 5, 0, 0),  # 5 + 5 = 10
        (5, 6, 0, 360),  # 5 * (1 - t/900) + 7 <= 10 at t = 360
    ],
)
def test_attempts_are_limited_over_a_sliding_window(
    previous: int, current: int, elapsed: float, expected: int
) -> None:
    assert sliding_wait(previous, current, elapsed, window=900, limit=10) == expected


@pytest.mark.parametrize(
    ("burst", "at"),
    [(41, 899.0), (41, 0.0), (11, 100.0), (20, 450.0), (12, 899.5), (10, 300.0)],
)
def test_a_client_that_waits_as_told_gets_in_on_its_next_try(burst: int, at: float) -> None:
    """`burst` wrong guesses at `at` seconds into a window, all counted (refused ones too);
    then someone who retries exactly when Retry-After says is let in on that try."""
    window, limit = 900, 10
    counts: dict[int, int] = {}

    def attempt(t: float) -> int:
        bucket = int(t // window)
        counts[bucket] = counts.get(bucket, 0) + 1
        return sliding_wait(
            counts.get(bucket - 1, 0), counts[bucket], t - bucket * window, window, limit
        )

    t = at
    waits = [attempt(t) for _ in range(burst)]
    assert waits[:limit] == [0] * min(limit, burst)  # the first ten are tried
    if burst <= limit:
        return
    t += waits[-1]
    assert attempt(t) == 0
