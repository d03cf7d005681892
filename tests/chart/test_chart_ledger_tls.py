"""The chart's ledger TLS: a generated CA and certificate by default (what the operator
serves and sidecars verify), or a cert-manager Certificate, or the user's Secret."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

Objects = list[dict[str, Any]]
Render = Callable[[dict[str, Any]], Objects]
TLS_DIR = "/etc/dpserve/ledger-tls"


def _one(objects: Objects, kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def _operator(objects: Objects) -> dict[str, Any]:
    return _one(objects, "Deployment")["spec"]["template"]["spec"]


def test_generated_certificate_names_the_ledger_service_and_loads(
        render: Render, release_name: str, release_namespace: str, tmp_path: Path) -> None:
    objects = render({})
    secret = _one(objects, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    service = f"{release_name}-dpserve-ledger"
    cert = x509.load_pem_x509_certificate(files["tls.crt"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{service}.{release_namespace}.svc" in names.get_values_for_type(x509.DNSName)
    # The chain the ledger will load and the CA a sidecar will verify it with.
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        tmp_path / "tls.crt", tmp_path / "tls.key")
    ca = x509.load_pem_x509_certificate(files["ca.crt"])
    cert.verify_directly_issued_by(ca)


def test_the_operator_serves_the_secret_over_https(render: Render) -> None:
    objects = render({})
    pod = _operator(objects)
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DPSERVE_LEDGER_URL"].startswith("https://")
    assert env["DPSERVE_LEDGER_TLS_CERT"] == f"{TLS_DIR}/tls.crt"
    assert env["DPSERVE_LEDGER_TLS_KEY"] == f"{TLS_DIR}/tls.key"
    assert env["DPSERVE_LEDGER_TLS_CA"] == f"{TLS_DIR}/ca.crt"
    assert "DPSERVE_LEDGER_INSECURE" not in env
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == _one(objects, "Secret")["metadata"]["name"]
    assert "subPath" not in mount  # rotation reaches the files only without subPath
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_cert_manager_issues_the_same_secret(render: Render) -> None:
    objects = render({"ledgerTls": {"mode": "certManager",
                                    "certManager": {"issuerRef": {"name": "internal-ca",
                                                                  "kind": "ClusterIssuer"}}}})
    assert not [o for o in objects if o["kind"] == "Secret"]
    certificate = _one(objects, "Certificate")
    assert certificate["spec"]["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer"}
    volume = next(v for v in _operator(objects)["volumes"] if v["name"] == "ledger-tls")
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]


def test_a_user_secret_is_mounted_as_given(render: Render) -> None:
    objects = render({"ledgerTls": {"mode": "secret", "secretName": "corp-ledger-tls"}})
    assert not [o for o in objects if o["kind"] in ("Secret", "Certificate")]
    volume = next(v for v in _operator(objects)["volumes"] if v["name"] == "ledger-tls")
    assert volume["secret"]["secretName"] == "corp-ledger-tls"


@pytest.mark.parametrize(("values", "message"), [
    ({"ledgerTls": {"mode": "secret"}}, "ledgerTls.secretName"),
    ({"ledgerTls": {"mode": "certManager"}}, "ledgerTls.certManager.issuerRef.name"),
    ({"ledgerUrl": "http://ledger:8443"}, "ledgerUrl"),
])
def test_incomplete_tls_values_are_refused(render: Render, values: dict[str, Any],
                                           message: str) -> None:
    with pytest.raises(Exception, match=message.replace(".", r"\.")):
        render(values)
