"""The operator's API client skips aiohttp's per-request environment lookups only where
the environment adds nothing to a request to the API server."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpserve import kube

HOST = "https://10.0.0.1:6443"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                 "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # absent file: no credentials


def test_nothing_in_the_environment() -> None:
    assert not kube.env_changes_requests(HOST)


def test_a_proxy_for_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert kube.env_changes_requests(HOST)


def test_a_proxy_bypassed_for_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "10.0.0.1")
    assert not kube.env_changes_requests(HOST)


def test_netrc_credentials_for_the_host(tmp_path: Path) -> None:
    (tmp_path / "netrc").write_text("machine 10.0.0.1 login u password p\n")
    (tmp_path / "netrc").chmod(0o600)
    assert kube.env_changes_requests(HOST)
    assert not kube.env_changes_requests("https://10.0.0.2:6443")


async def test_client_keeps_trust_env_only_when_it_matters(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: '{HOST}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    api = await kube.api_client()
    try:
        assert api.rest_client.pool_manager.trust_env is False
    finally:
        await api.close()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    api = await kube.api_client()
    try:
        assert api.rest_client.pool_manager.trust_env is True
    finally:
        await api.close()
