"""LocalKubelet: keeps the processes of Deployments' and Jobs' pods in line with the API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from dpserve_testkit.localkube.kubelet.apiaccess import (
    KUBECONFIG_FILE,
    automounts,
    is_api_access,
    kubeconfig,
    with_api_access,
)
from dpserve_testkit.localkube.kubelet.containers import (
    ContainerError,
    ContainerRuntime,
    ProcessRuntime,
    unstartable,
)
from dpserve_testkit.localkube.kubelet.mapping import AddressPool, name_suffix, now, template_hash
from dpserve_testkit.localkube.kubelet.pods import (
    ContainerRun,
    LocalPod,
    pod_status,
    terminated_state,
)
from dpserve_testkit.localkube.kubelet.serviceaccount import TokenSink
from dpserve_testkit.localkube.kubelet.serviceproxy import ServiceProxy
from dpserve_testkit.localkube.kubelet.services import hosts_file
from dpserve_testkit.localkube.kubelet.volumes import (
    Volume,
    VolumeError,
    downward_files,
    host_path,
    key_files,
    source_ref,
)
from dpserve_testkit.localkube.kubelet.workloads import (
    deployment_status,
    job_finished,
    job_step,
    same_status,
    stamp_conditions,
)

log = logging.getLogger("dpserve.kubelet")
Obj = dict[str, Any]
PodKey = tuple[str, str]

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
# A container that ran this long before exiting starts its back-off afresh.
BACKOFF_RESET_S = 60.0
STOP_GRACE_MAX_S = 5.0
PROBE_TIMEOUT_S = 1.0


class LocalKubelet:
    """Polls the API for Deployments and Jobs and keeps matching local processes running.

    ``workdir`` holds one directory per pod (container logs, termination messages, volumes);
    ``pvc_root/<claim>`` backs each PersistentVolumeClaim; ``executable_dir`` is the "image"
    (where ``dpserve-server`` and the others are found; default: this Python's ``bin``);
    ``host_ports`` are ports on 127.0.0.1 of the host's own services (the operator's ledger):
    addresses naming them are not rewritten to the pod's address. ``runtime`` runs the
    containers (default: :class:`ProcessRuntime` over ``executable_dir``; or
    :class:`dpserve_testkit.localkube.kubelet.podman.PodmanRuntime` for the built images).
    """

    def __init__(
        self,
        api_url: str,
        workdir: Path,
        *,
        tokens: TokenSink,
        pvc_root: Path | None = None,
        namespaces: Sequence[str] | None = None,
        executable_dir: Path | None = None,
        host_ports: Iterable[int] = (),
        poll_interval: float = 0.25,
        extra_env: Mapping[str, str] | None = None,
        runtime: ContainerRuntime | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.workdir = Path(workdir)
        self.pvc_root = Path(pvc_root) if pvc_root is not None else self.workdir / "pvc"
        self.namespaces = list(namespaces or [])
        # Absolute: containers run in their own directories.
        self.executable_dir = (executable_dir or Path(sys.executable).parent).absolute()
        # The API server is a host service too: pods' kubeconfigs name it on 127.0.0.1.
        self.host_ports = set(host_ports) | {_port_of(self.api_url)}
        self.poll_interval = poll_interval
        self.extra_env = dict(extra_env or {})
        self.hosts_file = self.workdir / "hosts"
        self.runtime: ContainerRuntime = runtime or ProcessRuntime(
            self.executable_dir, frozenset(self.host_ports), self.extra_env,
            hosts_file=self.hosts_file)
        self._hosts_problems: set[str] = set()
        self._tokens = tokens
        self._pods: dict[PodKey, LocalPod] = {}
        # Every pod whose processes may still run, also while it is being removed.
        self._live: set[LocalPod] = set()
        self._addresses = AddressPool()
        self._proxy = ServiceProxy(self._addresses.take)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._stops: set[asyncio.Task[None]] = set()  # containers being killed after a probe
        self.syncs = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pvc_root.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession(
            headers={"Authorization": "Bearer localkube-kubelet",
                     "User-Agent": "localkube-kubelet"},
            timeout=aiohttp.ClientTimeout(total=10),
        )
        self._task = asyncio.create_task(self._loop(), name="local-kubelet")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop syncing and every process it started (pods stay as objects in the API).

        The current sync pass is let finish (cancelling it could orphan a process it is
        starting or stopping); it is cancelled only after ``timeout_s``.
        """
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        live = list(self._live)
        await asyncio.gather(*(self._kill(pod) for pod in live))
        for pod in live:
            self._revoke_tokens(pod)
        await self._proxy.close()
        self._addresses.close()
        if self._session is not None:
            await self._session.close()

    def pods(self, namespace: str | None = None, owner: str | None = None) -> list[LocalPod]:
        return [
            p for p in self._pods.values()
            if (namespace is None or p.namespace == namespace)
            and (owner is None or p.owner_name == owner)
            and not p.deleted
        ]

    def endpoints(self, namespace: str, deployment: str, port: int = 8080) -> list[str]:
        """Base URLs of the ready pods of a Deployment (what its Service would route to)."""
        return [
            f"http://{p.ip}:{port}"
            for p in self.pods(namespace, deployment)
            if p.owner_kind == "Deployment" and p.ready
        ]

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the kubelet alive through API hiccups
                log.exception("local kubelet sync failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_interval)

    # -- API access --------------------------------------------------------------------

    async def _get(self, path: str) -> Obj | None:
        assert self._session is not None
        async with self._session.get(self.api_url + path) as resp:
            if resp.status == 404:
                return None
            resp.raise_for_status()
            body: Obj = await resp.json()
            return body

    async def _send(self, method: str, path: str, body: Obj | None) -> tuple[int, Obj]:
        assert self._session is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self._session.request(
            method, self.api_url + path, json=body, headers=headers
        ) as resp:
            try:
                payload: Obj = await resp.json(content_type=None)
            except ValueError:
                payload = {}
            return resp.status, payload or {}

    async def _list(self, group_path: str, plural: str) -> list[Obj]:
        if self.namespaces:
            items: list[Obj] = []
            for ns in self.namespaces:
                got = await self._get(f"{group_path}/namespaces/{ns}/{plural}")
                items += (got or {}).get("items") or []
            return items
        got = await self._get(f"{group_path}/{plural}")
        return list((got or {}).get("items") or [])

    async def _write_status(self, obj: Obj, base: str, plural: str, status: Obj) -> None:
        current = obj.get("status") or {}
        if same_status(current, status):
            return
        if "conditions" in status:
            status = {**status, "conditions": stamp_conditions(current.get("conditions"),
                                                               status["conditions"])}
        meta = obj["metadata"]
        await self._send("PATCH", f"{base}/namespaces/{meta['namespace']}/{plural}/"
                                  f"{meta['name']}/status", {"status": status})

    # -- reconciliation ----------------------------------------------------------------

    async def sync_once(self) -> None:
        """One pass: container states first (so a Job's result is on its pod before the
        Job's status says so), then Deployments and Jobs, then pods nothing wants."""
        self.syncs += 1
        await asyncio.gather(*(self._observe(pod) for pod in list(self._pods.values())))
        wanted: set[PodKey] = set()
        for dep in await self._list("/apis/apps/v1", "deployments"):
            wanted |= await self._sync_deployment(dep)
        for job in await self._list("/apis/batch/v1", "jobs"):
            wanted |= await self._sync_job(job)
        gone = [pod for key, pod in self._pods.items() if key not in wanted]
        await asyncio.gather(*(self._remove(pod) for pod in gone))
        await self._sync_service_names()

    async def _sync_service_names(self) -> None:
        """The hosts file of Service names (kube-proxy and cluster DNS, see .services), and
        the ClusterIPs proxied for containers (.serviceproxy)."""
        services = await self._list("/api/v1", "services")
        await self._proxy.sync(services, self.pods())
        hosts = hosts_file(services, self.pods())
        for problem in set(hosts.problems) - self._hosts_problems:
            log.warning("%s", problem)
        self._hosts_problems = set(hosts.problems)
        with contextlib.suppress(FileNotFoundError):
            if self.hosts_file.read_text(encoding="utf-8") == hosts.text:
                return
        staging = self.hosts_file.with_name(self.hosts_file.name + ".new")
        staging.write_text(hosts.text, encoding="utf-8")
        staging.replace(self.hosts_file)  # readers see the old file or the new one

    def _owned(self, kind: str, uid: str) -> list[LocalPod]:
        return [p for p in self._pods.values()
                if p.owner_kind == kind and p.owner_uid == uid and not p.deleted]

    async def _sync_deployment(self, dep: Obj) -> set[PodKey]:
        meta, spec = dep["metadata"], dep.get("spec") or {}
        template = spec.get("template") or {}
        thash = template_hash(template)
        desired = int(spec.get("replicas", 1))
        mine = self._owned("Deployment", meta.get("uid", ""))
        current = [p for p in mine if p.template_hash == thash]
        old = [p for p in mine if p.template_hash != thash]
        if old and (spec.get("strategy") or {}).get("type") == "Recreate":
            # Recreate: every old pod is gone (processes stopped) before a new one starts,
            # so two generations never run at once (the chart's operator relies on it).
            await asyncio.gather(*(self._remove(p) for p in old))
            old = []
        if len(current) > desired:  # scale down: not-ready pods first, then the youngest
            current.sort(key=lambda p: (not p.ready, p.created_at))
            await asyncio.gather(*(self._remove(p) for p in current[desired:]))
            current = current[:desired]
        while len(current) < desired:
            current.append(await self._start_pod(dep, "Deployment", template, thash))
        # RollingUpdate, maxUnavailable 0: the old pods go once every new one is ready.
        if old and all(p.ready for p in current):
            await asyncio.gather(*(self._remove(p) for p in old))
            old = []
        status = deployment_status(meta.get("generation", 1), desired, current, old)
        await self._write_status(dep, "/apis/apps/v1", "deployments", status)
        return {(p.namespace, p.name) for p in current + old}

    async def _sync_job(self, job: Obj) -> set[PodKey]:
        meta, spec = job["metadata"], job.get("spec") or {}
        status = dict(job.get("status") or {})
        mine = self._owned("Job", meta.get("uid", ""))
        if job_finished(status):
            await asyncio.gather(*(self._kill(p) for p in mine if not p.finished))
            return {(p.namespace, p.name) for p in mine}
        step = job_step(status, spec, mine)
        if step.action == "start":
            template = spec.get("template") or {}
            mine.append(await self._start_pod(job, "Job", template, template_hash(template)))
        elif step.action == "stop":
            await asyncio.gather(*(self._kill(p) for p in mine if not p.finished))
        await self._write_status(job, "/apis/batch/v1", "jobs", step.status)
        return {(p.namespace, p.name) for p in mine}

    # -- pods --------------------------------------------------------------------------

    async def _start_pod(
        self, owner: Obj, owner_kind: str, template: Obj, thash: str
    ) -> LocalPod:
        ometa = owner["metadata"]
        ns, oname = ometa.get("namespace", "default"), ometa["name"]
        pod_spec = dict(template.get("spec") or {})
        account = pod_spec.get("serviceAccountName") or "default"
        sa_obj = None if "automountServiceAccountToken" in pod_spec else await self._get(
            f"/api/v1/namespaces/{ns}/serviceaccounts/{account}")
        if automounts(pod_spec, sa_obj):
            pod_spec = with_api_access(pod_spec)
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        if owner_kind == "Deployment":
            labels["pod-template-hash"] = thash
            name = f"{oname}-{thash}-{name_suffix()}"
        else:
            labels |= {"job-name": oname, "batch.kubernetes.io/job-name": oname,
                       "controller-uid": ometa.get("uid", "")}
            name = f"{oname}-{name_suffix()}"
        directory = self.workdir / ns / name
        directory.mkdir(parents=True, exist_ok=True)
        pod = LocalPod(
            name=name, namespace=ns, ip=self._addresses.take(), owner_kind=owner_kind,
            owner_name=oname, owner_uid=ometa.get("uid", ""), template_hash=thash,
            labels=labels,
            annotations=dict((template.get("metadata") or {}).get("annotations") or {}),
            directory=directory,
            restart_policy=pod_spec.get("restartPolicy",
                                        "Always" if owner_kind == "Deployment" else "Never"),
            service_account=pod_spec.get("serviceAccountName") or "default",
            grace_s=min(float(pod_spec.get("terminationGracePeriodSeconds", 30)),
                        STOP_GRACE_MAX_S),
            spec=pod_spec,
        )
        if self.runtime.follows_host_aliases:
            pod.host_aliases = [(self._proxy.address(str(alias.get("ip"))),
                                 [str(n) for n in alias.get("hostnames") or []])
                                for alias in pod_spec.get("hostAliases") or []]
        self._pods[(ns, name)] = pod
        self._live.add(pod)
        await self._create_pod_object(pod, owner_kind)
        volumes: dict[str, Volume] = {}
        problem: ContainerError | None = None
        try:
            volumes = await self._materialise_volumes(pod)
        except VolumeError as exc:
            problem = ContainerError("CreateContainerConfigError", str(exc))
        for container in pod_spec.get("containers") or []:
            try:
                if problem is not None:
                    raise problem
                pod.containers.append(self.runtime.prepare(pod, container, volumes))
            except ContainerError as exc:
                log.warning("pod %s/%s container %s: %s: %s", ns, name,
                            container.get("name", "?"), exc.reason, exc)
                pod.containers.append(unstartable(pod, container, exc.reason, str(exc)))
        for run in pod.containers:
            if run.waiting is None:
                await self._spawn(pod, run)
        await self._publish(pod)
        log.info("started pod %s/%s at %s (%s %s)", ns, name, pod.ip, owner_kind, oname)
        return pod

    async def _create_pod_object(self, pod: LocalPod, owner_kind: str) -> None:
        api_version = "apps/v1" if owner_kind == "Deployment" else "batch/v1"
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name, "namespace": pod.namespace, "labels": pod.labels,
                "annotations": pod.annotations,
                "ownerReferences": [{"apiVersion": api_version, "kind": owner_kind,
                                     "name": pod.owner_name, "uid": pod.owner_uid,
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {**pod.spec, "nodeName": "localkube"},
        }
        code, created = await self._send("POST", f"/api/v1/namespaces/{pod.namespace}/pods",
                                         body)
        if code in (200, 201):
            pod.uid = str((created.get("metadata") or {}).get("uid", ""))
        else:
            log.warning("could not create pod object %s/%s: %s %s", pod.namespace, pod.name,
                        code, created.get("message"))

    async def _materialise_volumes(self, pod: LocalPod) -> dict[str, Volume]:
        out: dict[str, Volume] = {}
        for vol in pod.spec.get("volumes") or []:
            name = vol["name"]
            base = pod.directory / "volumes" / name
            if "hostPath" in vol:
                out[name] = host_path(name, vol["hostPath"])
            elif "persistentVolumeClaim" in vol:
                claim = self.pvc_root / vol["persistentVolumeClaim"]["claimName"]
                claim.mkdir(parents=True, exist_ok=True)
                out[name] = Volume(claim, owned=True)
            elif "emptyDir" in vol:
                base.mkdir(parents=True, exist_ok=True)
                out[name] = Volume(base, owned=True)
            elif "configMap" in vol or "secret" in vol:
                out[name] = Volume(base, await self._key_files(pod, vol), per_container=True)
            elif "projected" in vol:
                files: dict[str, str] = {}
                for source in vol["projected"].get("sources") or []:
                    if "serviceAccountToken" in source:
                        sat = source["serviceAccountToken"]
                        token = self._issue_token(pod, sat.get("audience"))
                        files[sat["path"]] = token
                        if is_api_access(name) and not sat.get("audience"):
                            files[KUBECONFIG_FILE] = kubeconfig(
                                self.api_url, token, pod.namespace, pod.service_account)
                    elif "downwardAPI" in source:
                        files |= downward_files(pod, source["downwardAPI"], name)
                    elif "configMap" in source or "secret" in source:
                        files |= await self._key_files(pod, source)
                    else:
                        raise VolumeError(f"volume {name}: projected source {sorted(source)} "
                                          "is not supported by the local kubelet")
                out[name] = Volume(base, files, per_container=True)
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise VolumeError(f"volume {name}: {', '.join(kinds)} volumes are not supported "
                                  "by the local kubelet (use pvc:// or file:// artifacts)")
        return out

    async def _key_files(self, pod: LocalPod, source: Obj) -> dict[str, str]:
        plural, name, ref = source_ref(source)
        obj = await self._get(f"/api/v1/namespaces/{pod.namespace}/{plural}/{name}")
        return key_files(obj, plural, name, ref)

    def _issue_token(self, pod: LocalPod, audience: str | None) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens.register(token, namespace=pod.namespace,
                              service_account=pod.service_account, pod_name=pod.name,
                              pod_uid=pod.uid or None,
                              audiences=(audience,) if audience else ())
        pod.tokens.append(token)
        return token

    def _revoke_tokens(self, pod: LocalPod) -> None:
        for token in pod.tokens:
            with contextlib.suppress(Exception):
                self._tokens.revoke(token)
        pod.tokens.clear()

    async def _spawn(self, pod: LocalPod, run: ContainerRun) -> None:
        run.termination_path.write_bytes(b"")
        with run.log_path.open("ab") as log_file:
            try:
                run.process = await asyncio.create_subprocess_exec(
                    *run.argv, env=run.env, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL, cwd=str(pod.directory),
                    start_new_session=True,  # its own process group: killed as a whole
                )
            except OSError as exc:
                run.process = None
                run.waiting = ("RunContainerError", f"cannot start {run.argv[0]}: {exc}")
                return
        run.waiting = None
        run.started_at = now()
        run.started_mono = time.monotonic()
        run.exit_code = None
        run.finished_at = None
        run.restart_at = None
        run.next_probe = 0.0
        if run.probes is not None:
            run.probes.reset(time.monotonic())
        # Without a readiness probe a container is ready once started (its startup probe).
        run.ready = run.readiness is None and (run.probes is None or run.probes.started)

    async def _observe(self, pod: LocalPod) -> None:
        """Exits, restarts after back-off, startup/liveness probes (a container that fails
        them is killed, :mod:`.probes`), readiness probes; publish what changed."""
        if pod.deleted:
            return
        clock = time.monotonic()
        for run in pod.containers:
            proc = run.process
            if proc is not None and proc.returncode is not None and run.exit_code is None:
                run.exit_code = proc.returncode
                run.finished_at = now()
                run.ready = False
                if pod.restart_policy == "Always" or (
                        pod.restart_policy == "OnFailure" and proc.returncode != 0):
                    if clock - run.started_mono > BACKOFF_RESET_S:
                        run.restarts = 0
                    delay = min(BACKOFF_START_S * 2 ** run.restarts, BACKOFF_MAX_S)
                    run.restart_at = clock + delay
                    log.info("pod %s/%s container %s exited with %s; restart in %.1fs",
                             pod.namespace, pod.name, run.name, proc.returncode, delay)
            if run.restart_at is not None and clock >= run.restart_at:
                run.last_terminated = terminated_state(run)
                run.restarts += 1
                await self._spawn(pod, run)
        due = [(run, spec) for run in pod.containers if run.running and run.probes is not None
               and (spec := run.probes.due(clock)) is not None]
        checked = await asyncio.gather(*(
            self._probe(pod, run, spec, run.probes.timeout_s())  # type: ignore[union-attr]
            for run, spec in due))
        for (run, _), ok in zip(due, checked, strict=True):
            assert run.probes is not None
            why = run.probes.record(ok, clock)
            if why is not None:
                self._kill_container(pod, run, why)
            elif run.readiness is None:
                run.ready = run.probes.started
        probes = [run for run in pod.containers
                  if run.running and run.readiness is not None and clock >= run.next_probe
                  and (run.probes is None or run.probes.started)]
        results = await asyncio.gather(*(
            self._probe(pod, run, run.readiness or {}, PROBE_TIMEOUT_S) for run in probes))
        for run, ok in zip(probes, results, strict=True):
            run.ready = ok
            period = float((run.readiness or {}).get("periodSeconds", 10))
            # Fast until ready (a startup probe's job), then at the stated period capped at
            # 2 s, so a model that stops answering turns unready quickly.
            run.next_probe = clock + (min(period, 2.0) if ok else 0.25)
        await self._publish(pod)

    def _kill_container(self, pod: LocalPod, run: ContainerRun, why: str) -> None:
        """Stop one container as a kubelet does after a failed probe (SIGTERM, SIGKILL after
        the grace period); its exit is then handled by the restart policy."""
        log.warning("pod %s/%s container %s: %s; killing it", pod.namespace, pod.name,
                    run.name, why)
        process = run.process
        if process is None or process.returncode is not None:
            return
        run.ready = False

        async def stop() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=pod.grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

        task = asyncio.get_running_loop().create_task(stop())
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    async def _probe(self, pod: LocalPod, run: ContainerRun, spec: Obj,
                     timeout_s: float) -> bool:
        http = spec.get("httpGet")
        if http is None:
            return True  # exec / tcpSocket probes: running counts as ready locally
        port = http.get("port")
        if isinstance(port, str):
            port = run.ports.get(port)
            if port is None:
                return False
        assert self._session is not None
        # HTTPS as a kubelet probes it: the certificate is not verified.
        scheme = str(http.get("scheme") or "HTTP").lower()
        try:
            async with self._session.get(
                f"{scheme}://{pod.ip}:{port}{http.get('path', '/')}", ssl=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                await resp.read()
                return 200 <= resp.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _remove(self, pod: LocalPod) -> None:
        """Stop the pod's processes and delete its object."""
        self._pods.pop((pod.namespace, pod.name), None)
        await self._kill(pod)
        self._revoke_tokens(pod)
        pod.deleted = True
        if self._session is not None and not self._session.closed:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await self._send("DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
                                 None)
        log.info("removed pod %s/%s", pod.namespace, pod.name)

    async def _kill(self, pod: LocalPod) -> None:
        """SIGTERM each container's process group, SIGKILL after the grace period."""
        for run in pod.containers:
            run.restart_at = None
        runs = [run for run in pod.containers if run.running]
        for run in runs:
            assert run.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGTERM)

        async def reap(run: ContainerRun) -> None:
            assert run.process is not None
            try:
                await asyncio.wait_for(run.process.wait(), timeout=pod.grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.process.pid, signal.SIGKILL)
                await run.process.wait()
            # Children that outlived their leader still belong to the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGKILL)
            await self.runtime.release(run)

        await asyncio.gather(*(reap(run) for run in runs))
        self._live.discard(pod)

    async def _publish(self, pod: LocalPod) -> None:
        """Write the pod's status when it changed."""
        if pod.deleted:
            return
        status = pod_status(pod)
        if status == pod.published:
            return
        code, _ = await self._send(
            "PATCH", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
            {"status": status})
        if code < 300:
            pod.published = status


def _port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)
