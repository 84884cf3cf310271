"""`lorasweep dev build|up|down|status|env`: the local Kubernetes control plane for users and tests.

lorasweep dev up                 # etcd, kube-apiserver, controller manager, scheduler, node agent
eval "$(lorasweep dev env)"      # KUBECONFIG, and kubectl/helm on PATH
kubectl get nodes
lorasweep dev down               # stops everything, removes the state folder
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from lorasweep_operator.devcluster import binaries, cluster


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dev_action", required=True, metavar="ACTION")
    for name, summary in (
        ("build", "build or find the test-bed binaries (etcd, kube-*, kubectl, helm); slow only the first time"),
        ("up", "start the local cluster (returns once the node is Ready); does nothing if it already runs"),
        ("down", "stop every process of the local cluster and remove its state"),
        ("status", "show what runs: processes, ports, API server and node readiness"),
        ("env", 'print shell exports for the cluster: eval "$(lorasweep dev env)"'),
    ):
        sub = actions.add_parser(name, help=summary, description=summary)
        if name != "build":
            sub.add_argument(
                "--state",
                type=Path,
                default=None,
                help="state folder (default: $LORASWEEP_DEV_STATE or ~/.cache/lorasweep/dev-cluster)",
            )
        if name == "up":
            sub.add_argument(
                "--timeout", type=float, default=cluster.DEFAULT_TIMEOUT, help="seconds to wait for readiness"
            )


def run(args: argparse.Namespace) -> int:
    try:
        action = args.dev_action
        if action == "build":
            return _build()
        state_dir = (args.state or cluster.default_state_dir()).absolute()
        if action == "up":
            return _up(state_dir, args.timeout)
        if action == "down":
            stopped = cluster.down(state_dir)
            print(f"dev cluster stopped ({len(stopped)} processes) and {state_dir} removed")
            return 0
        if action == "status":
            return _status(state_dir)
        if action == "env":
            return _env(state_dir)
    except (binaries.BinariesUnavailable, cluster.ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    raise ValueError(f"unknown action {args.dev_action}")


def _build() -> int:
    started = time.monotonic()
    found = binaries.ensure()
    for name in binaries.ALL_BINARIES:
        print(f"{name:<24} {found.path(name)}")
    print(f"test-bed binaries ready in {time.monotonic() - started:.1f}s")
    return 0


def _up(state_dir: Path, timeout: float) -> int:
    started = time.monotonic()
    dev, created = cluster.up(state_dir, timeout=timeout)
    elapsed = time.monotonic() - started
    if created:
        print(f"dev cluster up in {elapsed:.1f}s: {dev.server} (Kubernetes {binaries.KUBERNETES_VERSION})")
    else:
        print(f"dev cluster already running: {dev.server}")
    print(f"export KUBECONFIG={shlex.quote(str(dev.kubeconfig))}")
    return 0


def _status(state_dir: Path) -> int:
    state = cluster.load_state(state_dir)
    if state is None:
        orphans = cluster.unrecorded_components(state_dir)
        if orphans:
            pids = " ".join(str(r.pid) for r in orphans)
            print(
                f"no dev cluster state in {state_dir}, but processes of one still run (pids {pids}); "
                "stop them with `lorasweep dev down`"
            )
        else:
            print(f"no dev cluster in {state_dir} (start one with `lorasweep dev up`)")
        return 1
    healthy = True
    ports = {
        "etcd": state.ports.get("etcd"),
        "kube-apiserver": state.ports.get("apiserver"),
        "kube-controller-manager": state.ports.get("controller_manager"),
        "kube-scheduler": state.ports.get("scheduler"),
        "node-agent": state.ports.get("node"),
    }
    for name in cluster.COMPONENTS:
        record = state.processes.get(name)
        if record is None:
            print(f"{name:<24} not started")
            healthy = False
            continue
        running = cluster.is_running(record)
        healthy &= running
        print(
            f"{name:<24} {'running' if running else 'NOT RUNNING'}  pid={record.pid} port={ports[name]} log={record.log}"
        )
    dev = cluster.DevCluster(state_dir, binaries.Binaries(binaries.locate()))
    answers = dev.answers()
    print(f"{'api server':<24} {dev.server if answers else 'not answering'}")
    node = dev.node() if answers else None
    ready = node is not None and cluster.node_ready(node)
    if node is not None:
        allocatable = node.get("status", {}).get("allocatable", {})
        summary = " ".join(f"{k}={v}" for k, v in sorted(allocatable.items()))
        print(f"{'node':<24} {node['metadata']['name']} {'Ready' if ready else 'NotReady'} {summary}")
    else:
        print(f"{'node':<24} not registered")
    print(f"{'kubeconfig':<24} {dev.kubeconfig}")
    return 0 if healthy and answers and ready else 1


def _env(state_dir: Path) -> int:
    kubeconfig = state_dir / cluster.KUBECONFIG
    if cluster.load_state(state_dir) is None:
        print(f"# no dev cluster in {state_dir}; run `lorasweep dev up` first", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={shlex.quote(str(kubeconfig))}")
    folders = sorted({str(folder) for folder in binaries.locate().values()})
    if folders:
        print(f'export PATH={shlex.quote(":".join(folders))}:"$PATH"')
    return 0
