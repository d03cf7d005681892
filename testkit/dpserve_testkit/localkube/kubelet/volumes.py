"""Pod volumes as directories on this machine."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]


@dataclass
class Volume:
    path: Path
    files: dict[str, str] = field(default_factory=dict)
    # configMap / secret / projected: written per container, rewritten like its args.
    per_container: bool = False
    owned: bool = False  # a PVC or emptyDir: re-owned to the pod's fsGroup


class VolumeError(Exception):
    """A pod volume the local kubelet cannot provide (the message names it)."""


def host_path(name: str, source: Obj) -> Volume:
    """A ``hostPath`` volume: the directory itself (created for ``DirectoryOrCreate``)."""
    path = Path(source["path"])
    kind = source.get("type") or ""
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "Directory" and not path.is_dir():
        raise VolumeError(f"volume {name}: hostPath {path} is not a directory")
    elif kind == "File" and not path.is_file():
        raise VolumeError(f"volume {name}: hostPath {path} is not a file")
    return Volume(path)


def source_ref(source: Obj) -> tuple[str, str, Obj]:
    """(plural, name, reference) of a configMap or secret volume source."""
    if "configMap" in source:
        ref = source["configMap"]
        return "configmaps", str(ref.get("name")), ref
    ref = source["secret"]
    return "secrets", str(ref.get("secretName") or ref.get("name")), ref


def key_files(obj: Obj | None, plural: str, name: str, ref: Obj) -> dict[str, str]:
    """The files a configMap or secret volume source projects (``items`` honoured)."""
    kind = plural[:-1]
    if obj is None:
        if ref.get("optional"):
            return {}
        raise VolumeError(f"{kind} {name!r} not found")
    data: dict[str, str] = dict(obj.get("data") or {})
    if plural == "secrets":
        data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}
    items = ref.get("items")
    if not items:
        return data
    files = {}
    for item in items:
        if item["key"] not in data:
            raise VolumeError(f"{kind} {name!r} has no key {item['key']!r}")
        files[item.get("path") or item["key"]] = data[item["key"]]
    return files


def downward_files(pod: Any, source: Obj, volume: str) -> dict[str, str]:
    """A downwardAPI volume source's files (the pod's own metadata fields)."""
    values = {"metadata.name": pod.name, "metadata.namespace": pod.namespace,
              "metadata.uid": pod.uid}
    files = {}
    for item in source.get("items") or []:
        field = (item.get("fieldRef") or {}).get("fieldPath")
        if field not in values:
            raise VolumeError(f"volume {volume}: downwardAPI field {field!r} is not supported "
                              "by the local kubelet")
        files[item["path"]] = values[field]
    return files
