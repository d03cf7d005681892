"""A local kubelet: runs the containers of Deployments and Jobs as local processes.

It plays kubelet, the Deployment and Job controllers and kube-proxy for the embedded API,
so the operator, the ledger, the filter sidecar, the model server and the trainer all run
for real, with the command, args, env and ports the operator put in the manifests. What a
container runtime would isolate is mapped instead of isolated:

- each pod gets its own loopback address (127.0.<n>.<m>): containers of one pod share it, as
  they share localhost in a real pod, and the ports stay the ones in the manifest; the
  host's own services (the operator's ledger) keep their loopback address (``host_ports``);
- each volume is a directory (configMap and secret items written out, emptyDir, hostPath as
  is, a PVC as ``<pvc_root>/<claimName>``, ``subPath`` honoured); a container's mount paths
  (and its ``/tmp`` when nothing is mounted there) are rewritten to those directories in its
  args, env and the files of its configMap volumes, in one pass, on path boundaries;
- a projected ServiceAccount token is a random token registered with the emulator's
  TokenReview for the pod's ServiceAccount, pod name, pod uid and audience, so the ledger
  authenticates it for real; it is revoked when the pod goes;
- the image's environment (``IMAGE_ENV``, as the inference Dockerfile sets it) comes first,
  then the container's ``env`` with ``$(VAR)`` references expanded; ``resources.limits.cpu``
  becomes the BLAS/OpenMP thread count, as a CPU quota would bound it (torch otherwise starts
  one thread per host core, which on a shared machine slows everything down);
- the termination message file is a file per container; with ``FallbackToLogsOnError`` a
  failed container's log tail is used when the file is empty.

The pods are mirrored as Pod objects (phase, IP, conditions, container states with restart
counts, back-off and termination messages), Deployments and Jobs get the status the
controllers would write (rolling updates with ``maxUnavailable: 0``: old pods go once the
new ones are ready; ``Recreate``: old pods are stopped before new ones start; Jobs retry
failed pods up to ``backoffLimit``).

With :class:`.podman.PodmanRuntime` the same kubelet runs each container as a podman
container of the manifest's image instead (real mounts, securityContext and limits
enforced; still the host network, with the pod's own loopback address).

Modules: :mod:`.runner` (the sync loop, :class:`LocalKubelet`), :mod:`.mapping` (paths,
addresses, env), :mod:`.containers` (a container spec as a process; the runtime seam),
:mod:`.podman` (the podman runtime), :mod:`.volumes`,
:mod:`.pods` (process state and the Pod status), :mod:`.workloads` (Deployment and Job
status), :mod:`.serviceaccount` (tokens), :mod:`.thread` (:class:`KubeletThread`).
"""

from dpserve_testkit.localkube.kubelet.mapping import (
    AddressPool,
    Rewriter,
    cpu_threads,
    expand_references,
    template_hash,
)
from dpserve_testkit.localkube.kubelet.pods import ContainerRun, LocalPod
from dpserve_testkit.localkube.kubelet.runner import LocalKubelet
from dpserve_testkit.localkube.kubelet.serviceaccount import ServerTokens, TokenSink
from dpserve_testkit.localkube.kubelet.thread import KubeletThread

__all__ = [
    "AddressPool",
    "ContainerRun",
    "KubeletThread",
    "LocalKubelet",
    "LocalPod",
    "Rewriter",
    "ServerTokens",
    "TokenSink",
    "cpu_threads",
    "expand_references",
    "template_hash",
]
