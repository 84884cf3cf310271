"""pytest fixtures on the local control plane (`lorasweep dev up`): a real kube-apiserver, etcd, controller
manager, scheduler and the dev node agent.

- ``cluster`` (session): a `DevCluster` with ``.kubeconfig`` (admin), ``.kubectl(*args, check=True)``,
  ``.binaries`` and ``.api_client()``. It reuses a running dev cluster when ``KUBECONFIG`` names one
  (``eval "$(lorasweep dev env)"``) or when the default one (``lorasweep dev up``) answers; otherwise it
  starts its own in a folder of its own and stops it at the end of the session.
- ``api_client`` (session): the admin ``kubernetes.client.ApiClient``.
- ``namespace``: a fresh namespace per test, deleted afterwards. It enforces Pod Security Standards
  "restricted", so pods made in tests must meet them (as the project's pods must).
- ``serviceaccount_kubeconfig``: ``(namespace, serviceaccount) -> Path`` of a kubeconfig holding a token of
  that ServiceAccount (TokenRequest; the ServiceAccount is created if missing), for RBAC tests.

Pods run on node ``lorasweep-dev-node`` as local processes (see lorasweep_operator.devcluster.node_agent):
``command`` + ``args`` with the pod's env, PATH starting with this project's .venv/bin,
CUDA_VISIBLE_DEVICES="", LORASWEEP_TERMINATION_LOG read back as the termination message.

Every test that uses ``cluster`` (or ``s3_server``) is marked ``integration`` unless it is marked ``e2e``.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lorasweep_operator.devcluster import binaries, pki
from lorasweep_operator.devcluster import cluster as devcluster
from lorasweep_operator.devcluster.cluster import wait_for

__all__ = ["processes_running", "wait_for"]

SESSIONS = "test-clusters"


# tryfirst: the marks must be on before `-m` deselects, or `-m "not integration and not e2e"` keeps (and starts
# a control plane for) every test that has its mark only from here. get_closest_marker, not iter_markers: a
# generator is always true.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        needs = {"cluster", "s3_server"} & set(fixtures)
        if needs and not any(item.get_closest_marker(m) for m in ("integration", "e2e")):
            item.add_marker(pytest.mark.integration)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_sessions(root: Path) -> None:
    """Clusters of test sessions that were killed before their teardown: stop them, free their folders."""
    for folder in root.glob("*-*") if root.exists() else []:
        owner = folder.name.split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            with contextlib.suppress(devcluster.ClusterError):
                devcluster.down(folder)


def _reusable() -> devcluster.DevCluster | None:
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        # Only a dev cluster's own kubeconfig: tests must never run against some other cluster by accident.
        return devcluster.find(Path(kubeconfig))
    default = devcluster.default_state_dir() / devcluster.KUBECONFIG
    return devcluster.find(default) if default.exists() else None


@pytest.fixture(scope="session")
def cluster() -> Iterator[devcluster.DevCluster]:
    try:
        reused = _reusable()
        if reused is not None:
            yield reused
            return
        root = binaries.cache_root() / SESSIONS
        _clean_stale_sessions(root)
        state = root / f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        dev, _ = devcluster.up(state)
    except (binaries.BinariesUnavailable, devcluster.ClusterError) as e:
        pytest.fail(f"the local control plane is not available: {e}", pytrace=False)
    try:
        yield dev
    finally:
        devcluster.down(state)


@pytest.fixture(scope="session")
def api_client(cluster: devcluster.DevCluster) -> Any:
    return cluster.api_client()


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "test"
    return f"{base}-{uuid.uuid4().hex[:6]}"


def processes_running(text: str) -> list[int]:
    """Pids of live processes with ``text`` in their argv (to check that a pod's process really ended)."""
    return [
        pid
        for pid, argv in devcluster.process_argvs()
        if any(text in arg for arg in argv) and devcluster.start_ticks(pid) is not None and pid != os.getpid()
    ]


@pytest.fixture
def namespace(request: pytest.FixtureRequest, api_client: Any) -> Iterator[str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    name = _namespace_name(request.node.name)
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))

    def default_account() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    # Pods are refused until the controller manager has made the namespace's `default` ServiceAccount.
    wait_for(f"ServiceAccount default in {name}", default_account, timeout=60)
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def serviceaccount_kubeconfig(
    cluster: devcluster.DevCluster, api_client: Any, tmp_path: Path
) -> Callable[[str, str], Path]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)

    def make(namespace: str, serviceaccount: str) -> Path:
        try:
            core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=serviceaccount))
            )
        except ApiException as e:
            if e.status != 409:
                raise
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        )
        token = core.create_namespaced_service_account_token(serviceaccount, namespace, request).status.token
        path = tmp_path / f"{namespace}-{serviceaccount}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{serviceaccount}"
        return pki.write_token_kubeconfig(cluster.server, cluster.pki.ca_cert.read_bytes(), user, token, path)

    return make
