"""Server-Sent Events: parse the model server's stream incrementally, write events to clients.

The parser follows the WHATWG ``text/event-stream`` rules the sidecar needs: lines end in
LF, CRLF or CR (a CR at the end of one network chunk may be the first half of a CRLF split
across chunks); ``data:`` lines of one event are joined with LF; a blank line dispatches the
event; ``:`` lines are comments; one space after the colon is dropped; ``event`` and ``id``
are kept, ``retry`` and unknown fields ignored. A few dozen lines, so hand-written rather
than another dependency in the inference image (the SSE client libraries on PyPI are
synchronous or bring an HTTP client of their own).

Limits protect the sidecar from a misbehaving upstream: a line or an event over
``max_event_bytes`` raises :class:`SseError` instead of buffering without bound.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
DONE = "[DONE]"  # OpenAI's end-of-stream sentinel


class SseError(ValueError):
    """The upstream stream is not valid SSE (or over the size limit)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: str
    event: str | None = None
    id: str | None = None


class SseParser:
    """Feed bytes as they arrive; complete events come out."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buffer = b""
        self._data: list[str] = []
        self._data_size = 0
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                break
            end, width = cut
            line, self._buffer = self._buffer[:end], self._buffer[end + width:]
            event = self._line(line)
            if event is not None:
                events.append(event)
        if len(self._buffer) > self._max:
            raise SseError(f"an event stream line is over {self._max} bytes")
        return events

    def finish(self) -> list[SseEvent]:
        """End of stream: a held final CR ends its line; anything after the last line end
        and any undispatched event are left over (the spec discards them), see
        :attr:`cut_off`."""
        events: list[SseEvent] = []
        if self._buffer.endswith(b"\r"):
            event = self._line(self._buffer[:-1])
            self._buffer = b""
            if event is not None:
                events.append(event)
        return events

    @property
    def cut_off(self) -> bool:
        """Bytes or data lines are pending: the stream stopped in the middle of an event."""
        return bool(self._data or self._buffer)

    def _line(self, raw: bytes) -> SseEvent | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SseError("the event stream is not valid UTF-8") from exc
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_size += len(value) + 1
            if self._data_size > self._max:
                raise SseError(f"an event is over {self._max} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event, event_id = self._data, self._event, self._id
        self._data, self._data_size, self._event = [], 0, None
        if not data:
            return None
        return SseEvent("\n".join(data), event, event_id)


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Index and width of the first line terminator (LF, CRLF or CR) in ``buffer``.

    A CR as the last byte is not taken yet: the LF of a CRLF may be in the next chunk.
    """
    lf, cr = buffer.find(b"\n"), buffer.find(b"\r")
    if cr == -1 or (lf != -1 and lf < cr):
        return None if lf == -1 else (lf, 1)
    if cr + 1 == len(buffer):
        return None
    return (cr, 2) if buffer[cr + 1] == 0x0A else (cr, 1)


async def iter_events(chunks: AsyncIterator[bytes],
                      max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> AsyncIterator[SseEvent]:
    """Events of a byte stream; :class:`SseError` if it ends in the middle of an event."""
    parser = SseParser(max_event_bytes)
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.finish():
        yield event
    if parser.cut_off:
        raise SseError("the event stream ended in the middle of an event")


def encode_event(payload: Any) -> bytes:
    """One ``data:`` event carrying ``payload`` as compact JSON (never contains a newline)."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8") + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"
