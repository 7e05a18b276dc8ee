"""One-time use of crossing links at the receiving agent.

The local gateway mints one crossing link per accepted crossing and forwards it with exactly one
request (the federation token it was minted for is itself accepted once, at ingress). The link
is a bearer credential on the gateway→agent hop, though: anything that sees it — a log of the
headers, a network observer of a plain-HTTP upstream, or an agent this one delegates to (it
holds the link as the first link of its own chain) — could present it again for its whole
lifetime, with the partner's scope and principal. :class:`FedgateMiddleware` therefore accepts
each link once, keyed by its ``jti``.

:class:`MemoryReplayCache` keeps the ``jti`` values in this process. Replicas of an agent behind
one address (several workers, several hosts) must share one cache, or a link accepted by one
replica can be replayed at another: implement :class:`ReplayCache` over a store they share
(one atomic "insert if absent, with an expiry" — Redis ``SET key 1 NX EXAT until``, a
PostgreSQL ``INSERT … ON CONFLICT DO NOTHING``) and pass it as ``replay_cache=``.
"""

from __future__ import annotations

import heapq
import threading
from typing import Final, Protocol, runtime_checkable

from .errors import ConfigError, ReplayCacheFull

MAX_REPLAY_ENTRIES: Final = 100_000
"""Most unexpired links :class:`MemoryReplayCache` remembers (about 20 MB at worst: a ``jti`` of
up to 128 bytes, its expiry and the index). An entry lives until its link's ``exp`` plus the
clock skew, and a link lives at most the agreement's ``max_token_ttl`` (≤ 24 h, typically
minutes): 100 000 covers 100 crossings a second to one agent with 15-minute links. Beyond that
the cache refuses new links (``state_unavailable``, 503) instead of forgetting an unexpired
one, which would make it replayable again — fail closed, as the gateway's own replay cache
does when its store is unavailable."""


@runtime_checkable
class ReplayCache(Protocol):
    """Records a link's ``jti`` once. Implementations must be atomic across everything that
    shares them (threads, worker processes, replicas)."""

    def first_use(self, jti: str, until: int, now: int) -> bool:
        """Records ``jti`` until ``until`` (epoch seconds: the link's ``exp`` plus the clock
        skew) and returns ``True``; returns ``False`` if it is already recorded (a replay).
        Raises :class:`~fedgate_agent.errors.ReplayCacheFull` (or any
        :class:`~fedgate_agent.errors.FedgateError`) when it cannot record it: the middleware
        then refuses the request."""
        ...


class MemoryReplayCache:
    """An in-process :class:`ReplayCache`: a dict of ``jti`` → expiry and a heap of expiries,
    expired entries dropped as new links come. Thread-safe. Bounded by ``max_entries``
    (:data:`MAX_REPLAY_ENTRIES`); when full of unexpired entries it raises
    :class:`~fedgate_agent.errors.ReplayCacheFull` rather than evict one."""

    def __init__(self, max_entries: int = MAX_REPLAY_ENTRIES):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError("max_entries must be a positive integer")
        self.max_entries = max_entries
        self._until: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def _expire(self, now: int) -> None:
        h = self._heap
        while h and h[0][0] <= now:
            until, jti = heapq.heappop(h)
            if self._until.get(jti) == until:
                del self._until[jti]

    def first_use(self, jti: str, until: int, now: int) -> bool:
        with self._lock:
            self._expire(now)
            if jti in self._until:
                return False
            if len(self._until) >= self.max_entries:
                raise ReplayCacheFull(
                    f"replay cache full: {len(self._until)} unexpired crossing links remembered "
                    f"(max_entries={self.max_entries}); new links are refused until some expire"
                )
            self._until[jti] = until
            heapq.heappush(self._heap, (until, jti))
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._until)

    def __repr__(self) -> str:
        return f"MemoryReplayCache(entries={len(self._until)}, max_entries={self.max_entries})"
