"""One notion of time for the whole app: aware UTC datetimes and epoch milliseconds.

nx-27017 compares datetimes only to the whole second, so anything ordered or compared
finer than that is stored as epoch milliseconds as well.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def now() -> datetime:
    return datetime.now(UTC)


def epoch_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def now_ms() -> int:
    return epoch_ms(now())


def as_utc(dt: datetime) -> datetime:
    """Datetimes are stored in UTC; some reads hand them back naive."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def iso(dt: datetime) -> str:
    """ISO-8601 in UTC with a `Z`, as every API answer shows times."""
    return as_utc(dt).astimezone(UTC).isoformat().replace("+00:00", "Z")


# A stored datetime as models read it: aware UTC. nx-27017 hands back a datetime that a
# top-level `$set` wrote as its string form without a zone, which parses naive; compared,
# sorted or turned into a timestamp next to aware ones it raises or takes local time.
Instant = Annotated[datetime, AfterValidator(as_utc)]
