"""Sequenced lease ids: bound to the pod (and partition) that formed them, increasing.

A random lease id is idempotent only while its record is on the status (each pool's two
latest, unexpired): once forgotten, a replay would be charged as a new lease. A *sequenced*
id, ``s<16 hex digits: sequence>-<16 hex digits: tag>``, fixes that with a compact per-pool
high-water mark:

- the tag is the first 16 hex digits of SHA-256 of ``<pod>/<partition or "">``: the ledger
  refuses an id whose tag is not the requesting (token-bound) pod's, so one pod cannot use
  another's ids;
- the sequence increases with every new lease of that pod and partition; the status keeps the
  latest record of each (model, pod, tag) for :data:`ID_MEMORY` after it expired, so an id at
  or below that record's sequence that is not itself on the status was granted before and is
  refused (400), never charged again.

The lease request accepts sequenced ids only (``dpserve.api.lease.LeaseId``). Records of random
ids (the format before this one) that an earlier release left on a status are still honoured
as replays while they are there; the grant logic keeps that path for them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta

ID_MEMORY = timedelta(hours=24)  # how long a pool's latest record outlives its expiry
# Expired records kept at most (the most recent), beyond the outstanding (each pool's two
# latest unexpired, leases.prune_leases): bounded for the status's size (limits.py; each is
# ~0.24 KiB, and 64 of them put a multi-tenant budget at its largest over 100 KiB). A pool
# whose record was dropped loses only its replay memory: a replayed id of it is charged again
# (more spent, never less), and a pod's bound token dies with the pod, so the records that
# matter are those of live pools idle past a lease TTL; a serving pool's latest records are
# outstanding and always kept.
MAX_REMEMBERED = 32

_SEQUENCED = re.compile(r"^s([0-9a-f]{16})-([0-9a-f]{16})$")


@dataclass(frozen=True)
class SequencedId:
    sequence: int
    tag: str


def pool_tag(pod: str, partition: str | None) -> str:
    """The tag of a pod's lease pool (one per partition the sidecar leases for)."""
    return hashlib.sha256(f"{pod}/{partition or ''}".encode()).hexdigest()[:16]


def sequenced_id(pod: str, partition: str | None, sequence: int) -> str:
    """The lease id a sidecar forms for its ``sequence``-th lease of that pool."""
    if not 0 <= sequence < 16**16:
        raise ValueError(f"sequence: must be in [0, 16**16), got {sequence}")
    return f"s{sequence:016x}-{pool_tag(pod, partition)}"


def parse(lease_id: str) -> SequencedId | None:
    """The sequence and tag of a sequenced id; None for a random (legacy) one."""
    match = _SEQUENCED.match(lease_id)
    if match is None:
        return None
    return SequencedId(int(match.group(1), 16), match.group(2))
