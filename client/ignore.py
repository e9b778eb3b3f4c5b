"""Which paths the sync leaves alone, on both sides: editors' lock and swap files, temp
files, macOS litter, the client's own state, and the patterns in `DIR/.cofferignore`.

A pattern (fnmatch) ignores a path when it matches any component of it (so `*.log` and
`build` work at any depth) or the whole relative path (`docs/drafts/*`).
"""

from __future__ import annotations

import fnmatch
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

    def __call__(self, rel: str) -> bool:
        """Whether the relative, '/'-separated path is ignored."""
        parts = rel.split("/")
        return any(fnmatch.fnmatch(p, pat) for p in parts for pat in self.patterns) or any(
            fnmatch.fnmatch(rel, pat) for pat in self.patterns
        )
