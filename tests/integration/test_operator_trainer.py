"""The whole loop with the real trainer: the operator's Jobs run `lorasweep-trainer train` (a tiny V-JEPA2-shaped
model on CPU) on synthetic NTU-like clips in the S3-protocol server, with credentials from the sweep's Secret,
the sweep's status holds what the trainer reported through its termination message, and once the sweep has
finished its report Job (`lorasweep report`, the same image and storage access) writes report.md next to the
trials and status.reportUri points at it. The operator itself never touches the storage."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    REPORTS,
    OperatorProcess,
    condition,
    events,
    get_sweep,
    list_jobs,
    list_pods,
    tiny_trainer_sweep,
    wait_phase,
)

from fixtures_cluster import wait_for
from lorasweep_operator import rendering
from lorasweep_operator.report.markdown import CONFUSION_FIGURE
from lorasweep_trainer.results import METRICS_SCHEMA

BIN = Path(sys.executable).parent
SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "samples" / "tiny-cpu-sweep.yaml"


def test_sweep_with_the_real_trainer_on_synthetic_clips_and_its_report_job(
    cluster: Any, namespace: str, operator: OperatorProcess, s3_server: Any, s3_bucket: str
) -> None:
    # The shipped tiny CPU sample, pointed at this test's bucket and made smaller still.
    manifest = tiny_trainer_sweep(cluster, namespace, "tiny", s3_server, s3_bucket)
    manifest["spec"]["training"].update(epochs=1)
    manifest["spec"].update(parallelism=1, resources={"limits": {"cpu": "2", "memory": "4Gi"}})
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    body = wait_phase(cluster, namespace, "tiny", ("Succeeded", "Failed"), timeout=600)
    status = body["status"]
    assert status["phase"] == "Succeeded", (json.dumps(status, indent=1), operator.log())
    assert status["counts"]["succeeded"] == 2
    rows = status["trials"]
    assert all(0.0 <= row["objective"] <= 1.0 for row in rows)
    assert rows[0]["objective"] >= rows[1]["objective"]
    assert status["best"]["trial"] == rows[0]["id"]
    # The result came from the trainer's termination message; metrics.json is where it points.
    uri = status["best"]["metricsUri"]
    assert uri == f"s3://{s3_bucket}/sweeps/{namespace}/tiny/trials/{rows[0]['id']}/metrics.json"
    key = uri.removeprefix(f"s3://{s3_bucket}/")
    metrics = json.loads(s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert metrics["schema"] == METRICS_SCHEMA and metrics["trial"] == rows[0]["id"]
    assert metrics["val_accuracy"] == pytest.approx(rows[0]["objective"])
    assert metrics["params"]["learning_rate"] == rows[0]["params"]["learningRate"]
    assert {row["params"]["learningRate"] for row in rows} == {1e-3, 5e-3}
    assert get_sweep(cluster, namespace, "tiny")["status"]["best"] == status["best"]

    # The report, by a report Job: the operator was started without --write-reports and holds no credentials.
    def reported() -> dict[str, Any] | None:
        current: dict[str, Any] = get_sweep(cluster, namespace, "tiny")["status"]
        found = condition(current, "ReportWritten")
        return current if found and found[0] != "Unknown" else None

    status = wait_for("the sweep report", reported, timeout=300, interval=1)
    report_logs = cluster.kubectl("logs", "-n", namespace, "-l", REPORTS, "--tail=40", check=False).stdout
    report_uri = f"s3://{s3_bucket}/sweeps/{namespace}/tiny/report/report.md"
    assert status.get("reportUri") == report_uri, (status.get("conditions"), report_logs, operator.log())
    state, reason, message = condition(status, "ReportWritten") or ("", "", "")
    assert (state, reason) == ("True", "ReportWritten")
    assert message.startswith(f"report at {report_uri} (2 trials; best: ")
    assert status["phase"] == "Succeeded" and status["best"] == body["status"]["best"]

    text = s3_server.client().get_object(Bucket=s3_bucket, Key=report_uri.removeprefix(f"s3://{s3_bucket}/"))
    markdown = text["Body"].read().decode()
    assert markdown.startswith("# Sweep report: tiny\n")
    assert "**Trials:** 2 (2 configurations" in markdown
    figure = f"sweeps/{namespace}/tiny/report/{CONFUSION_FIGURE}"
    assert s3_server.client().head_object(Bucket=s3_bucket, Key=figure)["ContentType"] == "image/png"

    uid = get_sweep(cluster, namespace, "tiny")["metadata"]["uid"]
    (job,) = list_jobs(cluster, namespace, REPORTS)
    assert job["metadata"]["name"] == rendering.report_job_name("tiny", uid)
    assert [c["type"] for c in job["status"]["conditions"] if c["status"] == "True"][-1] == "Complete"
    assert len(list_pods(cluster, namespace, REPORTS)) == 1
    assert len(list_jobs(cluster, namespace)) == 2  # the trials' Jobs; the report Job is not one
    assert {"ReportJobCreated", "ReportWritten"} <= set(events(cluster, namespace, "tiny"))
