"""`lorasweep dev build|up|down|status|env`: the local Kubernetes control plane for users and tests.

lorasweep dev up                 # etcd, kube-apiserver, controller manager, scheduler, node agent
eval "$(lorasweep dev env)"      # KUBECONFIG, and kubectl/helm on PATH
kubectl get nodes
lorasweep dev down               # stops everything, removes the state folder
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

LOG_LEVEL = logging.INFO  # a first build takes 15-40 minutes: its progress lines are logged at info


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
            sub.add_argument("--timeout", type=float, default=None, help="seconds to wait for readiness (default 180)")


def run(args: argparse.Namespace) -> int:
    # The work lives in `actions`, imported only when a dev command runs: the CLI builds every
    # subcommand's parser, and images that only run `lorasweep report` or `lorasweep operator`
    # do not ship the PKI's cryptography package.
    from lorasweep_operator.devcluster import actions

    return actions.run(args)
