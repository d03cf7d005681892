"""Verbatim-reproduction guard: keyed hashes of token windows of the training text.

The training job writes a fingerprint file with :func:`write_fingerprint_file`; the sidecar
loads it with :meth:`VerbatimGuard.load` and asks :meth:`VerbatimGuard.check` whether an
output string reproduces any window of ``window_tokens`` consecutive training tokens.

Normalisation: Unicode NFKC, then casefold, then tokens are the runs of word characters
(``\\w+``), so spacing, punctuation and case changes do not evade the guard.

Hashing: each token is hashed with BLAKE2b keyed by a random per-file salt (from
:mod:`secrets`), and a window is the Rabin-Karp polynomial of its token digests modulo the
Mersenne prime 2**61 - 1 with a salt-derived base, so consecutive windows cost O(1) each.
Two different windows collide with probability at most ``window / 2**61``. The file stores
the salt and the sorted window hashes, never text.

Texts shorter than one window contribute no fingerprint: the guard is about long
reproductions (a short overlap with the training data is allowed by design).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

FORMAT = "dpserve-verbatim-fingerprints"
FORMAT_VERSION = 1
HASH_SCHEME = "blake2b64-token-rabin-karp-m61"
SALT_BYTES = 16
_MOD = (1 << 61) - 1
_TOKEN_RE = re.compile(r"\w+")


class FingerprintFileError(ValueError):
    """The fingerprint file is missing, malformed or of an unknown format."""


def normalise_tokens(text: str) -> list[str]:
    """NFKC-normalised, casefolded word tokens of ``text``."""
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).casefold())


def _base(key: bytes) -> int:
    # A key-dependent base in [2, MOD - 2]: the polynomial hash is only collision-resistant
    # for a base the text cannot be chosen against.
    digest = hashlib.blake2b(b"rabin-karp-base", key=key, digest_size=8).digest()
    return 2 + int.from_bytes(digest, "little") % (_MOD - 3)


def window_hashes(tokens: Sequence[str], window: int, *, key: bytes = b"") -> Iterator[int]:
    """Hashes of every run of ``window`` consecutive tokens, in order (none if too short).

    ``key`` is the per-file salt (BLAKE2b key, at most 64 bytes); every value is < 2**61.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(tokens) < window:
        return
    digests: dict[str, int] = {}

    def token_digest(token: str) -> int:
        value = digests.get(token)
        if value is None:
            raw = hashlib.blake2b(token.encode("utf-8"), key=key, digest_size=8).digest()
            value = int.from_bytes(raw, "little") % _MOD
            digests[token] = value
        return value

    base = _base(key)
    top = pow(base, window - 1, _MOD)  # weight of the token that leaves the window
    h = 0
    for token in tokens[:window]:
        h = (h * base + token_digest(token)) % _MOD
    yield h
    for i in range(window, len(tokens)):
        h = (h - token_digest(tokens[i - window]) * top) % _MOD
        h = (h * base + token_digest(tokens[i])) % _MOD
        yield h


def _encode(hashes: npt.NDArray[np.uint64]) -> str:
    return base64.b64encode(hashes.astype("<u8").tobytes()).decode("ascii")


def write_fingerprint_file(
    texts: Iterable[str], path: str | Path, window_tokens: int, *,
    inherit: VerbatimGuard | None = None,
) -> int:
    """Write the fingerprints of every ``window_tokens``-window of ``texts`` to ``path``.

    Returns the number of distinct window hashes written. The file is JSON: format, version,
    scheme, window size, salt (hex) and the sorted hashes (base64 of little-endian uint64).
    Written atomically (temporary file + rename).

    ``inherit``: the guard of the model this one derives from (a LoRA version keeps its
    base's weights, hence what the base could reproduce): its salt is reused and its hashes
    are kept, so one file guards both training sets. Its window must be ``window_tokens``.
    """
    if window_tokens < 1:
        raise ValueError(f"window_tokens must be >= 1, got {window_tokens}")
    collected: set[int] = set()
    if inherit is None:
        salt = secrets.token_bytes(SALT_BYTES)
    else:
        if inherit.window_tokens != window_tokens:
            raise ValueError(f"the inherited fingerprints use {inherit.window_tokens}-token "
                             f"windows, not {window_tokens}")
        salt = inherit.salt
        collected.update(int(h) for h in inherit.hashes)
    for text in texts:
        collected.update(window_hashes(normalise_tokens(text), window_tokens, key=salt))
    hashes = np.fromiter(sorted(collected), dtype=np.uint64, count=len(collected))
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "scheme": HASH_SCHEME,
        "windowTokens": window_tokens,
        "salt": salt.hex(),
        "count": int(hashes.size),
        "hashes": _encode(hashes),
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, separators=(",", ":"))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return int(hashes.size)


class VerbatimGuard:
    """Answers whether a text reproduces a fingerprinted window of the training data."""

    def __init__(self, salt: bytes, window_tokens: int, hashes: npt.NDArray[np.uint64]) -> None:
        if window_tokens < 1:
            raise ValueError(f"window_tokens must be >= 1, got {window_tokens}")
        self.salt = salt
        self.window_tokens = window_tokens
        self._hashes = np.sort(hashes.astype(np.uint64, copy=False))

    def __len__(self) -> int:
        return int(self._hashes.size)

    @property
    def hashes(self) -> npt.NDArray[np.uint64]:
        """The sorted window hashes (read-only view)."""
        view = self._hashes.view()
        view.flags.writeable = False
        return view

    @classmethod
    def load(cls, path: str | Path) -> VerbatimGuard:
        """Load a file written by :func:`write_fingerprint_file`."""
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FingerprintFileError(f"cannot read fingerprint file {path}: {exc}") from exc
        if not isinstance(document, dict):
            raise FingerprintFileError(f"{path}: not a JSON object")
        if document.get("format") != FORMAT or document.get("version") != FORMAT_VERSION:
            raise FingerprintFileError(
                f"{path}: unknown format {document.get('format')!r} "
                f"version {document.get('version')!r}"
            )
        if document.get("scheme") != HASH_SCHEME:
            raise FingerprintFileError(f"{path}: unknown scheme {document.get('scheme')!r}")
        window = document.get("windowTokens")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise FingerprintFileError(f"{path}: windowTokens must be a positive integer")
        try:
            salt = bytes.fromhex(str(document["salt"]))
            raw = base64.b64decode(str(document["hashes"]), validate=True)
        except (KeyError, ValueError) as exc:
            raise FingerprintFileError(f"{path}: bad salt or hashes: {exc}") from exc
        if not salt or len(salt) > 64 or len(raw) % 8:
            raise FingerprintFileError(f"{path}: bad salt length or hashes length")
        hashes = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
        if document.get("count") != hashes.size:
            raise FingerprintFileError(f"{path}: count does not match the hashes")
        return cls(salt, window, hashes)

    def check(self, text: str) -> bool:
        """True when ``text`` contains a window of tokens that appears in the training data."""
        if self._hashes.size == 0:
            return False
        tokens = normalise_tokens(text)
        if len(tokens) < self.window_tokens:
            return False  # shorter than one window: nothing to look up
        candidates = np.fromiter(
            window_hashes(tokens, self.window_tokens, key=self.salt), dtype=np.uint64,
        )
        if candidates.size == 0:
            return False
        positions = np.searchsorted(self._hashes, candidates)
        positions[positions == self._hashes.size] = 0
        return bool(np.any(self._hashes[positions] == candidates))
