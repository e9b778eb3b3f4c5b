"""Which paths the sync leaves alone (client/ignore.py), as a table."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.ignore import Ignore


@pytest.mark.parametrize(
    ("rel", "ignored"),
    [
        ("notes.txt", False),
        ("~$report.docx", True),  # Office lock file
        ("docs/.draft.md.swp", True),  # vim swap file, at any depth
        ("a/b/c.tmp", True),
        (".DS_Store", True),
        ("photos/.DS_Store", True),
        (".coffer/state.db", True),
        ("build.log", True),  # from .cofferignore: *.log at any depth
        ("src/deep/debug.log", True),
        ("logbook.txt", False),
        ("build/out.bin", True),  # "build" matches a component: everything under it
        ("rebuild/out.bin", False),
        ("docs/drafts/one.md", True),  # "docs/drafts/*" matches the whole path
        ("docs/final.md", False),
        ("Photos/2025/a.jpg", True),  # left out by selective sync
        ("Photos", True),
        ("Photoshop/x.psd", False),
    ],
)
def test_ignore(tmp_path: Path, rel: str, ignored: bool) -> None:
    (tmp_path / ".cofferignore").write_text("# comment\n*.log\nbuild/\ndocs/drafts/*\n")
    rules = Ignore(tmp_path)
    rules.excluded = ["Photos"]
    assert rules(rel) is ignored
