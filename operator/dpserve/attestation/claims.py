"""Reading claims out of a token's payload: JSON Pointers and the required-claim checks.

Pure functions over the decoded JSON. Each check returns None when the claim satisfies the
requirement and otherwise the message to put in the refusal (the caller names the claim).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from dpserve.attestation.spec import ClaimRequirement, DebugRequirement, TeeRequirement

_MISSING: Final = object()


class ClaimMissing(Exception):
    """The pointer leads nowhere in the payload."""


def pointer_tokens(pointer: str) -> list[str]:
    """RFC 6901 reference tokens of ``pointer`` (``~1`` is ``/``, ``~0`` is ``~``)."""
    if not pointer.startswith("/"):
        raise ValueError(f"not a JSON Pointer: {pointer!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def resolve(payload: object, pointer: str) -> object:
    """The value ``pointer`` designates in ``payload``; :class:`ClaimMissing` if none."""
    node: object = payload
    for token in pointer_tokens(pointer):
        if isinstance(node, Mapping):
            node = node.get(token, _MISSING)
        elif isinstance(node, list) and token.isdigit() and (token == "0" or token[0] != "0"):
            index = int(token)
            node = node[index] if index < len(node) else _MISSING
        else:
            node = _MISSING
        if node is _MISSING:
            raise ClaimMissing(pointer)
    return node


def scalar_text(value: object) -> str | None:
    """A claim as the spec's value strings spell it; None for what never matches."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return None  # floats (1.0 vs 1), objects, lists, null: no unambiguous text


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_values(value: object, requirement: ClaimRequirement) -> str | None:
    text = scalar_text(value)
    if text is None:
        return f"is {type(value).__name__}, not a string, integer or boolean"
    if text not in requirement.values:
        return f"value {_shown(text)} is not among the {len(requirement.values)} allowed"
    return None


def check_tee(value: object, requirement: TeeRequirement) -> str | None:
    allowed = requirement.types
    if isinstance(value, str):
        return None if value in allowed else f"TEE {_shown(value)} is not one of {allowed}"
    if isinstance(value, Mapping):
        found = sorted(name for name in value if name in allowed)
        if len(found) == 1:
            return None
        if not found:
            named = sorted(str(name) for name in value)[:8]
            return f"names no TEE of {allowed} (members: {named})"
        return f"names several TEEs {found}: ambiguous evidence"
    return f"is {type(value).__name__}, neither a TEE name nor an object keyed by one"


_DEBUG_OFF: Final = (False, 0, "0", "false")
_DEBUG_ON: Final = (True, 1, "1", "true")


def check_debug(value: object, requirement: DebugRequirement) -> str | None:
    if requirement.encoding == "boolean":
        # bool is an int subclass: compare type and value, so 0.0 or "False" match nothing.
        if any(type(value) is type(off) and value == off for off in _DEBUG_OFF):
            return None
        if any(type(value) is type(on) and value == on for on in _DEBUG_ON):
            return "debug is enabled"
        return f"value {_shown(value)} does not say whether debug is off"
    # tdx-td-attributes: TDATTRIBUTES, 8 bytes as the quote holds them (little-endian), so
    # bit 0 of the first byte is TUD.DEBUG.
    if not isinstance(value, str) or len(value) != 16:
        return f"value {_shown(value)} is not 16 hex digits of TDATTRIBUTES"
    try:
        first = int(value[:2], 16)
        int(value, 16)
    except ValueError:
        return f"value {_shown(value)} is not hex"
    return "debug is enabled (TDATTRIBUTES bit 0)" if first & 1 else None


def first_failure(
    payload: Mapping[str, object],
    checks: Sequence[tuple[str, object]],
) -> tuple[str, str] | None:
    """The first (pointer, message) of ``checks`` that fails: each is (pointer, requirement)."""
    for pointer, requirement in checks:
        try:
            value = resolve(payload, pointer)
        except ClaimMissing:
            return pointer, "claim is missing"
        if isinstance(requirement, TeeRequirement):
            problem = check_tee(value, requirement)
        elif isinstance(requirement, DebugRequirement):
            problem = check_debug(value, requirement)
        elif isinstance(requirement, ClaimRequirement):
            problem = check_values(value, requirement)
        else:  # pragma: no cover - the callers pass the three requirement kinds only
            raise TypeError(f"unknown requirement {type(requirement).__name__}")
        if problem is not None:
            return pointer, problem
    return None
