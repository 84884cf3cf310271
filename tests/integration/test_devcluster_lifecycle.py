"""`lorasweep dev up/down` on the real binaries, through the faults a developer's machine sees: `up` twice,
a node agent killed mid-pod and restarted, a run killed with SIGKILL, and `down` leaving nothing behind."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from fixtures_cluster import processes_running, wait_for
from lorasweep_operator.devcluster import binaries
from lorasweep_operator.devcluster import cluster as devcluster

pytestmark = pytest.mark.integration


def pod_json(dev: devcluster.DevCluster, name: str) -> dict[str, object]:
    result = json.loads(dev.kubectl("get", "pod", name, "-o", "json").stdout)
    assert isinstance(result, dict)
    return result


def test_up_survives_restarts_and_kills_and_down_leaves_nothing(tmp_path: Path) -> None:
    try:
        found = binaries.ensure()
    except binaries.BinariesUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    state_dir = tmp_path / "dev-cluster"
    try:
        dev, created = devcluster.up(state_dir, binaries=found)
        assert created
        again, created_again = devcluster.up(state_dir, binaries=found)
        assert not created_again and again.server == dev.server

        # A pod runs; the node agent is killed and restarted: the orphaned process is stopped, the pod
        # reported failed (its exit code cannot be known), so a Job would retry it.
        marker = f"lorasweep-lifecycle-{os.getpid()}"
        program = f"import time; time.sleep(600)  # {marker}"
        dev.kubectl("run", "long", "--image=x", "--restart=Never", "--command", "--", "python", "-c", program)
        wait_for("the pod to run", lambda: pod_json(dev, "long")["status"].get("phase") == "Running")  # type: ignore[attr-defined]
        assert processes_running(marker)
        agent = dev.state.processes["node-agent"]
        argv = Path(f"/proc/{agent.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        os.kill(agent.pid, signal.SIGKILL)
        wait_for("the agent to die", lambda: not devcluster.is_running(agent), timeout=10)
        restarted = devcluster.spawn(argv, Path(agent.log), cwd=state_dir)
        state = dev.state
        state.processes["node-agent"] = restarted
        devcluster.save_state(state_dir, state)

        def failed() -> dict[str, object] | None:
            pod = pod_json(dev, "long")
            return pod if pod["status"].get("phase") == "Failed" else None  # type: ignore[attr-defined]

        pod = wait_for("the orphaned pod to be reported failed", failed, timeout=60)
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]  # type: ignore[index]
        assert terminated["exitCode"] == 137 and "restarted" in terminated["message"]
        assert not processes_running(marker)

        # A run killed hard (the API server and etcd gone, the rest still up): `up` sees stale state,
        # stops what is left and starts a fresh cluster.
        old = dev.state.processes
        for name in ("etcd", "kube-apiserver"):
            os.kill(old[name].pid, signal.SIGKILL)
        fresh, created = devcluster.up(state_dir, binaries=found)
        assert created
        assert not any(devcluster.is_running(record) for record in old.values())
        assert json.loads(fresh.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"] == "v1.34.4"
        assert devcluster.node_ready(
            json.loads(fresh.kubectl("get", "node", "lorasweep-dev-node", "-o", "json").stdout)
        )
    finally:
        devcluster.down(state_dir)
    time.sleep(0.2)
    assert not state_dir.exists()
    assert processes_running(str(state_dir)) == []
