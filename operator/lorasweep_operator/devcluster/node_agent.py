"""The dev cluster's node: a small kubelet that runs pods' containers as local processes.

`lorasweep dev up` starts it as a daemon with the node's own identity (``system:node:<name>`` in
``system:nodes``), so the Node authorizer and NodeRestriction admission apply to it as to a kubelet.

What it does, like a kubelet:
- registers Node ``lorasweep-dev-node`` with cpu, memory, pods and ``nvidia.com/gpu`` capacity, and keeps
  it Ready (status heartbeats and a Lease in ``kube-node-lease``);
- watches the pods bound to it and runs them: init containers in order, then the containers, restarted
  according to ``restartPolicy``; reports phase, conditions, container states, exit codes, reasons and
  termination messages;
- on deletion, SIGTERMs each container's process group, SIGKILLs it after the grace period, reports the
  final status and deletes the pod with grace period 0;
- serves ``/containerLogs`` so that ``kubectl logs`` works.

How a container maps onto this machine (no images are pulled, there is no container runtime):
- ``command`` + ``args`` run as an argv (never through a shell) in the project's environment: PATH starts
  with the folder of the Python that runs the agent (the project's ``.venv/bin``), so a container command
  ``["lorasweep-trainer", "train"]`` runs this checkout's trainer. The image is recorded, not used. A
  container without ``command`` cannot run (its image's entrypoint is unknown): it fails with StartError.
- The environment is the pod's (env, envFrom, valueFrom resolved, ``$(VAR)`` expanded) over a minimal base
  (PATH, HOME, HOSTNAME, TMPDIR, LANG); nothing of the agent's own environment leaks in. Always set:
  ``CUDA_VISIBLE_DEVICES=""`` (CPU only, whatever ``nvidia.com/gpu`` the pod was given) and
  ``LORASWEEP_TERMINATION_LOG``, a file read back as the termination message (``terminationMessagePath``
  is not writable here).
- Each pod gets a working directory ``<state>/pods/<uid>/work`` (also HOME) and its own TMPDIR; volumes,
  ``workingDir``, securityContext users and resource limits are not applied. The pod IP is 127.0.0.1.
- A pod with a ServiceAccount token mounted (automount on) gets a kubeconfig holding a token bound to the
  pod (TokenRequest), named by ``KUBECONFIG``; kopf and the kubernetes client read it.
- A projected ``serviceAccountToken`` volume with an audience of its own (the progress token of trial pods) is
  written, bound to the pod, to a file in the pod's folder and renewed like the kubelet does; since volumes are
  not mounted, an env value naming the mounted file (``<mountPath>/<path>``) is rewritten to that file.
- Networking is the host's: every pod is 127.0.0.1 and shares its ports (two pods listening on one port
  collide), Service ClusterIPs and cluster DNS names do not resolve (point clients at 127.0.0.1:PORT).
- Not done: probes (a running container is Ready), ``kubectl exec``/``port-forward``, volumes, pod-level
  ``activeDeadlineSeconds``, running as another user (processes run as the agent's user).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime
import http.server
import json
import logging
import os
import platform
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasweep_operator.devcluster import pods as podlib
from lorasweep_operator.devcluster.binaries import KUBERNETES_VERSION
from lorasweep_operator.devcluster.cluster import ProcessRecord, read_tail, record_of, stop_processes
from lorasweep_operator.devcluster.pki import write_token_kubeconfig

log = logging.getLogger("lorasweep.node_agent")

DEFAULT_CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "100Gi", "nvidia.com/gpu": "4"}
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10
ENV_RETRY_SECONDS = 2.0
API_RETRY_SECONDS = 0.3
MAX_RESTART_BACKOFF = 30.0
# A token is renewed when this share of its lifetime has passed, as the kubelet does.
TOKEN_RENEW_FRACTION = 0.8
# The generated client would send a dict body as a JSON patch; the bodies here are strategic-merge patches.
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    record: ProcessRecord
    generation: int


@dataclass
class PodRun:
    """One pod on this node: its latest object, its containers' runs and their processes."""

    pod: dict[str, Any]
    folder: Path
    logs: Path
    init: list[podlib.ContainerRun]
    main: list[podlib.ContainerRun]
    start_time: str = field(default_factory=now_rfc3339)
    processes: dict[str, Process] = field(default_factory=dict)
    restart_at: dict[str, float] = field(default_factory=dict)
    kill_at: float | None = None
    deleting: bool = False
    reported: dict[str, Any] = field(default_factory=dict)
    token_renew_at: float = 0.0
    kubeconfig: Path | None = None
    token_files_renew_at: float = 0.0
    token_files: dict[str, Path] = field(default_factory=dict)  # volume name -> the token file written

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def key(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    @property
    def restart_policy(self) -> str:
        return str(self.pod.get("spec", {}).get("restartPolicy", "Always"))

    def spec_of(self, name: str) -> dict[str, Any]:
        spec = self.pod.get("spec", {})
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            if container["name"] == name:
                return dict(container)
        raise KeyError(name)

    def run_of(self, name: str) -> podlib.ContainerRun:
        return next(c for c in self.init + self.main if c.name == name)

    def log_path(self, name: str, restart: int) -> Path:
        return self.logs / name / f"{restart}.log"

    def termination_path(self, name: str) -> Path:
        return self.folder / f"{name}.termination-log"

    def exit_path(self, name: str) -> Path:
        return self.folder / f"{name}.exit"

    def pid_path(self, name: str) -> Path:
        return self.folder / f"{name}.pid"


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        from kubernetes import client, config

        self.node_name: str = args.node_name
        self.state = Path(args.state)
        self.port: int = args.port
        self.capacity = dict(DEFAULT_CAPACITY)
        self.api = config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        configuration = self.api.configuration
        self.server: str = configuration.host
        with open(configuration.ssl_ca_cert, "rb") as f:
            self.ca_pem = f.read()
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.runs: dict[str, PodRun] = {}
        self.stopping = threading.Event()
        self.venv_bin = str(Path(sys.executable).parent)
        self.args = args

    # --- API helpers -------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the API; a 404 returns None, other errors are logged and re-raised."""
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as e:
            if e.status == 404:
                return None
            log.warning("api call failed what=%s status=%s reason=%s", what, e.status, e.reason)
            raise

    def raw(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The API's JSON as a dict, the form the pure functions in `pods` take."""
        response = fn(*args, _preload_content=False, **kwargs)
        document: dict[str, Any] = json.loads(response.data)
        return document

    def _lookup(self, kind: str, namespace: str) -> podlib.Lookup:
        def lookup(name: str) -> dict[str, str] | None:
            if kind == "ConfigMap":
                cm = self._call("read configmap", self.core.read_namespaced_config_map, name, namespace)
                if cm is None:
                    return None
                data = dict(cm.data or {})
                data.update(
                    {k: base64.b64decode(v).decode(errors="replace") for k, v in (cm.binary_data or {}).items()}
                )
                return data
            secret = self._call("read secret", self.core.read_namespaced_secret, name, namespace)
            if secret is None:
                return None
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.data or {}).items()}

        return lookup

    # --- node ---------------------------------------------------------------------------------

    def register(self) -> None:
        """Create or update the Node, retrying until the API server answers and has bootstrapped RBAC."""
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "lorasweep-dev",
                },
            },
            "spec": {},
        }
        delay = 0.1
        while not self.stopping.is_set():
            try:
                from kubernetes import client
                from kubernetes.client.exceptions import ApiException

                try:
                    self.core.create_node(client.V1Node.model_validate(body))
                except ApiException as e:
                    if e.status != 409:
                        raise
                self.heartbeat()
                log.info("node registered node=%s", self.node_name)
                return
            except Exception as e:  # noqa: BLE001 - the API server is still starting; anything may fail
                log.debug("waiting for the API server error=%s", e)
                time.sleep(delay)
                delay = min(delay * 1.5, 1.0)

    def node_status(self) -> dict[str, Any]:
        now = now_rfc3339()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": "lorasweep dev node agent",
                    "lastHeartbeatTime": now,
                    # The patch keeps the first transition time only if the status did not change.
                    "lastTransitionTime": self.started_at,
                }
                for kind, status, reason in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": f"lorasweep dev node on {platform.system()}",
                "containerRuntimeVersion": "lorasweep-dev://0.1",
                "kubeletVersion": KUBERNETES_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    started_at = now_rfc3339()

    def heartbeat(self) -> None:
        self.core.patch_node_status(self.node_name, {"status": self.node_status()}, _content_type=STRATEGIC_MERGE)
        lease_body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now_micro(),
            },
        }
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self.coordination.patch_namespaced_lease(
                self.node_name, "kube-node-lease", {"spec": lease_body["spec"]}, _content_type=STRATEGIC_MERGE
            )
        except ApiException as e:
            if e.status != 404:
                raise
            node = self.raw(self.core.read_node, self.node_name)
            lease_body["metadata"]["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node["metadata"]["uid"]}
            ]
            self.coordination.create_namespaced_lease("kube-node-lease", client.V1Lease.model_validate(lease_body))

    def heartbeat_loop(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception as e:  # noqa: BLE001 - keep beating; the next try may work
                log.warning("heartbeat failed error=%s", e)

    # --- watching pods ------------------------------------------------------------------------

    def watch_loop(self) -> None:
        """List, then watch, the pods bound to this node; a full list after every break re-syncs."""
        from kubernetes import watch

        selector = f"spec.nodeName={self.node_name}"
        while not self.stopping.is_set():
            try:
                listing = self.raw(self.core.list_pod_for_all_namespaces, field_selector=selector)
                self.events.put(("sync", listing.get("items", [])))
                version = listing["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=version,
                    timeout_seconds=300,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    if self.stopping.is_set():
                        return
                    kind = event["type"]
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self.events.put((kind.lower(), event["raw_object"]))
            except Exception as e:  # noqa: BLE001 - a broken watch is re-listed
                if not self.stopping.is_set():
                    log.warning("pod watch broke, re-listing error=%s", e)
                    time.sleep(0.5)

    # --- main loop ----------------------------------------------------------------------------

    def run(self) -> None:
        self.register()
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.watch_loop, name="watch", daemon=True).start()
        serve_logs(self)
        first_sync = True
        while not self.stopping.is_set():
            try:
                kind, payload = self.events.get(timeout=0.25)
            except queue.Empty:
                kind, payload = "tick", None
            try:
                if kind == "sync":
                    self.sync(payload, adopt=first_sync)
                    first_sync = False
                elif kind in ("added", "modified"):
                    self.reconcile(payload)
                elif kind == "deleted":
                    self.forget(str(payload["metadata"]["uid"]))
                elif kind == "exit":
                    self.on_exit(*payload)
                self.tick()
            except Exception:
                log.exception("error handling event kind=%s", kind)
        self.shutdown()

    def sync(self, items: list[dict[str, Any]], adopt: bool) -> None:
        listed = {str(p["metadata"]["uid"]): p for p in items}
        for uid in list(self.runs):
            if uid not in listed:
                self.forget(uid)
        if adopt:
            self.clean_up_previous(listed)
        for pod in items:
            self.reconcile(pod)

    def clean_up_previous(self, listed: dict[str, dict[str, Any]]) -> None:
        """After a restart, take over from the agent before it from what it left in the pods' folders.

        A container that had exited left its final state (``<name>.exit``) and is restored from it. One that
        still runs cannot be adopted (it is not our child, so its exit code could never be known): it is
        stopped and reported as killed (exit 137), and the pod's restartPolicy decides what follows, as
        after any container failure. Folders of pods that no longer exist are removed.
        """
        pods_dir = self.state / "pods"
        for folder in pods_dir.glob("*") if pods_dir.exists() else []:
            records: dict[str, ProcessRecord] = {}
            for pid_file in folder.glob("*.pid"):
                with contextlib.suppress(ValueError, OSError):
                    records[pid_file.stem] = ProcessRecord.model_validate_json(pid_file.read_text())
                pid_file.unlink(missing_ok=True)
            stopped = set(stop_processes(list(records.values()), grace=5))
            pod = listed.get(folder.name)
            if pod is None:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            run = self.new_run(pod)
            self.runs[run.uid] = run
            finished = []
            for container in run.init + run.main:
                exit_file = run.exit_path(container.name)
                if exit_file.exists():
                    restored = podlib.ContainerRun(**json.loads(exit_file.read_text()))
                    container.__dict__.update(restored.__dict__)
                    finished.append(container)
                elif container.name in records and records[container.name].pid in stopped:
                    container.state, container.exit_code, container.reason = "terminated", 137, "Error"
                    container.message = "the dev node agent restarted and could not adopt this container's process"
                    container.started_at = container.finished_at = now_rfc3339()
                    finished.append(container)
            log.info("pod taken over after restart pod=%s finished=%s", run.key, [c.name for c in finished])
            for container in finished:
                self.after_exit(run, container)
            self.advance(run)
            self.report(run)

    def new_run(self, pod: dict[str, Any]) -> PodRun:
        uid = str(pod["metadata"]["uid"])
        spec = pod.get("spec", {})
        folder = self.state / "pods" / uid
        (folder / "work").mkdir(parents=True, exist_ok=True)
        (folder / "tmp").mkdir(exist_ok=True)
        logs = self.state / "logs" / f"{pod['metadata']['namespace']}_{pod['metadata']['name']}_{uid}"
        logs.mkdir(parents=True, exist_ok=True)

        def runs(containers: list[dict[str, Any]]) -> list[podlib.ContainerRun]:
            return [podlib.ContainerRun(name=c["name"], image=c.get("image", "")) for c in containers]

        return PodRun(pod, folder, logs, runs(spec.get("initContainers") or []), runs(spec.get("containers") or []))

    def reconcile(self, pod: dict[str, Any]) -> None:
        uid = str(pod["metadata"]["uid"])
        run = self.runs.get(uid)
        deleting = pod["metadata"].get("deletionTimestamp") is not None
        if run is None:
            phase = pod.get("status", {}).get("phase")
            if phase in ("Succeeded", "Failed") or deleting:
                # Finished before this agent saw it, or deleted before it started: nothing to run.
                if deleting:
                    self.delete_pod(pod)
                return
            run = self.new_run(pod)
            self.runs[uid] = run
            log.info("pod accepted pod=%s uid=%s", run.key, uid)
            self.advance(run)
        else:
            run.pod = pod
        if deleting and not run.deleting:
            self.terminate(run, pod["metadata"].get("deletionGracePeriodSeconds"))
        self.report(run)

    def forget(self, uid: str) -> None:
        """The pod object is gone: stop whatever still runs and drop the pod's files."""
        run = self.runs.pop(uid, None)
        if run is None:
            return
        stop_processes([p.record for p in run.processes.values()], grace=2)
        shutil.rmtree(run.folder, ignore_errors=True)
        log.info("pod removed pod=%s uid=%s", run.key, uid)

    # --- containers ---------------------------------------------------------------------------

    def base_env(self, run: PodRun) -> dict[str, str]:
        return {
            "PATH": f"{self.venv_bin}:{BASE_PATH}",
            "HOME": str(run.folder / "work"),
            "HOSTNAME": str(run.pod["metadata"]["name"]),
            "TMPDIR": str(run.folder / "tmp"),
            "LANG": "C.UTF-8",
        }

    def advance(self, run: PodRun) -> None:
        """Start whatever should run now: the next init container, or every container once init is done."""
        if run.deleting:
            return
        for container in run.init:
            if container.succeeded:
                continue
            if container.state == "waiting" and container.name not in run.restart_at:
                self.start(run, container)
            return
        for container in run.main:
            if container.state == "waiting" and container.name not in run.restart_at:
                self.start(run, container)

    def service_account_kubeconfig(self, run: PodRun) -> Path | None:
        """A kubeconfig with a token bound to the pod, when the pod has its ServiceAccount token mounted."""
        spec = run.pod.get("spec", {})
        projection = None
        for volume in spec.get("volumes") or []:
            for source in (volume.get("projected") or {}).get("sources") or []:
                if "serviceAccountToken" in source and not source["serviceAccountToken"].get("audience"):
                    projection = source["serviceAccountToken"]
        if projection is None:
            return None
        if run.kubeconfig is not None and time.monotonic() < run.token_renew_at:
            return run.kubeconfig
        token, renew_at = self.request_token(run, projection)
        run.token_renew_at = renew_at
        account = spec.get("serviceAccountName") or "default"
        namespace = run.pod["metadata"]["namespace"]
        path = run.folder / "kubeconfig"
        user = f"system:serviceaccount:{namespace}:{account}"
        write_token_kubeconfig(self.server, self.ca_pem, user, token, path)
        run.kubeconfig = path
        return path

    def token_files(self, run: PodRun) -> dict[str, Path]:
        """Projected tokens with their own audience, each written to ``<pod folder>/volumes/<volume>/<path>``."""
        if run.token_files and time.monotonic() < run.token_files_renew_at:
            return run.token_files
        for volume in run.pod.get("spec", {}).get("volumes") or []:
            for source in (volume.get("projected") or {}).get("sources") or []:
                projection = source.get("serviceAccountToken") or {}
                if not projection.get("audience"):
                    continue
                token, renew_at = self.request_token(run, projection)
                path = run.folder / "volumes" / volume["name"] / str(projection.get("path") or "token")
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(".partial")
                partial.write_text(token)
                partial.chmod(0o600)
                partial.replace(path)  # a reader never sees half a token
                run.token_files[volume["name"]] = path
                run.token_files_renew_at = renew_at
        return run.token_files

    @staticmethod
    def mounted_token_paths(spec: dict[str, Any], pod: dict[str, Any], files: dict[str, Path]) -> dict[str, str]:
        """``<mountPath>/<path>`` of each token file the container mounts -> where the file really is."""
        paths: dict[str, str] = {}
        projections = {
            volume["name"]: source["serviceAccountToken"]
            for volume in pod.get("spec", {}).get("volumes") or []
            for source in (volume.get("projected") or {}).get("sources") or []
            if (source.get("serviceAccountToken") or {}).get("audience")
        }
        for mount in spec.get("volumeMounts") or []:
            name = mount.get("name")
            if name in files and name in projections:
                inside = f"{str(mount['mountPath']).rstrip('/')}/{projections[name].get('path') or 'token'}"
                paths[inside] = str(files[name])
        return paths

    def request_token(self, run: PodRun, projection: dict[str, Any]) -> tuple[str, float]:
        """A token bound to the pod for the projection's audience, and when to renew it (monotonic)."""
        spec = run.pod.get("spec", {})
        audience = projection.get("audience")
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": int(projection.get("expirationSeconds") or 3607),
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": run.pod["metadata"]["name"],
                    "uid": run.uid,
                },
            },
        }
        account = spec.get("serviceAccountName") or "default"
        namespace = run.pod["metadata"]["namespace"]
        issued = time.time()
        from kubernetes import client

        request = client.AuthenticationV1TokenRequest.model_validate(body)
        response = self.raw(self.core.create_namespaced_service_account_token, account, namespace, request)
        expires = datetime.datetime.fromisoformat(response["status"]["expirationTimestamp"]).timestamp()
        renew_at = time.monotonic() + TOKEN_RENEW_FRACTION * max(expires - issued, 60)
        return str(response["status"]["token"]), renew_at

    def start(self, run: PodRun, container: podlib.ContainerRun) -> None:
        from kubernetes.client.exceptions import ApiException

        spec = run.spec_of(container.name)
        namespace = run.pod["metadata"]["namespace"]
        try:
            own = podlib.container_env(
                run.pod, spec, self._lookup("ConfigMap", namespace), self._lookup("Secret", namespace), self.capacity
            )
            kubeconfig = self.service_account_kubeconfig(run)
            mounted = self.mounted_token_paths(spec, run.pod, self.token_files(run))
            own = {name: mounted.get(value, value) for name, value in own.items()}
        except podlib.EnvError as e:
            container.waiting_reason, container.waiting_message = "CreateContainerConfigError", str(e)
            run.restart_at[container.name] = time.monotonic() + ENV_RETRY_SECONDS
            return
        except ApiException as e:
            # Typically the Node authorizer's graph has not yet linked a just-bound pod to its Secrets or
            # ServiceAccount (403 "no relationship found"); it catches up within moments.
            container.waiting_reason, container.waiting_message = "ContainerCreating", f"{e.status} {e.reason}"
            log.info("container config not readable yet, retrying pod=%s status=%s", run.key, e.status)
            run.restart_at[container.name] = time.monotonic() + API_RETRY_SECONDS
            return
        env = {**self.base_env(run), **own}
        termination = run.termination_path(container.name)
        termination.write_text("")
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["LORASWEEP_TERMINATION_LOG"] = str(termination)
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        log_path = run.log_path(container.name, container.restart_count)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        container.started_at = now_rfc3339()
        try:
            argv = podlib.container_argv(spec, env)
            executable = shutil.which(argv[0], path=env["PATH"]) if "/" not in argv[0] else argv[0]
            if executable is None or not os.access(executable, os.X_OK):
                raise podlib.StartError(f'exec: "{argv[0]}": executable file not found in $PATH')
            with open(log_path, "ab") as out:
                popen = subprocess.Popen(
                    [executable, *argv[1:]],
                    env=env,
                    cwd=run.folder / "work",
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except (podlib.StartError, OSError) as e:
            message = (
                str(e) if isinstance(e, podlib.StartError) else f'exec: "{spec.get("command", ["?"])[0]}": {e.strerror}'
            )
            log.info("container failed to start pod=%s container=%s message=%s", run.key, container.name, message)
            container.state, container.exit_code, container.reason = (
                "terminated",
                podlib.START_ERROR_EXIT_CODE,
                "StartError",
            )
            container.message, container.finished_at = message, now_rfc3339()
            with open(log_path, "a") as text_out:
                text_out.write(message + "\n")
            self.after_exit(run, container)
            return
        record = record_of(popen.pid, log_path)
        run.pid_path(container.name).write_text(record.model_dump_json())
        run.exit_path(container.name).unlink(missing_ok=True)
        run.processes[container.name] = Process(popen, record, container.restart_count)
        container.state = "running"
        log.info("container started pod=%s container=%s pid=%s", run.key, container.name, popen.pid)
        generation = container.restart_count

        def wait() -> None:
            code = popen.wait()
            self.events.put(("exit", (run.uid, container.name, generation, code)))

        threading.Thread(target=wait, name=f"wait-{popen.pid}", daemon=True).start()

    def on_exit(self, uid: str, name: str, generation: int, returncode: int) -> None:
        run = self.runs.get(uid)
        if run is None:
            return
        process = run.processes.get(name)
        if process is None or process.generation != generation:
            return
        del run.processes[name]
        run.pid_path(name).unlink(missing_ok=True)
        container = run.run_of(name)
        exit_code = podlib.exit_code_of(returncode)
        spec = run.spec_of(name)
        log_path = run.log_path(name, container.restart_count)
        try:
            file_text = run.termination_path(name).read_text(errors="replace")
        except FileNotFoundError:
            file_text = ""
        container.state = "terminated"
        container.exit_code = exit_code
        container.reason = "Completed" if exit_code == 0 else "Error"
        container.message = podlib.termination_message(
            file_text, read_tail(log_path, 16 * 1024), spec.get("terminationMessagePolicy"), exit_code
        )
        container.finished_at = now_rfc3339()
        log.info("container exited pod=%s container=%s exit_code=%s", run.key, name, exit_code)
        self.after_exit(run, container)

    def after_exit(self, run: PodRun, container: podlib.ContainerRun) -> None:
        # The final state outlives this agent: a restarted agent restores it instead of running the container again.
        run.exit_path(container.name).write_text(json.dumps(dataclasses.asdict(container)))
        policy = run.restart_policy
        restart = not run.deleting and (policy == "Always" or (policy == "OnFailure" and not container.succeeded))
        if any(c is container for c in run.init):
            restart = not run.deleting and policy != "Never" and not container.succeeded
        if restart:
            backoff = min(MAX_RESTART_BACKOFF, 1.0 * 2 ** min(container.restart_count, 5))
            run.restart_at[container.name] = time.monotonic() + backoff
        self.advance(run)
        self.report(run)

    def tick(self) -> None:
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.kill_at is not None and now >= run.kill_at and run.processes:
                log.info("grace period over, killing pod=%s", run.key)
                for process in run.processes.values():
                    _kill_group(process.record.pid, signal.SIGKILL)
                run.kill_at = None
            for name, when in list(run.restart_at.items()):
                if now >= when and not run.deleting:
                    del run.restart_at[name]
                    container = run.run_of(name)
                    if container.state == "terminated":
                        container.last_state = container.terminated_state()
                        container.restart_count += 1
                        container.state, container.waiting_reason, container.waiting_message = (
                            "waiting",
                            "ContainerCreating",
                            "",
                        )
                    self.advance(run)
                    self.report(run)
            if run.kubeconfig is not None and now >= run.token_renew_at and run.processes:
                try:
                    self.service_account_kubeconfig(run)
                except Exception as e:  # noqa: BLE001 - renewal is retried on the next tick
                    log.warning("token renewal failed pod=%s error=%s", run.key, e)
            if run.token_files and now >= run.token_files_renew_at and run.processes:
                try:
                    self.token_files(run)
                except Exception as e:  # noqa: BLE001 - renewal is retried on the next tick
                    log.warning("token file renewal failed pod=%s error=%s", run.key, e)
            if run.deleting and not run.processes:
                self.finish_deletion(run)

    # --- deletion -----------------------------------------------------------------------------

    def terminate(self, run: PodRun, grace: int | None) -> None:
        run.deleting = True
        run.restart_at.clear()
        grace_seconds = 30 if grace is None else int(grace)
        log.info("pod deleted, stopping pod=%s grace=%s", run.key, grace_seconds)
        for process in run.processes.values():
            _kill_group(process.record.pid, signal.SIGTERM if grace_seconds > 0 else signal.SIGKILL)
        run.kill_at = time.monotonic() + grace_seconds

    def finish_deletion(self, run: PodRun) -> None:
        self.report(run, stopped_for_deletion=True)
        self.delete_pod(run.pod)
        self.forget(run.uid)

    def delete_pod(self, pod: dict[str, Any]) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        metadata = pod["metadata"]
        body = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=metadata["uid"]))
        try:
            self.core.delete_namespaced_pod(metadata["name"], metadata["namespace"], body=body)
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("pod delete failed pod=%s/%s status=%s", metadata["namespace"], metadata["name"], e.status)

    # --- status -------------------------------------------------------------------------------

    def report(self, run: PodRun, stopped_for_deletion: bool = False) -> None:
        """Patch the pod's status when it changed (phase, conditions, container states)."""
        from kubernetes.client.exceptions import ApiException

        now = now_rfc3339()
        status = podlib.pod_status(run.pod, run.init, run.main, now, run.start_time, stopped_for_deletion)
        if _without_times(status) == _without_times(run.reported):
            return
        phase_now = run.pod.get("status", {}).get("phase")
        if phase_now in ("Succeeded", "Failed") and status["phase"] != phase_now:
            return  # the API server refuses to move a pod out of a terminal phase
        metadata = run.pod["metadata"]
        try:
            updated = self.raw(
                self.core.patch_namespaced_pod_status,
                metadata["name"],
                metadata["namespace"],
                {"status": status},
                _content_type=STRATEGIC_MERGE,
            )
        except ApiException as e:
            if e.status in (404, 409, 422):
                log.info("pod status not written pod=%s status=%s", run.key, e.status)
                return
            raise
        run.reported = status
        run.pod.setdefault("status", {})["phase"] = updated.get("status", {}).get("phase")
        run.pod["status"]["conditions"] = status["conditions"]

    def shutdown(self) -> None:
        log.info("stopping, ending pods' processes")
        stop_processes([p.record for r in self.runs.values() for p in r.processes.values()], grace=5)


def _without_times(status: dict[str, Any]) -> str:
    if not status:
        return ""
    copy = json.loads(json.dumps(status))
    for condition in copy.get("conditions", []):
        condition.pop("lastTransitionTime", None)
    return json.dumps(copy, sort_keys=True)


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# ---------------------------------------------------------------------------------------------
# kubectl logs: the API server calls GET /containerLogs/<namespace>/<pod>/<container> on the node.


def serve_logs(agent: Agent) -> None:
    args = agent.args
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=args.client_ca)
    context.load_cert_chain(args.serving_cert, args.serving_key)
    context.verify_mode = ssl.CERT_REQUIRED

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *a: Any) -> None:
            log.debug("log server " + format, *a)

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404, "only /containerLogs/<namespace>/<pod>/<container> is served")
                return
            _, namespace, name, container = parts
            query = urllib.parse.parse_qs(url.query)
            run = next(
                (r for r in list(agent.runs.values()) if r.key == f"{namespace}/{name}"),
                None,
            )
            if run is None or not any(c.name == container for c in run.init + run.main):
                self.send_error(404, f"container {container} of pod {namespace}/{name} is not on this node")
                return
            state = run.run_of(container)
            restart = state.restart_count - (1 if query.get("previous") == ["true"] else 0)
            path = run.log_path(container, max(restart, 0))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            data = path.read_bytes() if path.exists() else b""
            if "tailLines" in query:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-int(query["tailLines"][0]) :]) if int(query["tailLines"][0]) > 0 else b""
            if "limitBytes" in query:
                data = data[: int(query["limitBytes"][0])]
            self.wfile.write(data)
            if query.get("follow") != ["true"]:
                return
            with contextlib.suppress(OSError), open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                while True:
                    chunk = f.read(65536)
                    if chunk:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    elif container not in run.processes:
                        return
                    else:
                        time.sleep(0.2)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", agent.port), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="log-server", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="lorasweep dev node agent (a small kubelet running pods as processes)")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state", required=True, help="folder for pods' working directories and logs")
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--port", type=int, required=True, help="port of the /containerLogs endpoint")
    parser.add_argument("--serving-cert", required=True)
    parser.add_argument("--serving-key", required=True)
    parser.add_argument("--client-ca", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    Path(args.state).mkdir(parents=True, exist_ok=True)
    agent = Agent(args)

    def stop(signum: int, frame: Any) -> None:
        agent.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
