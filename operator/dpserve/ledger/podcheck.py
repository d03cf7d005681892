"""Is the token's pod a serving pod of the model, asking from its own address?

A bound token names its pod (and the pod's uid), but not whose pod it is: anyone allowed to
create pods under the model's ServiceAccount could mint one for a pod of their own. Before a
grant the ledger therefore requires (issue 13, items 1 and 10):

- the pod exists in the model's namespace, is the pod the token was issued for (same uid: a
  token of an earlier pod of the same name does not carry over) and has not terminated;
- it carries the model's serving labels (``dpserve.io/model``, component ``inference``) and
  its controller chain leads to the model's Deployment (pod -> ReplicaSet -> Deployment, or
  pod -> Deployment where no ReplicaSet sits between, as in LocalKube), which the PrivateModel
  (same uid) controls;
- where the API gives the pod's IPs, the connection comes from one of them. A connection whose
  source is the ledger's own address on it comes from the ledger's own network namespace (the
  operator pod itself; in LocalKube the host that runs every pod) and names no pod, so it is
  not judged. Clusters that rewrite the source of pod traffic (masquerading every connection,
  some service meshes) turn the check off with ``DPSERVE_LEDGER_CHECK_SOURCE_ADDRESS=false``.

What a check cannot see: ownerReferences and labels are written by whoever creates the pod,
so a principal who may create pods under the model's ServiceAccount *and* read the
ReplicaSet's uid can still forge a pod that passes; RBAC on pod creation in the model's
namespace is the boundary (docs/ledger.md, threat model).

A verified pod is cached ``cache_s`` seconds by (namespace, name, uid); refusals are not
cached, so a pod that becomes valid (its object appears) is accepted on the next request.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dpserve.ledger.auth import Identity
from dpserve.ledger.store import NotFound, Obj, Store, Unavailable
from dpserve.ledger.wire import LeaseFailure
from dpserve.resources.labels import COMPONENT, INFERENCE, MODEL
from dpserve.resources.names import deployment_name

MAX_CACHED = 4096


@dataclass(frozen=True)
class Peer:
    """The addresses of the connection a request came on."""

    remote: str | None  # its source
    local: str | None  # the ledger's own address on it


@dataclass(frozen=True)
class ModelRef:
    namespace: str
    name: str
    uid: str | None  # the PrivateModel's metadata.uid (None: not known, not compared)


Fetch = Callable[[str, str], Awaitable[Obj]]  # (kind, name) -> object in the model's namespace


def controller_of(obj: Obj) -> dict[str, Any] | None:
    """The ownerReference with ``controller: true``, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return ref
    return None


def pod_problem(pod: Obj, identity: Identity, model: ModelRef) -> str | None:
    """What disqualifies ``pod`` by itself (uid, phase, labels); None when nothing does."""
    meta = pod.get("metadata") or {}
    name = meta.get("name")
    if identity.pod_uid is not None and meta.get("uid") != identity.pod_uid:
        return (f"pod: the token was issued for pod {name!r} uid {identity.pod_uid}, which no "
                f"longer exists (the pod of that name now has uid {meta.get('uid')})")
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return f"pod: {name!r} has terminated (phase {phase})"
    labels = meta.get("labels") or {}
    if labels.get(MODEL) != model.name or labels.get(COMPONENT) != INFERENCE:
        return (f"pod: {name!r} is not a serving pod of model {model.namespace}/{model.name} "
                f"(labels {MODEL}={labels.get(MODEL)!r}, {COMPONENT}={labels.get(COMPONENT)!r})")
    return None


async def chain_problem(pod: Obj, model: ModelRef, fetch: Fetch) -> str | None:
    """Whether the pod's controller chain reaches the model's Deployment, which the model
    controls; reads the owners with ``fetch`` (NotFound / Unavailable propagate)."""
    name = (pod.get("metadata") or {}).get("name")
    expected = deployment_name(model.name)
    ref = controller_of(pod)
    if ref is not None and ref.get("kind") == "ReplicaSet":
        replica_set = await _owner(fetch, ref)
        if replica_set is None:
            return f"pod: {name!r} is controlled by ReplicaSet {ref.get('name')!r}, which is gone"
        ref = controller_of(replica_set)
    if ref is None or ref.get("kind") != "Deployment" or ref.get("name") != expected:
        owner = "nothing" if ref is None else f"{ref.get('kind')} {ref.get('name')!r}"
        return (f"pod: {name!r} is controlled by {owner}, not by the model's Deployment "
                f"{expected!r}")
    deployment = await _owner(fetch, ref)
    if deployment is None:
        return f"pod: {name!r} belongs to Deployment {expected!r}, which is gone"
    controller = controller_of(deployment)
    if (controller is None or controller.get("kind") != "PrivateModel"
            or controller.get("name") != model.name
            or (model.uid is not None and controller.get("uid") != model.uid)):
        return (f"pod: Deployment {expected!r} is not controlled by PrivateModel "
                f"{model.namespace}/{model.name}")
    return None


async def _owner(fetch: Fetch, ref: dict[str, Any]) -> Obj | None:
    try:
        obj = await fetch(str(ref.get("kind")), str(ref.get("name")))
    except NotFound:
        return None
    if (obj.get("metadata") or {}).get("uid") != ref.get("uid"):
        return None  # a newer object of the same name: not the owner the reference names
    return obj


def pod_ips(pod: Obj) -> frozenset[str]:
    """The pod's addresses as the API reports them (``status.podIPs``, ``status.podIP``)."""
    status = pod.get("status") or {}
    found = [entry.get("ip") for entry in status.get("podIPs") or [] if isinstance(entry, dict)]
    found.append(status.get("podIP"))
    return frozenset(n for n in (_normal(ip) for ip in found if isinstance(ip, str)) if n)


def source_problem(peer: Peer | None, ips: Iterable[str], pod_name: str) -> str | None:
    """A request from an address that is not the pod's (None: from it, or not judged)."""
    addresses = frozenset(ips)
    if peer is None or peer.remote is None or not addresses:
        return None  # no connection address (in-process) or the API gives no pod IP yet
    remote = _normal(peer.remote)
    if remote is None or remote in addresses or remote == _normal(peer.local or ""):
        return None
    return (f"source: the request comes from {remote}, not from pod {pod_name!r} "
            f"({', '.join(sorted(addresses))}) the token is bound to")


def _normal(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class PodVerifier:
    """Checks a request's pod (:func:`pod_problem`, :func:`chain_problem`,
    :func:`source_problem`), caching verified pods; raises :class:`LeaseFailure`."""

    def __init__(self, store: Store, *, cache_s: float, check_source: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.cache_s = cache_s
        self.check_source = check_source
        self.clock = clock
        self._verified: dict[tuple[str, str, str | None], tuple[float, frozenset[str]]] = {}

    async def verify(self, identity: Identity, model: ModelRef, peer: Peer | None) -> None:
        pod_name = identity.pod_name
        if pod_name is None:  # authorize() refused unbound tokens before
            raise LeaseFailure("Forbidden", "Authorization: the token is not bound to a pod")
        key = (model.namespace, pod_name, identity.pod_uid)
        hit = self._verified.get(key)
        if hit is not None and hit[0] > self.clock():
            ips = hit[1]
        else:
            ips = await self._check(identity, model, pod_name)
            if self.cache_s > 0:
                if len(self._verified) >= MAX_CACHED:
                    self._verified.clear()
                self._verified[key] = (self.clock() + self.cache_s, ips)
        if self.check_source:
            problem = source_problem(peer, ips, pod_name)
            if problem is not None:
                raise LeaseFailure("Forbidden", problem)

    async def _check(self, identity: Identity, model: ModelRef, pod_name: str) -> frozenset[str]:
        async def fetch(kind: str, name: str) -> Obj:
            return await self.store.get_workload(model.namespace, kind, name)

        try:
            pod = await self.store.get_pod(model.namespace, pod_name)
            problem = pod_problem(pod, identity, model) or await chain_problem(pod, model, fetch)
        except NotFound as exc:
            raise LeaseFailure(
                "Forbidden", f"pod: {pod_name!r} does not exist in namespace {model.namespace}"
            ) from exc
        except Unavailable as exc:
            raise LeaseFailure("Unavailable", f"cannot read pod {pod_name!r}: {exc}") from exc
        if problem is not None:
            raise LeaseFailure("Forbidden", problem)
        return pod_ips(pod)
