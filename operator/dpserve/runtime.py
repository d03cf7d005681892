"""The operator process: Kopf settings, startup and cleanup, ledger service, metrics, logging.

``dpserve run`` calls :func:`run`. Handlers live in :mod:`dpserve.controllers`; importing
them registers them with Kopf's default registry.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from prometheus_client import REGISTRY, start_http_server

from dpserve.settings import OperatorSettings
from dpserve.tls import CaBundle, RotatingServerCert

FINALIZER = "dpserve.io/finalizer"
ANNOTATION_PREFIX = "dpserve.io"
logger = logging.getLogger("dpserve.operator")


@dataclass(frozen=True)
class RunOptions:
    liveness_port: int = 8080
    ledger_port: int = 8443
    metrics_port: int = 9090
    bind_address: str = "0.0.0.0"
    standalone: bool = True
    peering: str | None = None
    priority: int = 0
    namespaces: tuple[str, ...] = ()  # empty: all namespaces


class Memo(kopf.Memo):  # type: ignore[misc]
    """Kopf's operator-wide memo: the options in, the context out (set at startup)."""


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """The project's own finalizer and annotation prefix, event posting, timeouts."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Kopf posts Events for handler log records at this level and above; the controllers post
    # their own Events for every transition, so only problems come from Kopf.
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 30.0
    settings.watching.server_timeout = 300.0
    settings.watching.client_timeout = 330.0


def ledger_tls(settings: OperatorSettings) -> tuple[RotatingServerCert | None, CaBundle | None]:
    """The ledger's server certificate (followed for rotation) and the CA for sidecars;
    (None, None) only when settings say plain HTTP (validated there)."""
    if settings.ledger_insecure:
        return None, None
    assert settings.ledger_tls_cert and settings.ledger_tls_key and settings.ledger_tls_ca
    return (RotatingServerCert(Path(settings.ledger_tls_cert), Path(settings.ledger_tls_key)),
            CaBundle(Path(settings.ledger_tls_ca)))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    from dpserve import kube
    from dpserve.controllers import budget as budget_ctl
    from dpserve.controllers import ledgerservice as ledger_service
    from dpserve.controllers import model as model_ctl
    from dpserve.controllers.context import OperatorContext
    from dpserve.controllers.kubeapi import KubeApi
    from dpserve.controllers.placement import ClusterView
    from dpserve.controllers.workqueue import WorkQueue
    from dpserve.ledger.accountant import default_accounting
    from dpserve.ledger.auth import KubeTokenReviewer
    from dpserve.ledger.service import LedgerService
    from dpserve.ledger.store import KubeStore
    from dpserve.metrics import operator_metrics

    configure_kopf(settings)
    options: RunOptions = memo.options
    op_settings: OperatorSettings = memo.settings
    # Peering tasks start after the startup handlers, so they see this.
    settings.peering.lifetime = max(1, round(op_settings.peering_lifetime_s))
    api = await kube.api_client()
    ledger_api = await kube.api_client()
    accounting = default_accounting()
    ledger = LedgerService(KubeStore(ledger_api), KubeTokenReviewer(ledger_api),
                           accounting=accounting)
    server_cert, ledger_ca = ledger_tls(op_settings)
    port = await ledger.start(options.bind_address, options.ledger_port,
                              server_cert.context if server_cert else None)
    logger.info("ledger service listening on %s:%d (%s)", options.bind_address, port,
                "TLS" if server_cert else "plain HTTP: DPSERVE_LEDGER_INSECURE")
    if server_cert is not None:
        memo.tls_follow = asyncio.create_task(server_cert.follow())
    if options.metrics_port:
        memo.metrics_server = start_http_server(options.metrics_port, options.bind_address,
                                                registry=REGISTRY)
    kube_api = KubeApi(api)
    ctx = OperatorContext(
        api=kube_api,
        ledger=ledger,
        accounting=accounting,
        settings=op_settings,
        metrics=operator_metrics(),
        cluster=ClusterView(kube_api, op_settings.cluster_cache_s),
        ledger_ca=ledger_ca,
    )
    ctx.models = WorkQueue(lambda key: model_ctl.queue_handler(ctx, key),
                           delay_s=op_settings.requeue_delay_s)
    # A changed attestation verdict re-reconciles its model (the Attested condition).
    ledger.attestation.on_change = ctx.kick_model
    ctx.budgets = WorkQueue(lambda key: budget_ctl.queue_handler(ctx, key),
                            delay_s=op_settings.requeue_delay_s, workers=2)
    ctx.models.start()
    ctx.budgets.start()
    # Serving pods pin the ledger Service's ClusterIPs (no DNS): a new address re-reconciles.
    memo.ledger_follow = asyncio.create_task(
        ledger_service.follow(ctx, max(1.0, op_settings.cluster_cache_s)))
    memo.ctx = ctx
    memo.ledger_api = ledger_api


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    for task in ("tls_follow", "ledger_follow"):
        follow = getattr(memo, task, None)
        if follow is not None:
            follow.cancel()
    ctx = getattr(memo, "ctx", None)
    if ctx is None:
        return
    for queue in (ctx.models, ctx.budgets):
        if queue is not None:
            await queue.stop()
    await ctx.ledger.stop()
    await ctx.api.close()
    await memo.ledger_api.close()
    server = getattr(memo, "metrics_server", None)
    if server is not None and isinstance(server, tuple):
        server[0].shutdown()


def configure_logging(log_format: str) -> None:
    kopf.configure(
        verbose=False,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="k8s" if log_format == "json" else None,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run(options: RunOptions, settings: OperatorSettings | None = None) -> None:
    """Run the operator until SIGTERM / SIGINT."""
    import dpserve.controllers.erasurerequest
    import dpserve.controllers.owned
    import dpserve.controllers.privacybudget
    import dpserve.controllers.privatemodel  # noqa: F401  (registers the handlers)

    settings = settings or OperatorSettings.from_env()
    namespaces = options.namespaces or settings.watch_namespaces
    configure_logging(settings.log_format)
    memo = Memo(options=options, settings=settings)
    liveness = (f"http://{options.bind_address}:{options.liveness_port}/healthz"
                if options.liveness_port else None)
    asyncio.run(kopf.operator(
        standalone=options.standalone and options.peering is None,
        peering_name=options.peering,
        priority=options.priority,
        liveness_endpoint=liveness,
        clusterwide=not namespaces,
        namespaces=namespaces,
        memo=memo,
    ))
