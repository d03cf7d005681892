"""LiveCache: hits only, never older than the operator's own write, echo recognised."""

from __future__ import annotations

from typing import Any

import pytest

from dpserve.controllers import livecache
from dpserve.controllers.livecache import LiveCache

K = ("Deployment", "ns", "m")


def obj(version: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "m", "namespace": "ns", "resourceVersion": version}, **extra}


def write(cache: LiveCache, answer: dict[str, Any] | None) -> None:
    cache.writing(*K)
    cache.wrote(*K, answer)


def test_unknown_is_not_absent() -> None:
    assert LiveCache().get(*K) is None


def test_events_are_kept_and_deletion_drops() -> None:
    cache = LiveCache()
    assert not cache.seen(*K, obj("1"))
    assert cache.get(*K) == obj("1")
    assert not cache.seen(*K, obj("2"))
    assert cache.get(*K) == obj("2")
    assert not cache.seen(*K, None)
    assert cache.get(*K) is None


def test_own_write_held_and_its_echo_recognised_once() -> None:
    cache = LiveCache()
    write(cache, obj("5", spec={"a": 1}))
    assert cache.get(*K) == obj("5", spec={"a": 1})
    assert cache.seen(*K, obj("5", spec={"a": 1}))  # the echo: wakes no one
    assert not cache.seen(*K, obj("5", spec={"a": 1}))  # again (a re-list): it does
    assert not cache.seen(*K, obj("6"))
    assert cache.get(*K) == obj("6")


def test_older_event_after_the_write_never_replaces_it() -> None:
    cache = LiveCache()
    cache.seen(*K, obj("3"))
    write(cache, obj("5"))
    assert not cache.seen(*K, obj("4"))  # still on its way when the answer came
    assert cache.get(*K) is None  # unknown: the next read is a GET
    assert not cache.seen(*K, obj("4b"))
    assert cache.get(*K) is None
    assert cache.seen(*K, obj("5"))
    assert cache.get(*K) == obj("5")


def test_event_during_the_write_leaves_nothing_held() -> None:
    cache = LiveCache()
    cache.writing(*K)
    assert not cache.seen(*K, obj("5"))  # the echo itself, or an older version: unknown
    assert not cache.seen(*K, None)  # and a deletion after it
    cache.wrote(*K, obj("5"))
    assert cache.get(*K) is None
    assert not cache.seen(*K, obj("7"))
    assert cache.get(*K) == obj("7")


def test_failed_write_forgets() -> None:
    cache = LiveCache()
    cache.seen(*K, obj("3"))
    write(cache, None)
    assert cache.get(*K) is None
    cache.seen(*K, obj("4"))
    cache.forget(*K)
    assert cache.get(*K) is None


def test_deletion_clears_a_pending_write() -> None:
    cache = LiveCache()
    write(cache, obj("5"))
    assert not cache.seen(*K, None)
    assert cache.get(*K) is None
    assert not cache.seen(*K, obj("5"))  # a new object: not an echo of anything
    assert cache.get(*K) == obj("5")


def test_forget_clears_a_pending_write() -> None:
    cache = LiveCache()
    write(cache, obj("5"))
    cache.forget(*K)  # e.g. the managed-by label was removed: no more events for it
    assert cache.get(*K) is None
    assert not cache.seen(*K, obj("5"))


def test_written_answer_not_trusted_once_its_echo_is_overdue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(livecache.time, "monotonic", lambda: clock[0])
    cache = LiveCache()
    write(cache, obj("5"))
    clock[0] += livecache.PENDING_TTL_S - 1
    assert cache.get(*K) == obj("5")
    clock[0] += 2  # the watch may be down: read it from the server again
    assert cache.get(*K) is None
    assert not cache.seen(*K, obj("6"))
    assert cache.get(*K) == obj("6")


def test_no_entry_is_trusted_past_its_age(monkeypatch: pytest.MonkeyPatch) -> None:
    """Also entries the watch brought: one it never reports deleted (a watch restart's gap)
    is read from the server again once it is older than LIVE_TTL_S."""
    clock = [100.0]
    monkeypatch.setattr(livecache.time, "monotonic", lambda: clock[0])
    cache = LiveCache()
    assert not cache.seen(*K, obj("1"))
    clock[0] += livecache.LIVE_TTL_S - 1
    assert cache.get(*K) == obj("1")
    clock[0] += 2
    assert cache.get(*K) is None
    assert not cache.seen(*K, obj("2"))  # shown again: trusted again
    assert cache.get(*K) == obj("2")


class _Server:
    """A namespace of ConfigMaps as an API server holds them (get, create, replace)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 0

    async def get(self, res: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    async def create(self, res: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = {**body, "metadata": {**body["metadata"],
                                       "resourceVersion": str(self.version)}}
        self.objects[body["metadata"]["name"]] = stored
        return stored


async def test_a_child_deleted_unseen_is_recreated_once_the_entry_is_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dpserve.controllers.children import apply

    clock = [100.0]
    monkeypatch.setattr(livecache.time, "monotonic", lambda: clock[0])
    server, cache = _Server(), LiveCache()
    desired = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"},
               "metadata": {"name": "m-filter", "namespace": "ns"}}
    assert (await apply(server, "ConfigMap", desired, "uid-1", cache=cache)).action == "created"
    live = server.objects["m-filter"]
    assert cache.seen("ConfigMap", "ns", "m-filter", live)  # the write's own echo
    del server.objects["m-filter"]  # deleted while the watch was down: no event
    clock[0] += livecache.LIVE_TTL_S + 1
    assert (await apply(server, "ConfigMap", desired, "uid-1", cache=cache)).action == "created"
    assert "m-filter" in server.objects
