"""axe-core for the accessibility tests: fetched once from the npm registry, checked.

The tests inject `axe.min.js` into each page with Playwright. The tarball's SHA-512 is
pinned (the registry's `dist.integrity` for this version), so what runs is what was
reviewed; it is kept in `.cache/` (not committed: it is someone else's 550 KB build).
Run as `python -m e2e.axe` (make test does) to fetch it ahead of the tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

VERSION = "4.14.1"
URL = f"https://registry.npmjs.org/axe-core/-/axe-core-{VERSION}.tgz"
INTEGRITY = "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="  # noqa: E501
SCRIPT = Path(__file__).resolve().parent.parent / ".cache" / f"axe-core-{VERSION}" / "axe.min.js"


def axe_script() -> Path:
    """The path of axe.min.js, fetching and checking it the first time."""
    if SCRIPT.exists():
        return SCRIPT
    with urllib.request.urlopen(URL, timeout=60) as resp:
        tarball = resp.read()
    digest = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if f"sha512-{digest}" != INTEGRITY:
        raise RuntimeError(f"{URL} does not match its pinned SHA-512")
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        member = tar.extractfile("package/axe.min.js")
        assert member is not None
        data = member.read()
    SCRIPT.parent.mkdir(parents=True, exist_ok=True)
    tmp = SCRIPT.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(SCRIPT)
    return SCRIPT


if __name__ == "__main__":
    print(axe_script())
