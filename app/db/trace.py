"""A test hook: record the shape of every query this process sends, once per shape.

`COFFER_TRACE_QUERIES=<file>` (set by tests/test_query_plans.py, never by an operator)
adds `QueryTrace` to the driver's listeners. For each find, update, delete, findAndModify,
count, distinct and aggregate it reduces the filter (and sort) to a *shape*, the field
names and operators with every value replaced by its type, and appends one JSON line to
the file the first time this process sends that shape: the collection, the command, the
shape, one real filter and sort (MongoDB extended JSON, so ObjectIds and datetimes keep
their types for `explain`), and the app code that sent it. Web and worker processes append
to the same file; one `write` per line on a file opened for appending keeps lines whole.
"""

from __future__ import annotations

import json
import os
import re
import threading
import traceback
from pathlib import Path
from typing import Any

from bson import json_util
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

ENV = "COFFER_TRACE_QUERIES"
# Where each command keeps its filter(s) and sort.
_FILTERS: dict[str, tuple[str, str | None]] = {
    "find": ("filter", "sort"),
    "count": ("query", None),
    "distinct": ("query", None),
    "findAndModify": ("query", "sort"),
}
_APP = str(Path(__file__).resolve().parents[2])
_ID_IN_NAME = re.compile(r"\b[0-9a-f]{24}\b")


def shape(value: Any) -> Any:
    """`value` with every leaf replaced by its type name; lists by the shape of their
    first element (a `$in` of 1 or 1,000 ids is one shape); an id inside a field name
    ("claims.<id>.at") by `*`."""
    if isinstance(value, dict):
        return {_ID_IN_NAME.sub("*", k): shape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shape(value[0])] if value else []
    return type(value).__name__


def _caller() -> str:
    """The innermost frames of Coffer's own code that led to this command."""
    frames = [
        f"{Path(f.filename).relative_to(_APP)}:{f.lineno} {f.name}"
        for f in traceback.extract_stack()
        if f.filename.startswith(_APP)
        and "/.venv/" not in f.filename
        and not f.filename.endswith(("app/db/trace.py", "app/db/__init__.py"))
    ]
    return " < ".join(reversed(frames[-3:]))


class QueryTrace(CommandListener):
    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def _queries(self, event: CommandStartedEvent) -> list[tuple[Any, Any, dict[str, Any]]]:
        """(filter, sort, extra) of each query in the command."""
        cmd, name = event.command, event.command_name
        if name in _FILTERS:
            key, sort_key = _FILTERS[name]
            extra = {"limit": cmd["limit"]} if cmd.get("limit") else {}
            return [(cmd.get(key) or {}, cmd.get(sort_key) if sort_key else None, extra)]
        if name == "update":
            return [
                (u.get("q") or {}, None, {"multi": bool(u.get("multi"))})
                for u in cmd.get("updates", [])
            ]
        if name == "delete":
            return [(d.get("q") or {}, None, {}) for d in cmd.get("deletes", [])]
        if name == "aggregate":
            return [({"$pipeline": cmd.get("pipeline", [])}, None, {})]
        return []

    def started(self, event: CommandStartedEvent) -> None:
        coll = event.command.get(event.command_name)
        for filter_, raw_sort, extra in self._queries(event):
            # Beanie's sort directions are IntEnums, which JSON would spell by name.
            sort = {k: int(v) if isinstance(v, int) else v for k, v in (raw_sort or {}).items()}
            key = json.dumps(
                [event.command_name, coll, shape(filter_), list(sort.items())],
                sort_keys=True,
            )
            with self.lock:
                if key in self.seen:
                    continue
                self.seen.add(key)
            line = json_util.dumps(
                {
                    "cmd": event.command_name,
                    "coll": coll,
                    "shape": key,
                    "filter": filter_,
                    "sort": sort or None,
                    **extra,
                    "caller": _caller(),
                    "pid": os.getpid(),
                },
                json_options=json_util.CANONICAL_JSON_OPTIONS,
            )
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        return None

    def failed(self, event: CommandFailedEvent) -> None:
        return None


def listeners() -> list[CommandListener]:
    """The trace listener when the environment asks for one, else nothing."""
    path = os.environ.get(ENV)
    return [QueryTrace(path)] if path else []
