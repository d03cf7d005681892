"""Kubernetes API access for the operator's own calls (Kopf has its own connection).

One place decides how the operator reaches the API server: in-cluster ServiceAccount
credentials when running in a pod, otherwise the kubeconfig named by ``KUBECONFIG``.
"""

from __future__ import annotations

import os

from aiohttp.helpers import basicauth_from_netrc, get_env_proxy_for_url, netrc_from_env
from kubernetes_asyncio import client, config
from yarl import URL


async def api_client() -> client.ApiClient:
    """A configured ApiClient; the caller closes it (``async with`` or ``await .close()``)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return _without_idle_env_lookups(client.ApiClient())
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
    )
    return _without_idle_env_lookups(client.ApiClient(configuration=configuration))


def env_changes_requests(host: str) -> bool:
    """Whether the environment adds anything to a request to ``host``: a proxy from
    HTTP(S)_PROXY / NO_PROXY, or ~/.netrc credentials (what aiohttp's trust_env reads)."""
    url = URL(host)
    try:
        get_env_proxy_for_url(url)
        return True
    except LookupError:
        pass
    if url.host is None:
        return False
    try:
        basicauth_from_netrc(netrc_from_env(), url.host)
        return True
    except LookupError:
        return False


def _without_idle_env_lookups(api: client.ApiClient) -> client.ApiClient:
    """kubernetes_asyncio's session trusts the environment, so aiohttp looks up ~/.netrc and
    the proxy variables in a worker thread on every request: about half a millisecond of
    CPU per request in the operator. Where the environment adds nothing for the API
    server (the answer is the same on every request), the lookups are turned off; where
    it does, the session stays as it was."""
    session = api.rest_client.pool_manager
    if session.trust_env and not env_changes_requests(api.configuration.host or ""):
        session._trust_env = False  # no public setter; read back by session.trust_env
    return api
