"""What `lorasweep dev ACTION` does; `commands` holds its command-line surface."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from lorasweep_operator.devcluster import binaries, cluster


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


def _up(state_dir: Path, timeout: float | None) -> int:
    started = time.monotonic()
    dev, created = cluster.up(state_dir, timeout=timeout or cluster.DEFAULT_TIMEOUT)
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
