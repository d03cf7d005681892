"""Which field of a JSON body is nested too deeply to parse (for the 400 that names it).

``json.loads`` raises ``RecursionError`` on nesting beyond the interpreter's recursion limit,
without saying where. :func:`deep_field` finds the top-level field whose value nests deeper
than ``limit`` levels with a regular expression over the brackets and strings (quoted
brackets do not count), stopping at the first such point: it runs only on that error path,
at C speed per token, so an attacker's megabyte of ``[`` costs milliseconds.
"""

from __future__ import annotations

import json
import re

# A string token (with the colon that makes it a key, if any), or a bracket.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"\s*(:)?|[\[\]{}]')
DEFAULT_LIMIT = 256


def deep_field(text: str, limit: int = DEFAULT_LIMIT) -> str | None:
    """The top-level key whose value nests deeper than ``limit``; ``""`` when the body
    itself does (it is not an object, or the nesting starts outside any key); None when
    nothing nests that deep."""
    depth = 0
    key: str | None = None  # the current top-level key (depth 1 of an object body)
    top_is_object = False
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        first = token[0]
        if first == '"':
            if depth == 1 and top_is_object and match.group(1):
                key = _decode_key(token[:token.rindex('"') + 1])
            continue
        if first in "[{":
            if depth == 0:
                top_is_object = first == "{"
            depth += 1
            if depth > limit:
                return key if key is not None else ""
        else:
            depth -= 1
    return None


def _decode_key(token: str) -> str:
    try:
        value = json.loads(token)
    except ValueError:
        return token[1:-1]
    return value if isinstance(value, str) else token[1:-1]


def nesting_message(text: str) -> tuple[str, str | None]:
    """(message, field) of the 400 for a body too deeply nested to parse."""
    field = deep_field(text) or None
    where = f"field '{_printable(field)}'" if field else "the body"
    return f"{where} is nested too deeply (more than {DEFAULT_LIMIT} levels)", field


def _printable(field: str) -> str:
    # A client-chosen key goes back to the client only: bounded, no control characters.
    cleaned = "".join(c if c.isprintable() else "?" for c in field[:64])
    return cleaned + ("..." if len(field) > 64 else "")
