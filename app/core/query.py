"""Query filters that every MongoDB-protocol server answers from an index.

The embedded server (nx-27017 over SQLite, via neosqlite) reads the *whole* collection for
some filter shapes that MongoDB answers from an index, so the cost of a request grew with
everything stored (an upload took 36 ms with nothing stored, 120 ms with 1,500 files):
- a top-level `$and`/`$or` (what Beanie sends for `find(A == x, B == y)`) is filtered row by
  row in Python;
- a plain equality `{"f": v}` compiles to "f = v OR f is an array containing v", which
  SQLite cannot answer from an index; `{"f": {"$eq": v}}` means exactly the same on MongoDB
  and compiles to an indexed `=`;
- `$in` on a field other than `_id`, `$exists`, a datetime inside the filter, and
  `count_documents` all read every row.
So: build filters with `match`, one dict, `$eq` for every equality; compare times as epoch
milliseconds; use `$in` only on `_id`; count with a projected find. `tests/test_query_plans.py`
runs the hot paths against a traced server and fails on any full scan.
"""

from __future__ import annotations

from typing import Any


def match(fields: dict[str, Any] | None = None, /, **more: Any) -> dict[str, Any]:
    """A filter with every plain value as an explicit `$eq` (operators and None pass as is).

    `fields` takes dotted names ("outbox.at"); keyword arguments the plain ones.
    """
    out: dict[str, Any] = {}
    for key, value in {**(fields or {}), **more}.items():
        if value is None or isinstance(value, dict) or key == "_id":
            out[key] = value
        else:
            out[key] = {"$eq": value}
    return out
