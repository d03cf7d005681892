"""The serving children as the watches and the operator's own writes last showed them.

The drift watches (:mod:`dpserve.controllers.owned`) already receive every owned object;
keeping the latest one lets a reconcile compare against it instead of reading each child
back from the API server (as controller-runtime's cached client does). Only a hit is used:
a child the cache does not hold is read with a GET, so a cache that has not seen an object
(operator start, an object created elsewhere) costs a read, never a wrong create.

After the reconcile's own create or replace, the server's answer is the newest version
known, and events still on their way may be older: until the watch brings that version
back ("pending"), other events only drop the entry (the next read is a GET), so the cache
never goes back to an older version. An event that arrives while the write is in flight
leaves the order unknown: then the answer is not kept at all. Versions are compared for
equality only (they are opaque strings). A stale hit is safe: a replace carries the
resourceVersion it read, and the server refuses it (409, then the entry is dropped and the
reconcile retried); a change not seen yet is on its way as an event, which queues the
reconcile again.

Every entry is also trusted for at most :data:`LIVE_TTL_S` after the server last showed it
(an event or a write's answer): after a watch restart Kopf lists the objects again but reports
no deletion for one removed during the gap, and such a child (the model's NetworkPolicy, say)
must not stay "unchanged" in the cache; past the age a reconcile reads it again and recreates
it if it is gone.

Entries are the server's own dicts and are shared with the caller: read-only.
"""

from __future__ import annotations

import time
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (kind, namespace, name)
# A written answer whose watch event has not come back by then is no longer trusted (the
# watch may be down or restarted past it): the next read is a GET again.
PENDING_TTL_S = 30.0
# Any entry: how long what the server last showed is used without asking it again. Long
# enough to spare a read per child while models roll out (1,000 models take ~50 s).
LIVE_TTL_S = 120.0


def resource_version(obj: Obj | None) -> str | None:
    version = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return str(version) if version is not None else None


class LiveCache:
    def __init__(self) -> None:
        self._live: dict[Key, tuple[Obj, float]] = {}  # the object, when it was shown
        # Version written and when: its watch event not seen yet.
        self._pending: dict[Key, tuple[str, float]] = {}
        self._in_flight: dict[Key, bool] = {}  # writes under way: did an event arrive?

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The child if known (read-only); None means unknown, not absent."""
        key = (kind, namespace, name)
        now = time.monotonic()
        pending = self._pending.get(key)
        if pending is not None and now - pending[1] > PENDING_TTL_S:
            del self._pending[key]
            self._live.pop(key, None)
        entry = self._live.get(key)
        if entry is None:
            return None
        if now - entry[1] > LIVE_TTL_S:
            del self._live[key]
            return None
        return entry[0]

    def holds(self, kind: str, namespace: str, name: str) -> bool:
        """Whether anything is kept for the object (current or not)."""
        key = (kind, namespace, name)
        return key in self._live or key in self._pending

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop what is known (a replace was refused as stale, or the object no longer
        carries the label its watch filters on): the next read is a GET."""
        key = (kind, namespace, name)
        self._live.pop(key, None)
        self._pending.pop(key, None)

    def writing(self, kind: str, namespace: str, name: str) -> None:
        """A create or replace of the object is about to be sent."""
        self._in_flight[(kind, namespace, name)] = False

    def wrote(self, kind: str, namespace: str, name: str, answer: Obj | None) -> None:
        """The server's answer to that write (None: it failed). If an event for the object
        arrived meanwhile, its order against the write is unknown: nothing is kept (the
        next read is a GET)."""
        key = (kind, namespace, name)
        disturbed = self._in_flight.pop(key, True)
        self._pending.pop(key, None)
        version = resource_version(answer)
        if answer is None or version is None or disturbed:
            self._live.pop(key, None)
            return
        now = time.monotonic()
        self._live[key] = (answer, now)
        self._pending[key] = (version, now)

    def seen(self, kind: str, namespace: str, name: str, obj: Obj | None) -> bool:
        """A watch event (``obj`` None: deleted); True when it brings back the version the
        operator itself wrote (the reconcile that wrote it already used that answer)."""
        key = (kind, namespace, name)
        if key in self._in_flight:
            self._in_flight[key] = True
        if obj is None:
            self._live.pop(key, None)
            self._pending.pop(key, None)
            return False
        pending = self._pending.get(key)
        if pending is None:
            self._live[key] = (obj, time.monotonic())
            return False
        if resource_version(obj) == pending[0]:
            del self._pending[key]
            self._live[key] = (obj, time.monotonic())
            return True
        # Events before the write's own comes back are older than the answer held.
        self._live.pop(key, None)
        return False
