"""Start, inspect and stop the dev cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the node agent, all on 127.0.0.1, all state in one folder.

The state folder (``$LORASWEEP_DEV_STATE``, default ``~/.cache/lorasweep/dev-cluster``) holds the
PKI, the kubeconfigs, etcd's data, every component's log and ``cluster.json``: ports, and the pid and
kernel start time of every process. The start time makes a recorded pid safe to signal: a pid that
the kernel gave to an unrelated process since is recognised and left alone. ``cluster.json`` is
written right after each process starts, so a run killed half way leaves a record that the next
``up`` or ``down`` uses to clean up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from lorasweep_operator.devcluster import binaries as binaries_module
from lorasweep_operator.devcluster import pki as pki_module

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_FILE = "cluster.json"
MARKER = ".lorasweep-dev-state"
KUBECONFIG = "kubeconfig"
# Components in start order; `down` stops them in reverse, the node agent first so it can stop its pods.
COMPONENTS = ("etcd", "kube-apiserver", "node-agent", "kube-controller-manager", "kube-scheduler")
PORT_NAMES = ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler", "node")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_TIMEOUT = 180.0
STOP_GRACE = 10.0


class ClusterError(RuntimeError):
    """The dev cluster could not be started or stopped; the message says what failed and where to look."""


class ProcessRecord(BaseModel):
    pid: int
    start_ticks: int
    log: str = ""


class ClusterState(BaseModel):
    """The contents of ``cluster.json``."""

    kubernetes_version: str = binaries_module.KUBERNETES_VERSION
    ports: dict[str, int] = Field(default_factory=dict)
    processes: dict[str, ProcessRecord] = Field(default_factory=dict)
    started_at: float = 0.0
    ready_at: float = 0.0


# ---------------------------------------------------------------------------------------------
# Processes


def start_ticks(pid: int) -> int | None:
    """The kernel start time of a live process (clock ticks since boot), None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        _reap(pid)
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    """Collect a child zombie (only possible when this process started it, as the test fixture does)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_running(record: ProcessRecord) -> bool:
    return start_ticks(record.pid) == record.start_ticks


def stop_processes(records: Sequence[ProcessRecord], grace: float = STOP_GRACE) -> list[int]:
    """SIGTERM each process group, SIGKILL what is left after ``grace`` seconds; returns the pids it signalled.

    Every process was started in a session of its own, so its group holds it and its helpers.
    """
    live = list({r.pid: r for r in records if is_running(r)}.values())
    for record in live:
        _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_running(r) for r in live):
        time.sleep(0.05)
    for record in live:
        if is_running(record):
            log.debug("process did not stop on SIGTERM, killing pid=%s", record.pid)
            _signal_group(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(is_running(r) for r in live):
        time.sleep(0.05)
    return [r.pid for r in live]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def record_of(pid: int, log_path: Path | str = "") -> ProcessRecord:
    ticks = start_ticks(pid)
    # A process that died within microseconds of starting: record it anyway so it is reported, never signalled.
    return ProcessRecord(pid=pid, start_ticks=ticks if ticks is not None else -1, log=str(log_path))


def spawn(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> ProcessRecord:
    """Start a detached process (own session, so `up` can return and `down` can stop its whole group)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    return record_of(process.pid, log_path)


def read_tail(path: Path | str, max_bytes: int) -> str:
    """The last ``max_bytes`` of a file ("" when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def log_tail(path: Path | str, lines: int = 30) -> str:
    text = read_tail(path, 64 * 1024)
    return "\n".join(text.splitlines()[-lines:]) if text else "(empty log)"


# ---------------------------------------------------------------------------------------------
# Ports


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nothing listens on now; all sockets are held open together so the ports are distinct."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def mentions_port_conflict(log_text: str) -> bool:
    return "address already in use" in log_text.lower()


# ---------------------------------------------------------------------------------------------
# State folder


def default_state_dir() -> Path:
    return Path(os.environ.get("LORASWEEP_DEV_STATE") or binaries_module.cache_root() / "dev-cluster")


def load_state(state_dir: Path) -> ClusterState | None:
    try:
        return ClusterState.model_validate_json((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("unreadable cluster state, treating it as stale path=%s", state_dir / STATE_FILE)
        return ClusterState()


def save_state(state_dir: Path, state: ClusterState) -> None:
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    tmp.replace(state_dir / STATE_FILE)


def pod_process_records(state_dir: Path) -> list[ProcessRecord]:
    """Processes the node agent started for pods (it records each one next to the pod's files)."""
    records = []
    for pid_file in (state_dir / "node" / "pods").glob("*/*.pid"):
        with contextlib.suppress(ValueError, OSError):
            records.append(ProcessRecord.model_validate_json(pid_file.read_text()))
    return records


def remove_state_dir(state_dir: Path) -> None:
    """Delete the state folder, but only one this module made: a mistyped LORASWEEP_DEV_STATE must not wipe a home."""
    if not state_dir.exists():
        return
    if not (state_dir / MARKER).exists() and any(state_dir.iterdir()):
        raise ClusterError(
            f"{state_dir} is not empty and is not a lorasweep dev cluster folder (no {MARKER} in it); "
            "refusing to delete it. Point LORASWEEP_DEV_STATE at an empty or dedicated folder."
        )
    shutil.rmtree(state_dir, ignore_errors=True)


@contextlib.contextmanager
def state_lock(state_dir: Path, timeout: float) -> Iterator[None]:
    """One `up`/`down` at a time per state folder; a second waits, then fails with a clear message."""
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = state_dir.parent / f".{state_dir.name}.lock"
    with open(lock_path, "a+") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.seek(0)
                    raise ClusterError(
                        f"another `lorasweep dev` command holds {lock_path} (pid {lock.read().strip() or '?'}); "
                        "wait for it to finish"
                    ) from None
                time.sleep(0.2)
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# HTTP probes (urllib, so that `up` does not pay for importing the kubernetes client)


def _tls_context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    # The controller manager's and scheduler's health ports serve a self-signed certificate made in memory;
    # only /healthz is read from them (ca=None), over loopback.
    context = ssl._create_unverified_context() if ca is None else ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def http_get(url: str, context: ssl.SSLContext, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError, ssl.SSLError) as e:
        return 0, str(e)


def node_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# ---------------------------------------------------------------------------------------------
# The cluster


@dataclass
class DevCluster:
    """A dev cluster's state folder, and what tests and commands do with it."""

    state_dir: Path
    binaries: binaries_module.Binaries

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / KUBECONFIG

    @property
    def pki(self) -> pki_module.Pki:
        return pki_module.Pki(self.state_dir / "pki")

    @property
    def state(self) -> ClusterState:
        state = load_state(self.state_dir)
        if state is None:
            raise ClusterError(f"no dev cluster state in {self.state_dir}; run `lorasweep dev up`")
        return state

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.state.ports['apiserver']}"

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binaries.path("kubectl")), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed (exit {result.returncode}): {result.stderr.strip()}")
        return result

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` with the admin identity."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def _admin_context(self) -> ssl.SSLContext:
        return _tls_context(self.pki.ca_cert, self.pki.cert("admin"), self.pki.key("admin"))

    def api_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        return http_get(self.server + path, self._admin_context(), timeout=timeout)

    def answers(self) -> bool:
        """The API server is ready and it is this folder's cluster (its certificate chains to our CA)."""
        try:
            return self.api_get("/readyz")[0] == 200
        except (ClusterError, OSError, ssl.SSLError, KeyError):
            return False

    def node(self) -> dict[str, Any] | None:
        code, body = self.api_get(f"/api/v1/nodes/{pki_module.NODE_NAME}")
        return json.loads(body) if code == 200 else None


def _component_argv(cluster: DevCluster, name: str, ports: dict[str, int]) -> list[str]:
    b = cluster.binaries
    pki = cluster.pki
    state = cluster.state_dir
    etcd_url = f"https://127.0.0.1:{ports['etcd']}"
    if name == "etcd":
        return [
            str(b.path("etcd")),
            "--name=dev",
            f"--data-dir={state / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
            f"--initial-cluster=dev=http://127.0.0.1:{ports['etcd_peer']}",
            "--listen-metrics-urls=",
            f"--cert-file={pki.cert('etcd-server')}",
            f"--key-file={pki.key('etcd-server')}",
            f"--trusted-ca-file={pki.ca_cert}",
            "--client-cert-auth=true",
            # A throwaway test store: durability across power loss is not worth the fsync latency.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]
    if name == "kube-apiserver":
        return [
            str(b.path("kube-apiserver")),
            f"--etcd-servers={etcd_url}",
            f"--etcd-cafile={pki.ca_cert}",
            f"--etcd-certfile={pki.cert('apiserver-etcd-client')}",
            f"--etcd-keyfile={pki.key('apiserver-etcd-client')}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={state / 'pki'}",
            f"--tls-cert-file={pki.cert('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=Node,RBAC",
            # PodSecurity is on by default; listed so the test bed visibly enforces namespaces' pod-security labels.
            "--enable-admission-plugins=NodeRestriction,PodSecurity",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={pki_module.SERVICE_CLUSTER_IP_RANGE}",
            f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={pki.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=false",
            "--profiling=false",
            "--v=0",
        ]
    if name in ("kube-controller-manager", "kube-scheduler"):
        stem = name.removeprefix("kube-")
        kubeconfig = str(state / f"{stem}.kubeconfig")
        common = [
            str(b.path(name)),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports[stem.replace('-', '_')]}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=0",
        ]
        if name == "kube-scheduler":
            return common
        return [
            *common,
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki.ca_cert}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={pki_module.SERVICE_CLUSTER_IP_RANGE}",
            # Each controller gets its ServiceAccount and token at start-up; at the default 20 requests/s that
            # alone spaces the controllers' starts 150 ms apart (seconds in all).
            "--kube-api-qps=200",
            "--kube-api-burst=400",
        ]
    if name == "node-agent":
        return [
            sys.executable,
            "-m",
            "lorasweep_operator.devcluster.node_agent",
            f"--kubeconfig={state / 'node.kubeconfig'}",
            f"--state={state / 'node'}",
            f"--node-name={pki_module.NODE_NAME}",
            f"--port={ports['node']}",
            f"--serving-cert={pki.cert('node-serving')}",
            f"--serving-key={pki.key('node-serving')}",
            f"--client-ca={pki.ca_cert}",
        ]
    raise ValueError(f"unknown component {name}")


class _Starter:
    """One attempt at starting the processes; raises ClusterError naming the component that failed."""

    def __init__(self, cluster: DevCluster, ports: dict[str, int], deadline: float) -> None:
        self.cluster = cluster
        self.ports = ports
        self.deadline = deadline
        self.state = ClusterState(ports=ports, started_at=time.time())

    def launch(self, name: str) -> None:
        log_path = self.cluster.state_dir / "logs" / f"{name}.log"
        env = None
        if name == "node-agent":
            # The agent's own environment is not passed on to pods (it builds theirs), but keep it minimal anyway.
            env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        record = spawn(_component_argv(self.cluster, name, self.ports), log_path, env=env, cwd=self.cluster.state_dir)
        self.state.processes[name] = record
        save_state(self.cluster.state_dir, self.state)
        log.debug("started component=%s pid=%s", name, record.pid)

    def wait(self, name: str, probe: Any, what: str) -> None:
        """Poll ``probe()`` until it is true; fail fast if a process died, with the tail of its log."""
        while True:
            for component, record in self.state.processes.items():
                if not is_running(record):
                    tail = log_tail(record.log)
                    raise ClusterError(
                        f"{component} exited while waiting for {what}; log {record.log}, last lines:\n{tail}",
                    )
            if probe():
                log.debug("ready what=%s seconds=%.2f", what, time.time() - self.state.started_at)
                return
            if time.monotonic() > self.deadline:
                waited = self.state.processes.get(name)
                log_path = waited.log if waited else "?"
                raise ClusterError(
                    f"timed out waiting for {what}; {name} log {log_path}, last lines:\n{log_tail(log_path)}"
                )
            time.sleep(0.1)


def _etcd_healthy(cluster: DevCluster, port: int) -> bool:
    pki = cluster.pki
    context = _tls_context(pki.ca_cert, pki.cert("apiserver-etcd-client"), pki.key("apiserver-etcd-client"))
    code, body = http_get(f"https://127.0.0.1:{port}/health", context)
    return code == 200 and '"true"' in body


def _healthz(port: int) -> bool:
    return http_get(f"https://127.0.0.1:{port}/healthz", _tls_context(None))[0] == 200


def _default_service_account(cluster: DevCluster) -> bool:
    return cluster.api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200


def _node_is_ready(cluster: DevCluster) -> bool:
    node = cluster.node()
    return node is not None and node_ready(node)


def _prepare(cluster: DevCluster) -> None:
    state_dir = cluster.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER).touch()
    pki_module.generate(state_dir / "pki")


def _write_kubeconfigs(cluster: DevCluster, ports: dict[str, int]) -> None:
    server = f"https://127.0.0.1:{ports['apiserver']}"
    pki = cluster.pki
    pki_module.write_client_kubeconfig(pki, "admin", server, cluster.kubeconfig)
    for stem in ("controller-manager", "scheduler", "node"):
        pki_module.write_client_kubeconfig(pki, stem, server, cluster.state_dir / f"{stem}.kubeconfig")


def _start_once(cluster: DevCluster, deadline: float) -> ClusterState:
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    _write_kubeconfigs(cluster, ports)
    starter = _Starter(cluster, ports, deadline)
    starter.launch("etcd")
    starter.wait("etcd", lambda: _etcd_healthy(cluster, ports["etcd"]), "etcd to report healthy")
    starter.launch("kube-apiserver")
    # The node agent retries until the API server answers; starting it now overlaps its Python start-up.
    starter.launch("node-agent")
    starter.wait("kube-apiserver", cluster.answers, "kube-apiserver /readyz")
    # The controller manager gives up if the API server is not healthy within seconds: start it only now.
    starter.launch("kube-controller-manager")
    starter.launch("kube-scheduler")
    starter.wait("kube-scheduler", lambda: _healthz(ports["scheduler"]), "kube-scheduler /healthz")
    starter.wait(
        "kube-controller-manager", lambda: _healthz(ports["controller_manager"]), "kube-controller-manager /healthz"
    )
    starter.wait("node-agent", lambda: _node_is_ready(cluster), f"node {pki_module.NODE_NAME} to be Ready")
    starter.wait(
        "kube-controller-manager",
        lambda: _default_service_account(cluster),
        "the `default` ServiceAccount (made by the controller manager)",
    )
    starter.state.ready_at = time.time()
    save_state(cluster.state_dir, starter.state)
    return starter.state


def process_argvs() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process this user can see."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")[:-1]
        except OSError:
            continue
        yield int(cmdline.parent.name), argv


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy and return that; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def unrecorded_components(state_dir: Path) -> list[ProcessRecord]:
    """Components of this folder's cluster that no record names (its cluster.json was deleted while it ran).

    Recognised by a flag only the components started for this folder carry, so no other process matches.
    """
    flags = {
        f"--data-dir={state_dir / 'etcd'}",
        f"--cert-dir={state_dir / 'pki'}",
        f"--kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
        f"--kubeconfig={state_dir / 'scheduler.kubeconfig'}",
        f"--kubeconfig={state_dir / 'node.kubeconfig'}",
    }
    found = [record_of(pid) for pid, argv in process_argvs() if flags.intersection(argv)]
    return [r for r in found if r.start_ticks >= 0]


def teardown(state_dir: Path, remove: bool = True) -> list[int]:
    """Stop every process of the folder's cluster (the node agent and its pods first); optionally delete the folder."""
    state = load_state(state_dir) or ClusterState()
    stopped: list[int] = []
    agent = state.processes.get("node-agent")
    if agent is not None:
        stopped += stop_processes([agent])
    # Pods the agent could not stop (it was killed, or stopped before them).
    stopped += stop_processes(pod_process_records(state_dir), grace=5)
    others = [state.processes[n] for n in reversed(COMPONENTS) if n in state.processes and n != "node-agent"]
    # A throwaway control plane: no point waiting long for graceful shutdown (the API server may take 60s).
    stopped += stop_processes(others + unrecorded_components(state_dir), grace=3)
    if remove:
        remove_state_dir(state_dir)
    return stopped


def up(
    state_dir: Path | None = None, timeout: float = DEFAULT_TIMEOUT, binaries: binaries_module.Binaries | None = None
) -> tuple[DevCluster, bool]:
    """Start the cluster, or find it running; returns it and whether this call started it."""
    state_dir = (state_dir or default_state_dir()).absolute()
    with state_lock(state_dir, timeout=timeout + 30):
        found = binaries or binaries_module.ensure()
        cluster = DevCluster(state_dir, found)
        state = load_state(state_dir)
        if state is not None:
            if state.processes and all(is_running(r) for r in state.processes.values()) and cluster.answers():
                log.info("dev cluster already running state=%s", state_dir)
                return cluster, False
            log.warning("stale dev cluster state from an earlier run, cleaning up state=%s", state_dir)
        # Also when the folder is gone: its cluster may still run if someone deleted the folder under it.
        teardown(state_dir)
        deadline = time.monotonic() + timeout
        attempts = 3
        for attempt in range(1, attempts + 1):
            _prepare(cluster)
            try:
                _start_once(cluster, deadline)
                return cluster, True
            except ClusterError as e:
                logs = "\n".join(log_tail(p, 200) for p in (state_dir / "logs").glob("*.log"))
                teardown(state_dir, remove=False)
                if attempt < attempts and mentions_port_conflict(logs) and time.monotonic() < deadline:
                    # Another program took a port between choosing it and binding it: start again on fresh ports.
                    log.warning("port taken during start-up, retrying on fresh ports attempt=%s", attempt)
                    remove_state_dir(state_dir)
                    continue
                raise ClusterError(
                    f"{e}\n(all logs kept in {state_dir / 'logs'}; `lorasweep dev down` removes them)"
                ) from e
    raise AssertionError("unreachable")


def down(state_dir: Path | None = None) -> list[int]:
    state_dir = (state_dir or default_state_dir()).absolute()
    with state_lock(state_dir, timeout=60):
        return teardown(state_dir)


def find(kubeconfig: Path) -> DevCluster | None:
    """The dev cluster whose admin kubeconfig this is, if it is one and it answers."""
    state_dir = kubeconfig.absolute().parent
    if kubeconfig.name != KUBECONFIG or load_state(state_dir) is None:
        return None
    cluster = DevCluster(state_dir, binaries_module.ensure())
    return cluster if cluster.answers() else None
