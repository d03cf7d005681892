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
