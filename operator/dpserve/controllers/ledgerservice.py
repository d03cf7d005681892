"""The ledger's addresses for serving pods: its Service's ClusterIPs, read from the API.

Serving pods have no DNS (``resources/ledgerhost.py``): each reconcile reads the ledger
Service and the Deployment pins its ClusterIPs in ``hostAliases``, so a Service recreated
with a new address rolls the pods. A missing or headless Service is surfaced on the model
(Ready False, ``LedgerServiceUnavailable``), never papered over with DNS.

:func:`follow` polls the Service (``get`` only: it works in namespaced mode, where the
operator may not list or watch its own namespace) and re-reconciles every PrivateModel when
the addresses change, so pods do not wait for an unrelated event to learn the new ones.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from dpserve.controllers.context import OperatorContext
from dpserve.controllers.kubeapi import PRIVATEMODELS, ApiError
from dpserve.resources.access import SERVICES
from dpserve.resources.ledgerhost import classify, service_ips

logger = logging.getLogger(__name__)
UNAVAILABLE = "LedgerServiceUnavailable"


@dataclass(frozen=True)
class LedgerAddress:
    ips: tuple[str, ...] = ()  # empty: nothing to pin (an address, or problem below)
    problem: str | None = None


async def ledger_address(ctx: OperatorContext) -> LedgerAddress:
    """The ClusterIPs to pin for the ledger URL's host; nothing for an address or an
    external host (settings allow that one only with DNS egress)."""
    host = classify(ctx.settings.ledger_url, ctx.settings.operator_namespace)
    if host.kind != "service" or host.service is None or host.namespace is None:
        return LedgerAddress()
    try:
        service = await ctx.api.get(SERVICES, host.namespace, host.service)
    except ApiError as exc:
        if exc.status != 403:
            raise  # transient: the reconcile is retried
        return LedgerAddress(problem=(
            f"the ledger Service {host.namespace}/{host.service} cannot be read ({exc}): the "
            "operator needs get on services in its namespace (the chart grants it)"))
    ips, problem = service_ips(service, host.service, host.namespace)
    return LedgerAddress(ips, problem)


async def _kick_all(ctx: OperatorContext) -> None:
    namespaces: list[str | None] = list(ctx.settings.watch_namespaces) or [None]
    for namespace in namespaces:
        for model in await ctx.api.list(PRIVATEMODELS, namespace):
            meta = model.get("metadata") or {}
            if meta.get("namespace") and meta.get("name"):
                ctx.kick_model(meta["namespace"], meta["name"])


async def follow(ctx: OperatorContext, period_s: float) -> None:
    """Re-reconcile every model when the ledger Service's addresses change."""
    last: LedgerAddress | None = None
    while True:
        try:
            current = await ledger_address(ctx)
            if last is not None and current != last:
                logger.info("ledger Service addresses changed (%s -> %s): re-reconciling "
                            "every PrivateModel", last.ips, current.ips)
                await _kick_all(ctx)
            last = current
        except ApiError as exc:
            logger.warning("ledger Service: %s (retrying in %.0f s)", exc, period_s)
        await asyncio.sleep(period_s)
