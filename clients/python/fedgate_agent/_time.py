"""Durations and instants as the gateway writes them: whole seconds since the Unix epoch,
durations like ``30s``, ``15m``, ``1h``, ``7d``."""

from __future__ import annotations

import datetime as _dt
import re
import time
from typing import Union

Duration = Union[int, float, str, _dt.timedelta]
"""Seconds (int/float), a ``timedelta``, or a string ``<n>s|m|h|d`` (``"15m"``)."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"^([0-9]{1,20})([smhd])$")


def now() -> int:
    return int(time.time())


def parse_duration(value: Duration) -> int:
    """Seconds in ``value``; raises ``ValueError`` for anything else or a negative value."""
    if isinstance(value, bool):
        raise ValueError("a duration is not a boolean")
    if isinstance(value, _dt.timedelta):
        secs = int(value.total_seconds())
    elif isinstance(value, (int, float)):
        secs = int(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"not a duration like 30s, 15m, 1h or 7d: {value!r}")
        secs = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r}")
    if secs < 0:
        raise ValueError("a duration is not negative")
    return secs


def format_rfc3339(t: int) -> str:
    """``2026-11-25T23:32:01Z`` (UTC, whole seconds), as ``time::format_rfc3339``."""
    try:
        return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(t)


def parse_rfc3339(s: str) -> int:
    """Epoch seconds of an RFC 3339 date-time (fractions dropped)."""
    v = s.strip().replace("z", "Z")
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    d = _dt.datetime.fromisoformat(v)
    if d.tzinfo is None:
        raise ValueError(f"not an RFC 3339 date-time (no offset): {s!r}")
    return int(d.timestamp())
