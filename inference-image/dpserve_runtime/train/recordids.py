"""Record ids: their validation, the erased-ids file a training Job reads, and the
training-set manifest an artifact keeps (which records each teacher, or the model, saw).

The ids follow the ErasureRequest's ``recordIds`` rule (one definition, in the API model),
so every id a request can name can be found in a data set, and the reverse.

``training-set.json`` (written next to the manifest, hashed into ErasureRequest status)::

    {"format": "dpserve-training-set", "version": 1,
     "dataset": {"file": "digits.npz", "sha256": "..."},
     "teachers": [["id", ...], ...]      # pate: the partition map, teacher k's record ids
     | "train": ["id", ...],             # dpsgd: the records trained on
     "heldOut": ["id", ...],             # the test split (never trained on)
     "excluded": {"count": k, "sha256": "..."}}   # the erased ids left out (never the ids)

Erased ids are not copied into the artifact: their count and the SHA-256 of their sorted
list let an auditor check the exclusion against the request without the artifact holding
a list of people who asked to be forgotten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dpserve.api.erasurerequest import RECORD_ID_MAX, RECORD_ID_PATTERN

TRAINING_SET_NAME = "training-set.json"
TRAINING_SET_FORMAT = "dpserve-training-set"
MAX_EXCLUDED_IDS = 1_000_000
_ID = re.compile(RECORD_ID_PATTERN)


class RecordIdError(ValueError):
    """An id is malformed or repeated, or an ids file is unreadable (message names it)."""


def check_record_ids(ids: Sequence[str], *, rows: int | None = None) -> tuple[str, ...]:
    """The ids, validated: the ErasureRequest's pattern and length, unique, one per row."""
    if rows is not None and len(ids) != rows:
        raise RecordIdError(f"{len(ids)} ids for {rows} rows (one id per row)")
    seen: set[str] = set()
    for position, rid in enumerate(ids):
        if len(rid) > RECORD_ID_MAX or not _ID.match(rid):
            raise RecordIdError(
                f"id {rid[:40]!r} at row {position} must match {RECORD_ID_PATTERN} and have "
                f"at most {RECORD_ID_MAX} characters")
        if rid in seen:
            raise RecordIdError(f"id {rid!r} repeats (row {position}): ids must be unique")
        seen.add(rid)
    return tuple(ids)


def load_excluded_ids(path: str | Path) -> frozenset[str]:
    """The erased ids a Job must leave out: a JSON list of strings (the ConfigMap the operator
    keeps per model). Any malformed entry refuses the whole file: training without an erasure
    the file meant is the one outcome that must not happen silently."""
    source = Path(path)
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordIdError(f"--exclude-ids {source}: unreadable: {exc}") from exc
    if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
        raise RecordIdError(f"--exclude-ids {source}: must be a JSON list of id strings")
    if len(raw) > MAX_EXCLUDED_IDS:
        raise RecordIdError(f"--exclude-ids {source}: {len(raw)} ids, at most {MAX_EXCLUDED_IDS}")
    for rid in raw:
        if len(rid) > RECORD_ID_MAX or not _ID.match(rid):
            raise RecordIdError(f"--exclude-ids {source}: id {rid[:40]!r} is malformed")
    return frozenset(raw)


def ids_digest(ids: Iterable[str]) -> str:
    """SHA-256 of the sorted ids, one per line (what ErasureRequest status can be checked
    against)."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(ids)).encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_set_document(
    *, dataset: Path, dataset_sha256: str, excluded: frozenset[str],
    teachers: Sequence[Sequence[str]] | None = None, train: Sequence[str] | None = None,
    held_out: Sequence[str] = (),
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "format": TRAINING_SET_FORMAT,
        "version": 1,
        "dataset": {"file": dataset.name, "sha256": dataset_sha256},
    }
    if teachers is not None:
        document["teachers"] = [list(t) for t in teachers]
    if train is not None:
        document["train"] = list(train)
    document["heldOut"] = list(held_out)
    document["excluded"] = {"count": len(excluded), "sha256": ids_digest(excluded)}
    return document


def write_training_set(directory: Path, document: dict[str, Any]) -> str:
    """Write ``training-set.json`` atomically (0644); returns the SHA-256 of its bytes."""
    data = (json.dumps(document, separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".training-set-", suffix=".json")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, directory / TRAINING_SET_NAME)
    return hashlib.sha256(data).hexdigest()


def load_training_set(directory: Path) -> dict[str, Any]:
    path = directory / TRAINING_SET_NAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RecordIdError(
            f"{directory} has no {TRAINING_SET_NAME}: it was trained from a data set without "
            "record ids (or before dpserve kept partition maps), so records cannot be erased "
            "from it by id; retrain it fully from a data set with an 'ids' field") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordIdError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != TRAINING_SET_FORMAT:
        raise RecordIdError(f"{path}: not a {TRAINING_SET_FORMAT} document")
    return document
