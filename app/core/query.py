"""Query filters that every MongoDB-protocol server answers from an index.

The servers disagree on one spelling, so `match` writes equality in the form the server
this process talks to indexes (`app.db.connect` asks it once, `use_explicit_eq`):
- nx-27017 (the embedded default) needs `{"f": {"$eq": v}}`, as below;
- SecantusDB (the replica set the tests also run on) plans an index only for *bare*
  equality (`{"f": v}`) when a filter has more than one field: with `$eq` on every field
  its planner reads the whole collection (23.7 ms for a unique lookup among 50,000
  documents, 0.47 ms bare);
- MongoDB itself treats the two forms as one.

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
So: build filters with `match`, one dict, every equality through it; compare times as
epoch milliseconds; use `$in` only on `_id`; count with a projected find.

`tests/test_query_plans.py` records every query the web and worker processes send on the
hot paths (app/db/trace.py), `explain`s each on the replica-set server and fails listing
any that reads a whole collection. On nx-27017, which has no such `explain`, bench/batch.py
and bench/engines.py time the same paths with nothing stored and with 100,000 files.
"""

from __future__ import annotations

from typing import Any

# Whether equality is written `{"$eq": v}` (nx-27017) or bare (every other server). Set
# once per process, when it connects; until then the form nx-27017 needs, which means the
# same everywhere.
_explicit_eq = True


def use_explicit_eq(explicit: bool) -> None:
    global _explicit_eq
    _explicit_eq = explicit


def match(fields: dict[str, Any] | None = None, /, **more: Any) -> dict[str, Any]:
    """A filter with every plain value as an equality the server indexes (`$eq` for
    nx-27017, bare for the others; operators and None pass as is).

    `fields` takes dotted names ("outbox.at"); keyword arguments the plain ones.
    """
    out: dict[str, Any] = {}
    for key, value in {**(fields or {}), **more}.items():
        if not _explicit_eq or value is None or isinstance(value, dict) or key == "_id":
            out[key] = value
        else:
            out[key] = {"$eq": value}
    return out
