"""Which paths the sync leaves alone, on both sides: editors' lock and swap files, temp
files, macOS litter, the client's own state, and the patterns in `DIR/.cofferignore`.

A pattern (fnmatch) ignores a path when it matches any component of it (so `*.log` and
`build` work at any depth) or the whole relative path (`docs/drafts/*`).

Selective sync: folders the device leaves out (`coffer sync DIR --exclude /Photos`) are
ignored the same way, with everything below them: neither downloaded, nor deleted on the
server when they are missing here.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

DEFAULT_IGNORES = ["~$*", ".*.swp", "*.tmp", ".DS_Store", ".coffer", ".cofferignore"]
IGNORE_FILE = ".cofferignore"


class Ignore:
    """The ignore rules of one synced folder; call it with a relative path."""

    def __init__(self, root: Path) -> None:
        self.patterns = list(DEFAULT_IGNORES)
        with_file = root / IGNORE_FILE
        if with_file.exists():
            for line in with_file.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    self.patterns.append(line.rstrip("/"))

        # All patterns as one regular expression: a pass asks about every path it sees.
        self._match = re.compile(
            "|".join(f"(?:{fnmatch.translate(pat)})" for pat in self.patterns)
        ).match
        # Selective sync: relative folder paths left out, with all below them.
        self.excluded: list[str] = []

    def __call__(self, rel: str) -> bool:
        """Whether the relative, '/'-separated path is ignored."""
        if self.excluded and any(rel == e or rel.startswith(e + "/") for e in self.excluded):
            return True
        match = self._match
        return match(rel) is not None or any(match(part) for part in rel.split("/"))
