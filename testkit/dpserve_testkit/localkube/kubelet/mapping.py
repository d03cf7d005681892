"""How a container of a manifest maps onto a local process: paths, addresses, env, names.

Pure functions and small classes: what the kubelet rewrites and why is here (the address
pool's block locks are its only I/O).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# The inference image's ENV (inference-image/Dockerfile); PATH is the kubelet's own.
IMAGE_ENV: Mapping[str, str] = {
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
# Set from resources.limits.cpu: torch otherwise starts one thread per host core.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Host variables a local process needs to find the same Python installation.
PASS_THROUGH_ENV = ("PYTHONPATH", "LD_LIBRARY_PATH")
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"

_LOOPBACK = re.compile(r"(?<![\w.-])(127\.0\.0\.1|0\.0\.0\.0|localhost)(?::(\d{1,5}))?(?![\w.-])")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable hash of a pod template (the ``pod-template-hash`` of the ReplicaSet)."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).digest()
    return "".join(_SUFFIX_ALPHABET[b % len(_SUFFIX_ALPHABET)] for b in digest[:10])


def name_suffix(length: int = 5) -> str:
    """A random pod name suffix, as the ReplicaSet and Job controllers append."""
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(length))


def cpu_threads(limit: str | int | float | None) -> int:
    """Whole CPUs of a ``resources.limits.cpu`` quantity, at least 1, at most the host's."""
    if limit is None or limit == "":
        return 1
    text = str(limit)
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return 1
    return max(1, min(math.ceil(cores), os.cpu_count() or 1))


class AddressPool:
    """Loopback addresses for pods: 127.0.<n>.<m> with n >= 1 (127.0.0.x stays the host's).

    Addresses are not reused: a new pod never inherits sockets of a pod that just went.
    Several stacks can run on one machine (two demos, parallel tests): each pool claims whole
    blocks 127.0.<n>.0/24 by an exclusive ``flock`` on ``<lock_dir>/<n>.lock``, held until
    :meth:`close` or the process' exit (the kernel drops the lock of a killed process), so
    no two live stacks hand out the same address and one stack's traffic never reaches the
    other's pods.
    """

    def __init__(self, lock_dir: Path | None = None) -> None:
        self._lock_dir = lock_dir or Path(tempfile.gettempdir()) / "dpserve-localkube-addresses"
        self._blocks: list[tuple[int, int]] = []  # (n, fd of the held lock)
        self._next_m = 250  # the current block is used up: claim one on the first take

    def take(self) -> str:
        if self._next_m >= 250:
            self._claim_block()
            self._next_m = 0
        self._next_m += 1
        return f"127.0.{self._blocks[-1][0]}.{self._next_m + 1}"

    def _claim_block(self) -> None:
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        held = {n for n, _ in self._blocks}
        for n in range(1, 255):
            if n in held:
                continue
            fd = os.open(self._lock_dir / f"{n}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # another live stack holds this block
            self._blocks.append((n, fd))
            return
        raise RuntimeError("out of loopback pod addresses")

    @property
    def blocks(self) -> list[int]:
        return [n for n, _ in self._blocks]

    def close(self) -> None:
        """Release the blocks (their pods must be gone: another stack may reuse them)."""
        for _, fd in self._blocks:
            os.close(fd)
        self._blocks = []
        self._next_m = 250


class Rewriter:
    """Maps container paths and localhost addresses to their local equivalents in one pass.

    Paths match on boundaries only (``/data`` does not match inside ``/foo/data`` or
    ``/database``); the longest mount wins, and a replacement is never rewritten again.
    Loopback addresses become the pod's address unless the port is one of the host's own
    services (``host_ports``: the operator's ledger, reached as a node would); a local image
    reference (``localhost/name:tag``) is not an address and stays.
    """

    def __init__(
        self, paths: Mapping[str, Path], pod_ip: str, host_ports: Iterable[int] = ()
    ) -> None:
        self._paths = {p.rstrip("/") or "/": str(h) for p, h in paths.items()}
        self._ip = pod_ip
        self._host_ports = {str(p) for p in host_ports}
        ordered = sorted(self._paths, key=len, reverse=True)
        self._path_re = re.compile(
            r"(?<![\w.\-/])(" + "|".join(re.escape(p) for p in ordered) + r")(?=$|[^\w.\-])"
        ) if ordered else None

    def __call__(self, text: str) -> str:
        if self._path_re is not None:
            text = self._path_re.sub(lambda m: self._paths[m.group(1)], text)
        return _LOOPBACK.sub(self._address, text)

    def _address(self, match: re.Match[str]) -> str:
        port = match.group(2)
        if (match.group(1) == "localhost" and port is None
                and match.string.startswith("/", match.end())
                and not match.string[:match.start()].endswith("//")):
            return match.group(0)  # an image reference (localhost/name:tag), no address
        if port is not None and port in self._host_ports:
            return match.group(0)
        return self._ip + (f":{port}" if port is not None else "")


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, text)
