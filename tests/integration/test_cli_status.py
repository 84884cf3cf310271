"""`lorasweep status NAME` against the real API server: the CRD installed, a sweep with a status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lorasweep_operator.spec import BestTrial, LoraSweepStatus, TrainingConfig, TrialCounts, TrialStatus

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def lorasweep(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([BIN / "lorasweep", *args], env=env, capture_output=True, text=True, timeout=60)


def test_status_shows_phase_counts_best_and_table(cluster: Any, namespace: str) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "deploy" / "crd" / "lorasweeps.lorasweep.dev.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/lorasweeps.lorasweep.dev", "--timeout=60s")
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "deploy" / "samples" / "tiny-cpu-sweep.yaml"))
    fast, slow = TrainingConfig(learning_rate=5e-3), TrainingConfig(learning_rate=1e-3)
    status = LoraSweepStatus(
        phase="Running",
        counts=TrialCounts(total=3, running=1, succeeded=1, failed=1),
        best=BestTrial(
            trial="a1b2c3d4e5",
            job="tiny-cpu-a1b2c3d4e5",
            variant="learningRate=0.005",
            seed=42,
            params=fast,
            metric="val_accuracy",
            objective=0.75,
            metrics_uri="s3://lorasweep-demo/sweeps/x/trials/a1b2c3d4e5/metrics.json",
            adapter_uri="s3://lorasweep-demo/sweeps/x/trials/a1b2c3d4e5/adapter/",
            summary="0.7500 learningRate=0.005",
        ),
        trials=[
            TrialStatus(
                id="a1b2c3d4e5",
                job="tiny-cpu-a1b2c3d4e5",
                phase="Succeeded",
                variant="learningRate=0.005",
                seed=42,
                params=fast,
                objective=0.75,
                metrics={"test_accuracy": 0.625},
            ),
            TrialStatus(
                id="f6e5d4c3b2",
                job="tiny-cpu-f6e5d4c3b2",
                phase="Failed",
                variant="learningRate=0.001",
                seed=42,
                params=slow,
                reason="DatasetUnusable",
            ),
        ],
    )
    cluster.kubectl(
        "patch", "-n", namespace, "lorasweep", "tiny-cpu", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status.to_patch()}),
    )  # fmt: skip

    shown = lorasweep(cluster.kubeconfig, "status", "tiny-cpu", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"LoraSweep {namespace}/tiny-cpu: Running"
    assert lines[1] == "trials: 3 total, 1 running, 0 pending, 1 succeeded, 1 failed"
    assert lines[2].startswith("best: a1b2c3d4e5 val_accuracy=0.7500 (learningRate=0.005)")
    # Kept by the CRD's status schema and shown with how to use it.
    assert lines[3] == (
        "best adapter: s3://lorasweep-demo/sweeps/x/trials/a1b2c3d4e5/adapter/ "
        "(lorasweep-trainer predict --adapter URI --clips PATH)"
    )
    assert any(line.split()[:2] == ["a1b2c3d4e5", "Succeeded"] and "0.6250" in line for line in lines)
    assert any(line.split()[:2] == ["f6e5d4c3b2", "Failed"] and "DatasetUnusable" in line for line in lines)

    missing = lorasweep(cluster.kubeconfig, "status", "no-such-sweep", "-n", namespace)
    assert missing.returncode == 1
    assert f"no LoraSweep 'no-such-sweep' in namespace '{namespace}'" in missing.stderr
