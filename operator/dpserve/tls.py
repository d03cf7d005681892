"""The ledger's TLS: a server context whose certificate follows its files, and the CA that
sidecars verify the ledger with.

Certificates are files mounted from a Secret (cert-manager's, or the one the chart generates
at install). The kubelet swaps a Secret volume's files atomically when the Secret changes, so
rotation is: re-read the files when their modification time changes. A new chain only serves
new handshakes (connections already open keep theirs until they close); a chain that fails to
load leaves the current one serving and is reported, never half-applied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

logger = logging.getLogger("dpserve.tls")
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


def _stamp(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    stats = [os.stat(p) for p in paths]  # follows the Secret volume's ..data symlink
    return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class RotatingServerCert:
    """A TLS 1.2+ server context loaded from ``cert`` and ``key``, reloaded on change.

    A chain is loaded into a fresh context and swapped in whole during each handshake (the
    SNI callback runs before the certificate is chosen, with or without SNI): loading into
    the live context would replace the certificate before OpenSSL checks it against the key,
    leaving a mismatched pair serving when a rotation is caught half-written.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self._loaded = _stamp(cert, key)
        self._current = _server_context(cert, key)  # a bad chain at start: refuse to start
        self.context = _server_context(cert, key)
        self.context.sni_callback = self._choose

    def _choose(self, connection: ssl.SSLObject, _name: str | None,
                _context: ssl.SSLContext) -> None:
        connection.context = self._current

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed; True when a new chain now serves."""
        try:
            stamp = _stamp(self.cert, self.key)
            if stamp == self._loaded:
                return False
            fresh = _server_context(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            # Mid-rotation (cert and key from different generations) or a broken Secret:
            # keep serving the current chain; the next poll tries again.
            logger.warning("ledger TLS: keeping the current certificate: %s", exc)
            return False
        self._current, self._loaded = fresh, stamp
        logger.info("ledger TLS: certificate reloaded from %s", self.cert)
        return True

    async def follow(self, interval_s: float = 30.0) -> None:
        """Poll the files until cancelled (an operator task)."""
        while True:
            await asyncio.sleep(interval_s)
            self.reload_if_changed()


class CaBundle:
    """The PEM of the CA that signed the ledger's certificate, re-read when the file changes
    (written into each model's filter ConfigMap; a new CA rolls the pods)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self._pem = ""
        self.pem()  # unreadable or not a certificate at start: refuse to start

    def pem(self) -> str:
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            text = self.path.read_text(encoding="ascii")
            if PEM_CERTIFICATE not in text:
                raise ValueError(f"{self.path}: not a PEM certificate bundle")
            self._pem, self._stamp = text, stamp
        return self._pem
