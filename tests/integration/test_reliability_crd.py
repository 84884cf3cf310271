"""The CRD on the real API server, for the reliability suite: the shared good and bad sweeps (tests/spec_cases.py)
judged as pydantic judges them, the objective frozen once trials have started, and a 10,000-trial status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import get_sweep, learning_rates, sweep_manifest

from lorasweep_operator.spec import GROUP, VERSION, LoraSweepStatus
from reliability_cases import finished_status
from spec_cases import BAD, GOOD, Case

pytestmark = [pytest.mark.usefixtures("crd"), pytest.mark.reliability]


def _dry_run(cluster: Any, namespace: str, case: Case) -> Any:
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoraSweep",
        "metadata": {"name": "case", "namespace": namespace},
        "spec": case.spec(),
    }
    return cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(manifest), check=False)


def test_the_api_server_judges_the_shared_cases_as_the_models_do(cluster: Any, namespace: str) -> None:
    wrong = []
    for case in GOOD:
        result = _dry_run(cluster, namespace, case)
        if result.returncode != 0:
            wrong.append(f"{case.id}: rejected: {result.stderr.strip()}")
    for case in BAD:
        result = _dry_run(cluster, namespace, case)
        if result.returncode == 0 or case.api_message not in result.stderr:
            wrong.append(
                f"{case.id}: expected {case.api_message!r}, got rc={result.returncode} {result.stderr.strip()}"
            )
    assert not wrong, "\n".join(wrong)


def _patch_status(cluster: Any, namespace: str, name: str, status: dict[str, Any], tmp_path: Path) -> Any:
    patch = tmp_path / "status-patch.json"
    patch.write_text(json.dumps([{"op": "add", "path": "/status", "value": status}]))
    return cluster.kubectl(
        "patch", "lsw", name, "-n", namespace, "--subresource=status", "--type=json", "--patch-file", str(patch)
    )  # fmt: skip


def test_the_objective_is_immutable_once_trials_have_started(cluster: Any, namespace: str, tmp_path: Path) -> None:
    manifest = sweep_manifest("scored", namespace, search=learning_rates(1e-3))
    assert cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest)).returncode == 0

    def set_objective(metric: str) -> Any:
        patch = json.dumps({"spec": {"objective": {"metric": metric}}})
        return cluster.kubectl("patch", "lsw", "scored", "-n", namespace, "--type=merge", "-p", patch, check=False)

    assert set_objective("val_macro_f1").returncode == 0  # nothing recorded yet: free to change
    _patch_status(cluster, namespace, "scored", {"phase": "Running", "startTime": "2025-01-01T00:00:00Z"}, tmp_path)
    refused = set_objective("val_loss")
    assert refused.returncode != 0
    assert "spec.objective is immutable once the sweep's trials have started" in refused.stderr, refused.stderr
    assert get_sweep(cluster, namespace, "scored")["spec"]["objective"]["metric"] == "val_macro_f1"
    ok = cluster.kubectl("patch", "lsw", "scored", "-n", namespace, "--type=merge", "-p", '{"spec":{"parallelism":2}}')
    assert ok.returncode == 0  # the rest of the spec stays editable, and status writes still pass the rule
    _patch_status(cluster, namespace, "scored", {"phase": "Succeeded", "startTime": "2025-01-01T00:00:00Z"}, tmp_path)


def test_a_10000_trial_status_is_accepted_and_read_back_whole(cluster: Any, namespace: str, tmp_path: Path) -> None:
    status, plan = finished_status(10_000)
    manifest = sweep_manifest("big", namespace, search=learning_rates(1e-3))
    assert cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest)).returncode == 0
    _patch_status(cluster, namespace, "big", status.to_patch(), tmp_path)
    stored = get_sweep(cluster, namespace, "big")["status"]
    reread = LoraSweepStatus.model_validate(stored)
    assert set(reread.outcomes) == {t.id for t in plan}
    assert reread.best == status.best and reread.counts.succeeded == 10_000
    assert reread.to_patch() == status.to_patch()  # nothing pruned by the structural schema
