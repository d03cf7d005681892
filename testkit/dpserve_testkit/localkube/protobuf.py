"""Kubernetes protobuf request bodies -> JSON objects, for the kinds kubectl creates typed.

kubectl sends the objects of its typed generators (``kubectl create namespace|configmap|
secret|serviceaccount``) and their DeleteOptions as ``application/vnd.kubernetes.protobuf``
(the ``k8s\\0`` envelope around a ``runtime.Unknown``), and does not fall back to JSON on 415.
A real API server decodes them; the emulator decodes the fields of those kinds, from the
field numbers of ``k8s.io/api`` and ``apimachinery`` ``generated.proto``. Any other kind is
refused with 415 naming it, never guessed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

MAGIC = b"k8s\x00"
Obj = dict[str, Any]


class ProtobufError(ValueError):
    """The body is not a Kubernetes protobuf message the emulator can read."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) in wire order: varints as int, length-delimited as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ProtobufError("truncated field")
            yield number, data[pos:pos + size]
            pos += size
        elif wire == 1:
            yield number, int.from_bytes(data[pos:pos + 8], "little")
            pos += 8
        elif wire == 5:
            yield number, int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")


# A schema maps a field number to (JSON name, decoder, repeated).
Decoder = Callable[[int | bytes], Any]
Schema = dict[int, tuple[str, Decoder, bool]]


def _str(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a string")
    return value.decode("utf-8")


def _b64(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected bytes")
    return base64.b64encode(value).decode("ascii")


def _int(value: int | bytes) -> int:
    if isinstance(value, bytes):
        raise ProtobufError("expected an integer")
    return value - (1 << 64) if value >= 1 << 63 else value


def _bool(value: int | bytes) -> bool:
    return bool(_int(value))


def _map(value_decoder: Decoder) -> Decoder:
    """A map entry (key 1, value 2); merged into one dict by :func:`decode`."""
    def entry(value: int | bytes) -> tuple[str, Any]:
        if not isinstance(value, bytes):
            raise ProtobufError("expected a map entry")
        parts = dict(fields(value))
        return _str(parts.get(1, b"")), value_decoder(parts.get(2, b""))
    return entry


def _message(schema: Schema) -> Decoder:
    def message(value: int | bytes) -> Obj:
        if not isinstance(value, bytes):
            raise ProtobufError("expected a message")
        return decode(value, schema)
    return message


def _time(value: int | bytes) -> str:
    seconds = _int(dict(fields(value if isinstance(value, bytes) else b"")).get(1, 0))
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode(data: bytes, schema: Schema) -> Obj:
    out: Obj = {}
    for number, raw in fields(data):
        if number not in schema:
            continue  # a field the emulator does not model; real servers keep it
        name, decoder, repeated = schema[number]
        value = decoder(raw)
        if value == "" and not repeated:
            continue  # Go writes every string field; JSON's omitempty leaves empty ones out
        if isinstance(value, tuple):  # map entry
            out.setdefault(name, {})[value[0]] = value[1]
        elif repeated:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out


_OWNER_REFERENCE: Schema = {
    1: ("kind", _str, False), 3: ("name", _str, False), 4: ("uid", _str, False),
    5: ("apiVersion", _str, False), 6: ("controller", _bool, False),
    7: ("blockOwnerDeletion", _bool, False),
}
_OBJECT_META: Schema = {
    1: ("name", _str, False), 2: ("generateName", _str, False), 3: ("namespace", _str, False),
    5: ("uid", _str, False), 6: ("resourceVersion", _str, False),
    7: ("generation", _int, False), 8: ("creationTimestamp", _time, False),
    11: ("labels", _map(_str), False), 12: ("annotations", _map(_str), False),
    13: ("ownerReferences", _message(_OWNER_REFERENCE), True),
    14: ("finalizers", _str, True),
}
_META = (1, ("metadata", _message(_OBJECT_META), False))
_LOCAL_REF: Schema = {1: ("name", _str, False)}

KINDS: dict[tuple[str, str], Schema] = {
    ("v1", "Namespace"): {
        _META[0]: _META[1],
        2: ("spec", _message({1: ("finalizers", _str, True)}), False),
    },
    ("v1", "ConfigMap"): {
        _META[0]: _META[1], 2: ("data", _map(_str), False),
        3: ("binaryData", _map(_b64), False), 4: ("immutable", _bool, False),
    },
    ("v1", "Secret"): {
        _META[0]: _META[1], 2: ("data", _map(_b64), False), 3: ("type", _str, False),
        4: ("stringData", _map(_str), False), 5: ("immutable", _bool, False),
    },
    ("v1", "ServiceAccount"): {
        _META[0]: _META[1], 2: ("secrets", _message({4: ("name", _str, False)}), True),
        3: ("imagePullSecrets", _message(_LOCAL_REF), True),
        4: ("automountServiceAccountToken", _bool, False),
    },
    ("v1", "DeleteOptions"): {
        1: ("gracePeriodSeconds", _int, False),
        2: ("preconditions", _message({1: ("uid", _str, False),
                                       2: ("resourceVersion", _str, False)}), False),
        3: ("orphanDependents", _bool, False), 4: ("propagationPolicy", _str, False),
        5: ("dryRun", _str, True),
    },
}


def decode_object(body: bytes) -> Obj:
    """The JSON form of a ``k8s\\0``-enveloped protobuf object of a kind in :data:`KINDS`."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body lacks the k8s protobuf envelope")
    unknown = dict(fields(body[len(MAGIC):]))
    raw_type = unknown.get(1, b"")
    type_meta = dict(fields(raw_type if isinstance(raw_type, bytes) else b""))
    api_version = _str(type_meta.get(1, b""))
    kind = _str(type_meta.get(2, b""))
    # DeleteOptions travel as meta.k8s.io/v1 or v1; both have the same fields.
    key = ("v1" if api_version in ("v1", "meta.k8s.io/v1") else api_version, kind)
    schema = KINDS.get(key)
    if schema is None:
        raise ProtobufError(f"{kind or '?'} ({api_version or '?'}) in protobuf is not "
                            "supported by the emulator: send it as JSON")
    raw = unknown.get(2, b"")
    obj = decode(raw if isinstance(raw, bytes) else b"", schema)
    return {"apiVersion": api_version, "kind": kind, **obj}
