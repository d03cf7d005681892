"""The ledger over TLS: sidecars verify it with the CA the operator hands them, a rotated
certificate serves new handshakes without a restart, a half-written rotation changes nothing."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from ledger_helpers import FakeReviewer, make_service

from dpserve.ledger.service import LedgerService
from dpserve.tls import CaBundle, RotatingServerCert
from dpserve_testkit.memory_store import MemoryStore
from tls_support import CertAuthority


@pytest.fixture
def ca() -> CertAuthority:
    return CertAuthority.create()


@pytest.fixture
def tls_dir(tmp_path: Path, ca: CertAuthority) -> Path:
    ca.issue(tmp_path / "tls")
    return tmp_path / "tls"


@pytest.fixture
async def served(tls_dir: Path) -> AsyncIterator[tuple[RotatingServerCert, int]]:
    cert = RotatingServerCert(tls_dir / "tls.crt", tls_dir / "tls.key")
    service: LedgerService = make_service(MemoryStore(), FakeReviewer())
    port = await service.start("127.0.0.1", 0, cert.context)
    try:
        yield cert, port
    finally:
        await service.stop()


def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


async def peer_serial(port: int, ca_file: Path) -> int:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca_file))
    try:
        peer = writer.get_extra_info("ssl_object").getpeercert()
        return int(peer["serialNumber"], 16)
    finally:
        writer.close()


async def test_a_sidecar_verifies_the_ledger_with_the_ca(
        served: tuple[RotatingServerCert, int], tls_dir: Path, tmp_path: Path) -> None:
    _, port = served
    connector = aiohttp.TCPConnector(ssl=client_context(tls_dir / "ca.crt"))
    async with (aiohttp.ClientSession(connector=connector) as session,
                session.get(f"https://127.0.0.1:{port}/healthz") as response):
        assert response.status == 200
    # A ledger impostor (a certificate from another CA) is refused at the handshake.
    other = CertAuthority.create("someone-else")
    (tmp_path / "other.crt").write_bytes(other.pem)
    connector = aiohttp.TCPConnector(ssl=client_context(tmp_path / "other.crt"))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"https://127.0.0.1:{port}/healthz")
    # Plain HTTP gets no answer from a TLS port.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_rotated_certificate_serves_new_handshakes(
        served: tuple[RotatingServerCert, int], tls_dir: Path, ca: CertAuthority) -> None:
    cert, port = served
    first = await peer_serial(port, tls_dir / "ca.crt")
    assert cert.reload_if_changed() is False  # nothing changed yet
    second_serial = ca.issue(tls_dir)
    assert cert.reload_if_changed() is True
    assert await peer_serial(port, tls_dir / "ca.crt") == second_serial != first


async def test_a_half_written_rotation_keeps_the_current_chain(
        served: tuple[RotatingServerCert, int], tls_dir: Path, ca: CertAuthority,
        tmp_path: Path) -> None:
    cert, port = served
    serving = await peer_serial(port, tls_dir / "ca.crt")
    # A new certificate beside the old key (the Secret caught mid-update): not loadable.
    ca.issue(tmp_path / "next")
    (tls_dir / "tls.crt").write_bytes((tmp_path / "next" / "tls.crt").read_bytes())
    assert cert.reload_if_changed() is False
    assert await peer_serial(port, tls_dir / "ca.crt") == serving
    # The key arrives: the new chain serves.
    (tls_dir / "tls.key").write_bytes((tmp_path / "next" / "tls.key").read_bytes())
    assert cert.reload_if_changed() is True
    assert await peer_serial(port, tls_dir / "ca.crt") != serving


def test_a_bad_chain_or_ca_refuses_to_start(tmp_path: Path, tls_dir: Path) -> None:
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    with pytest.raises(ssl.SSLError):
        RotatingServerCert(tmp_path / "junk.crt", tls_dir / "tls.key")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        CaBundle(tmp_path / "junk.crt")
    assert "BEGIN CERTIFICATE" in CaBundle(tls_dir / "ca.crt").pem()
