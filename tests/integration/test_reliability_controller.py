"""Reliability scenarios on the real control plane (the operator as a subprocess with the deploy/rbac token, real
Jobs run by the Job controller, pods by the dev node agent): Job semantics (permanent exit codes, backoffLimit,
activeDeadlineSeconds, TTL deletion), bad input reaching the trainer verbatim, an oversized termination message,
and the operator killed at many points or down while sweeps are created, edited and deleted."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    OperatorProcess,
    apply,
    condition,
    events,
    get_sweep,
    job_finished,
    learning_rates,
    list_jobs,
    list_pods,
    sweep_manifest,
    tiny_trainer_sweep,
    wait_phase,
)

from fault_proxy import Fault, FaultProxy
from fixtures_cluster import processes_running, wait_for
from lorasweep_operator.status import RESULT_UNREADABLE

pytestmark = pytest.mark.reliability

# Every string a user writes that reaches the trial: shell metacharacters, quotes, newlines, a NUL-free mix.
HOSTILE = "a; rm -rf / && echo $(id) `id` | tee >/tmp/x 'q' \"dq\" \\ \n second line\t* ? ~ $HOME"
GROUP_NAME = "lr $(id); `x` 'q'"

# A trial whose behaviour its learningRate chooses, as the trainer's would: 1e-3 succeeds (val_accuracy 1.0 when
# its argv and group arrived verbatim, else 0.0), 0.2 exits 2 (invalid configuration), 0.3 exits 3 (dataset unusable), 0.4 exits 1 (retryable),
# (1e-3 also checks the strings in `fields` of behaviour_command), 0.5 sleeps past any deadline (a success first sleeps epochs x 0.5 s), 0.6 succeeds with a termination message past the kubelet's 4 KiB,
# 0.7 runs until SIGTERM and then takes STOPPING_SECONDS to stop (a trainer finishing an upload), then exits 1.
BEHAVIOUR = r"""
import json, os, sys, time
trial = json.loads(os.environ["LORASWEEP_TRIAL"])
rate = trial["training"]["learningRate"]
path = os.environ["LORASWEEP_TERMINATION_LOG"]
def summary(status, **fields):
    open(path, "w").write(json.dumps({"trial": trial["trial"], "status": status, **fields}))
if rate == 0.2:
    summary("Failed", reason="InvalidConfig", message="training.lora.rank: must be at least 1")
    sys.exit(2)
if rate == 0.3:
    summary("Failed", reason="DatasetUnusable", message="no clips of class sit_down")
    sys.exit(3)
if rate == 0.4:
    summary("Failed", reason="Error", message="RuntimeError: CUDA error")
    sys.exit(1)
if rate == 0.5:
    time.sleep(120)
if rate == 0.6:
    summary("Succeeded", metrics={"val_accuracy": 0.9}, message="x" * 6000)
    sys.exit(0)
if rate == 0.7:
    import signal
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    while not stopping:
        time.sleep(0.05)
    time.sleep(STOPPING_SECONDS)
    summary("Failed", reason="Error", message="stopped by SIGTERM")
    sys.exit(1)
time.sleep(trial["training"]["epochs"] * 0.5)
if "--gate" in sys.argv:  # trial i (learningRate (i + 1) x 1e-4) finishes once the gate file holds a number > i
    gate, index = sys.argv[sys.argv.index("--gate") + 1], round(rate / 1e-4) - 1
    while int(open(gate).read() or 0) <= index:
        time.sleep(0.05)
fields = [trial["model"]["source"], trial["dataset"]["source"], sorted(trial["dataset"]["classes"])]
verbatim = (sys.argv[1:] == EXPECTED_ARGV and trial.get("group") in (None, "list", "baseline", EXPECTED_GROUP)
            and EXPECTED_FIELDS in (None, fields))
summary("Succeeded", metrics={"val_accuracy": 1.0 if verbatim else 0.0}, metrics_uri=trial["output"] + "metrics.json")
"""


STOPPING_SECONDS = 15


def behaviour_command(*argv: str, fields: list[Any] | None = None) -> list[str]:
    """The BEHAVIOUR trial with `argv`; `fields`: [model.source, dataset.source, sorted class names] it must see."""
    script = (
        f"EXPECTED_ARGV = {json.dumps(list(argv))}\nEXPECTED_GROUP = {json.dumps(GROUP_NAME)}\n"
        f"EXPECTED_FIELDS = {fields!r}\n"
        f"STOPPING_SECONDS = {STOPPING_SECONDS}\n{BEHAVIOUR}"
    )
    return ["python", "-c", script, *argv]


def _rows(status: dict[str, Any]) -> dict[float, dict[str, Any]]:
    return {row["params"]["learningRate"]: row for row in status["trials"]}


def _pods_per_trial(cluster: Any, namespace: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pod in list_pods(cluster, namespace):
        trial = pod["metadata"]["labels"]["lorasweep.dev/trial"]
        counts[trial] = counts.get(trial, 0) + 1
    return counts


def test_job_semantics_permanent_codes_backoff_deadline_ttl_and_an_oversized_message(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    argv = ("--note", HOSTILE)
    retry = sweep_manifest(
        "retry", namespace, command=behaviour_command(*argv), parallelism=5, maxFailedTrials=10, backoffLimit=1,
        search=learning_rates(1e-3, 0.2, 0.3, 0.4, 0.6),
    )  # fmt: skip
    deadline = sweep_manifest(
        "deadline", namespace, command=behaviour_command(*argv), activeDeadlineSeconds=3, maxFailedTrials=10,
        ttlSecondsAfterFinished=0, search=learning_rates(0.5),
    )  # fmt: skip
    assert apply(cluster, retry).returncode == 0 and apply(cluster, deadline).returncode == 0

    status = wait_phase(cluster, namespace, "retry", ("Succeeded", "Failed"), timeout=240)["status"]
    rows = _rows(status)
    assert (rows[1e-3]["phase"], rows[1e-3]["objective"]) == ("Succeeded", 1.0), operator.log()  # verbatim
    assert (rows[0.2]["phase"], rows[0.2]["reason"]) == ("Failed", "InvalidConfig")
    assert (rows[0.3]["phase"], rows[0.3]["reason"]) == ("Failed", "DatasetUnusable")
    assert (rows[0.4]["phase"], rows[0.4]["reason"]) == ("Failed", "Error")
    assert (rows[0.6]["phase"], rows[0.6]["reason"]) == ("Succeeded", RESULT_UNREADABLE)  # cut at 4 KiB
    pods = _pods_per_trial(cluster, namespace)
    assert pods[rows[0.2]["id"]] == pods[rows[0.3]["id"]] == 1  # exit 2, 3: never retried, though backoffLimit is 1
    assert pods[rows[0.4]["id"]] == 2  # exit 1: retried once, then backoffLimit is exhausted

    late = wait_phase(cluster, namespace, "deadline", ("Failed", "Succeeded"), timeout=120)["status"]
    (row,) = late["trials"]
    assert (row["phase"], row["reason"]) == ("Failed", "DeadlineExceeded"), row
    # ttlSecondsAfterFinished: 0: the TTL controller deletes the finished Job; the result stays.
    wait_for(
        "the TTL controller", lambda: not list_jobs(cluster, namespace, "lorasweep.dev/sweep=deadline"), timeout=90
    )
    time.sleep(1)  # the deletion's watch event runs a pass
    after = get_sweep(cluster, namespace, "deadline")["status"]
    assert after["trials"] == late["trials"] and after["counts"] == late["counts"]
    assert not list_jobs(cluster, namespace, "lorasweep.dev/sweep=deadline")  # not relaunched


def test_long_dotted_sweep_names_get_valid_labels_and_distinct_job_names(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    prefix = "team.vision.lora-sweeps." + "x" * 50
    names = (f"{prefix}.run-1", f"{prefix}.run-2", "exp.1", "exp-1")
    for name in names:
        assert (
            apply(
                cluster, sweep_manifest(name, namespace, command=behaviour_command(), search=learning_rates(1e-3))
            ).returncode
            == 0
        )
    for name in names:
        status = wait_phase(cluster, namespace, name, ("Succeeded",), timeout=180)["status"]
        assert status["counts"]["succeeded"] == 1
    jobs = list_jobs(cluster, namespace)
    assert len({job["metadata"]["name"] for job in jobs}) == len(names) == len(jobs)
    assert all(len(job["metadata"]["labels"]["lorasweep.dev/sweep"]) <= 63 for job in jobs)


def test_operator_killed_at_random_points_runs_each_trial_exactly_once(
    cluster: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.write_text("0")
    rates = [round(1e-4 * (i + 1), 6) for i in range(12)]
    command = behaviour_command("--gate", str(gate))
    manifest = sweep_manifest("chaos", namespace, parallelism=3, command=command, search=learning_rates(*rates))
    manifest["spec"]["training"] = {"epochs": 1}
    assert apply(cluster, manifest).returncode == 0
    rng = random.Random(11)
    for kill in range(1, 21):
        # Trials finish a few at a time, so the kills fall between Job creations, finishes and status writes.
        gate.write_text(str(len(rates) * kill // 20))
        time.sleep(rng.uniform(0.0, 1.0))
        operator.kill()
        operator.start()
    status = wait_phase(cluster, namespace, "chaos", ("Succeeded",), timeout=180)["status"]
    assert status["counts"]["succeeded"] == 12 and operator.starts == 21
    jobs = list_jobs(cluster, namespace)
    assert sorted(job["metadata"]["labels"]["lorasweep.dev/trial"] for job in jobs) == sorted(
        row["id"] for row in status["trials"]
    )
    assert set(_pods_per_trial(cluster, namespace).values()) == {1}  # no trial ran twice


def test_sweeps_created_edited_and_deleted_while_the_operator_is_down_are_reconciled(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    made = sweep_manifest("made", namespace, command=behaviour_command(), search=learning_rates(1e-3, 2e-3))
    edited = sweep_manifest("edited", namespace, command=behaviour_command(), suspend=True, search=learning_rates(1e-3))
    gone = sweep_manifest("gone", namespace, command=behaviour_command(), suspend=True, search=learning_rates(1e-3))
    assert apply(cluster, edited).returncode == 0 and apply(cluster, gone).returncode == 0
    wait_phase(cluster, namespace, "edited", ("Suspended",))
    operator.kill()
    assert apply(cluster, made).returncode == 0
    cluster.kubectl(
        "patch", "lsw", "edited", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false,"parallelism":2}}'
    )
    # kopf's finalizer (the sweep's timer needs one) holds the deletion until the operator is back.
    cluster.kubectl("delete", "lsw", "gone", "-n", namespace, "--wait=false")
    operator.start()
    wait_for(
        "the deleted sweep to go",
        lambda: "gone" not in cluster.kubectl("get", "lsw", "-n", namespace, "-o", "name").stdout,
        timeout=60,
    )
    for name in ("made", "edited"):
        assert wait_phase(cluster, namespace, name, ("Succeeded",), timeout=180)["status"]["counts"]["succeeded"] >= 1
    assert get_sweep(cluster, namespace, "edited")["status"]["observedGeneration"] == 2
    assert not list_jobs(cluster, namespace, "lorasweep.dev/sweep=gone")


def test_an_unsatisfiable_gpu_request_leaves_the_trial_pending_with_a_reason_and_no_spinning(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    manifest = sweep_manifest("greedy", namespace, command=behaviour_command(), search=learning_rates(1e-3))
    manifest["spec"]["resources"] = {"limits": {"cpu": "1", "memory": "512Mi", "nvidia.com/gpu": 64}}
    assert apply(cluster, manifest).returncode == 0

    def reported() -> dict[str, Any] | None:
        rows = (get_sweep(cluster, namespace, "greedy").get("status") or {}).get("trials") or []
        return rows[0] if rows and rows[0].get("reason") == "Unschedulable" else None

    row = wait_for("the scheduler's reason on the trial", reported, timeout=120, interval=0.5)
    assert row["phase"] == "Pending" and "nvidia.com/gpu" in row["message"], row
    passes = operator.metric("lorasweep_operator_reconciles_total")
    time.sleep(5)
    assert operator.metric("lorasweep_operator_reconciles_total") - passes <= 2  # waits for events, no loop
    assert len(list_jobs(cluster, namespace)) == 1


def test_a_trial_job_deleted_mid_run_is_recreated_and_the_trial_finishes(
    cluster: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.write_text("0")
    manifest = sweep_manifest(
        "victim", namespace, command=behaviour_command("--gate", str(gate)), search=learning_rates(1e-4)
    )
    assert apply(cluster, manifest).returncode == 0
    wait_for(
        "the trial to run",
        lambda: any(p["status"].get("phase") == "Running" for p in list_pods(cluster, namespace)),
        timeout=120,
    )
    (job,) = list_jobs(cluster, namespace)
    cluster.kubectl("delete", "job", job["metadata"]["name"], "-n", namespace, "--cascade=foreground", "--wait=true")

    def recreated() -> bool:
        return any(j["metadata"]["uid"] != job["metadata"]["uid"] for j in list_jobs(cluster, namespace))

    wait_for("the Job to be recreated", recreated, timeout=60)  # documented: recreated, under the same name
    gate.write_text("1")
    status = wait_phase(cluster, namespace, "victim", ("Succeeded",), timeout=120)["status"]
    assert status["counts"]["succeeded"] == 1 and [j["metadata"]["name"] for j in list_jobs(cluster, namespace)] == [
        job["metadata"]["name"]
    ]


def _job_conditions(cluster: Any, namespace: str, sweep: str) -> set[str]:
    """The conditions (status True) of the sweep's one trial Job; none before it exists."""
    jobs = list_jobs(cluster, namespace, f"lorasweep.dev/sweep={sweep},lorasweep.dev/trial")
    return {
        c["type"] for job in jobs for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"
    }


def test_failure_target_before_failed_does_not_finish_the_trial_early(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    # Past its deadline the Job controller sets FailureTarget and stops the pod, which takes STOPPING_SECONDS to
    # stop; Failed comes only after it has.
    manifest = sweep_manifest(
        "slowstop", namespace, command=behaviour_command(), activeDeadlineSeconds=3, maxFailedTrials=0,
        search=learning_rates(0.7),
    )  # fmt: skip
    assert apply(cluster, manifest).returncode == 0
    wait_for(
        "the Job controller's decision",
        lambda: _job_conditions(cluster, namespace, "slowstop") & {"FailureTarget", "Failed"},
        timeout=120,
        interval=0.2,
    )
    assert _job_conditions(cluster, namespace, "slowstop") == {"FailureTarget"}, "the window was missed"
    # A pass in that window (a spec edit runs one), seen through the status it writes.
    cluster.kubectl("patch", "lsw", "slowstop", "-n", namespace, "--type=merge", "-p", '{"spec":{"parallelism":2}}')
    wait_for(
        "the pass after the edit",
        lambda: (get_sweep(cluster, namespace, "slowstop").get("status") or {}).get("observedGeneration") == 2,
        timeout=30,
        interval=0.2,
    )
    during = get_sweep(cluster, namespace, "slowstop")["status"]
    assert "Failed" not in _job_conditions(cluster, namespace, "slowstop"), "the pod stopped before the check"
    (row,) = during["trials"]
    assert (row["phase"], row.get("reason")) == ("Running", "FailureTarget"), row
    assert during["phase"] == "Running" and not during.get("completionTime") and during["counts"]["failed"] == 0
    assert "TrialFailed" not in events(cluster, namespace, "slowstop")

    done = wait_phase(cluster, namespace, "slowstop", ("Failed",), timeout=120)["status"]
    (row,) = done["trials"]
    assert (row["phase"], row["reason"]) == ("Failed", "DeadlineExceeded"), row
    assert done["completionTime"] and done["counts"]["failed"] == 1


KEEP = "lorasweep.dev/test-keep"  # the test's own finalizer: the evicted pod's final status stays readable


def _pod(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
    return body


def _release(cluster: Any, namespace: str, name: str) -> None:
    """Remove KEEP, by index with a test op (a merge patch could give back a finalizer the Job controller just
    removed); the index moves when it does, so look again."""

    def removed() -> bool:
        finalizers = _pod(cluster, namespace, name)["metadata"].get("finalizers") or []
        if KEEP not in finalizers:
            return True
        index = finalizers.index(KEEP)
        patch = [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": KEEP},
                 {"op": "remove", "path": f"/metadata/finalizers/{index}"}]  # fmt: skip
        argv = ("patch", "pod", name, "-n", namespace, "--type=json", "-p", json.dumps(patch))
        return cluster.kubectl(*argv, check=False).returncode == 0

    wait_for(f"finalizer {KEEP} removed", removed, timeout=30, interval=0.2)


def test_a_preempted_trial_pod_is_replaced_and_not_counted_as_a_failure(
    cluster: Any, namespace: str, operator: OperatorProcess, api_client: Any, tmp_path: Path
) -> None:
    from kubernetes import client

    gate = tmp_path / "gate"
    gate.write_text("0")
    # backoffLimit 0: a single counted failure would fail the Job, and maxFailedTrials 0 the sweep.
    manifest = sweep_manifest(
        "preempted", namespace, command=behaviour_command("--gate", str(gate)), backoffLimit=0, maxFailedTrials=0,
        search=learning_rates(1e-4),
    )  # fmt: skip
    assert apply(cluster, manifest).returncode == 0

    def running() -> list[dict[str, Any]]:
        return [p for p in list_pods(cluster, namespace) if (p.get("status") or {}).get("phase") == "Running"]

    (first,) = wait_for("the trial to run", running, timeout=120)
    name = first["metadata"]["name"]
    keep = [{"op": "add", "path": "/metadata/finalizers/-", "value": KEEP}]
    cluster.kubectl("patch", "pod", name, "-n", namespace, "--type=json", "-p", json.dumps(keep))
    # What a preemption or a node drain does: the Eviction API (pods/eviction).
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))
    client.CoreV1Api(api_client).create_namespaced_pod_eviction(name, namespace, eviction)
    try:
        # The node agent, as a kubelet: SIGTERM to the process, then the pod reported Failed.
        evicted = wait_for(
            "the evicted pod to stop",
            lambda: (pod := _pod(cluster, namespace, name))["status"].get("phase") == "Failed" and pod,
            timeout=60,
            interval=0.2,
        )
    finally:
        _release(cluster, namespace, name)
    disruption = [c for c in evicted["status"]["conditions"] if c["type"] == "DisruptionTarget"]
    assert [(c["status"], c["reason"]) for c in disruption] == [("True", "EvictionByEvictionAPI")], evicted["status"]
    (container,) = evicted["status"]["containerStatuses"]
    assert container["state"]["terminated"]["exitCode"] == 143  # 128 + SIGTERM: the process was ended

    # The Job's podFailurePolicy ignores the disruption: a new pod, no failure counted.
    (second,) = wait_for(
        "a replacement pod", lambda: [p for p in running() if p["metadata"]["uid"] != first["metadata"]["uid"]],
        timeout=60,
    )  # fmt: skip
    during = get_sweep(cluster, namespace, "preempted")["status"]
    assert during["counts"]["failed"] == 0 and during["trials"][0]["phase"] in ("Running", "Pending"), during
    gate.write_text("1")
    status = wait_phase(cluster, namespace, "preempted", ("Succeeded", "Failed"), timeout=120)["status"]
    assert status["phase"] == "Succeeded" and status["counts"] == {**status["counts"], "succeeded": 1, "failed": 0}
    (job,) = list_jobs(cluster, namespace)
    assert (job["status"].get("failed") or 0) == 0 and job["status"]["succeeded"] == 1
    assert "TrialFailed" not in events(cluster, namespace, "preempted")
    assert second["metadata"]["name"] != name


def test_suspend_suspends_running_trial_jobs_and_resume_runs_them_without_duplicates(
    cluster: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.write_text("1")  # the first trial may finish; the others run until the gate opens further
    manifest = sweep_manifest(
        "paused", namespace, command=behaviour_command("--gate", str(gate)), parallelism=2,
        search=learning_rates(1e-4, 2e-4, 3e-4),
    )  # fmt: skip
    assert apply(cluster, manifest).returncode == 0

    def running_trials() -> set[str]:
        return {
            p["metadata"]["labels"]["lorasweep.dev/trial"]
            for p in list_pods(cluster, namespace)
            if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        }

    def first_done() -> dict[str, Any] | None:
        rows = _rows(get_sweep(cluster, namespace, "paused").get("status") or {"trials": []})
        done = rows.get(1e-4, {}).get("phase") == "Succeeded" and len(running_trials()) == 2
        return rows[1e-4] if done else None

    first = wait_for("two trials to run after the first finished", first_done, timeout=120, interval=0.5)

    cluster.kubectl("patch", "lsw", "paused", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')

    def suspended() -> dict[str, Any] | None:
        status = get_sweep(cluster, namespace, "paused").get("status") or {}
        jobs = [j for j in list_jobs(cluster, namespace) if j["metadata"]["name"] != first["job"]]
        quiet = all(j["spec"].get("suspend") for j in jobs) and not running_trials()
        return status if quiet and status.get("phase") == "Suspended" and status["counts"]["running"] == 0 else None

    status = wait_for("the running trials to be suspended", suspended, timeout=90, interval=0.5)
    assert processes_running(str(gate)) == []  # their processes ended
    assert (condition(status, "Suspended") or ("",))[0] == "True"
    rows = _rows(status)
    assert rows[1e-4] == first  # the finished trial's result is kept as it was
    assert {rows[r]["phase"] for r in (2e-4, 3e-4)} == {"Pending"}
    assert {rows[r].get("reason") for r in (2e-4, 3e-4)} == {"Suspended"}
    assert len(list_jobs(cluster, namespace)) == 3

    cluster.kubectl("patch", "lsw", "paused", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for("the trials to run again", lambda: len(running_trials()) == 2, timeout=90)
    gate.write_text("3")
    done = wait_phase(cluster, namespace, "paused", ("Succeeded", "Failed"), timeout=120)["status"]
    assert done["phase"] == "Succeeded" and done["counts"]["succeeded"] == 3
    assert _rows(done)[1e-4] == first
    jobs = list_jobs(cluster, namespace)
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(row["job"] for row in done["trials"])  # no duplicate
    assert not any(j["spec"].get("suspend") for j in jobs)
    assert _pods_per_trial(cluster, namespace)[first["id"]] == 1  # the finished trial never ran again


def test_a_trial_pod_retried_after_it_wrote_its_metrics_keeps_that_result(
    cluster: Any, namespace: str, operator: OperatorProcess, s3_server: Any, s3_bucket: str
) -> None:
    from lorasweep_trainer.results import TrialMetrics

    with FaultProxy(s3_server.endpoint_url) as proxy:
        manifest = tiny_trainer_sweep(cluster, namespace, "retried", s3_server, s3_bucket)
        spec = manifest["spec"]
        spec["storage"]["endpoint"] = proxy.url  # the trainers' S3 traffic goes through the proxy
        spec["search"] = {"list": [{"learningRate": 1e-3}]}
        spec["training"]["epochs"] = 1
        spec.update(parallelism=1, backoffLimit=1, resources={"limits": {"cpu": "2", "memory": "4Gi"}})
        # The first attempt's metrics.json reaches the server; the answer never reaches the trainer.
        proxy.add(Fault("PUT", "stall", path="metrics.json"))
        assert apply(cluster, manifest).returncode == 0
        wait_for("the first attempt to write metrics.json", proxy.held.is_set, timeout=600, interval=0.5)
        (written,) = [
            item["Key"]
            for item in s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="sweeps/").get("Contents", [])
            if item["Key"].endswith("/metrics.json")
        ]
        recorded = s3_server.client().get_object(Bucket=s3_bucket, Key=written)["Body"].read()
        # Its pod dies before it exits 0 (a lost node, an out-of-memory kill): the Job runs the trial again.
        (pod,) = list_pods(cluster, namespace)
        cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", namespace, "--wait=false")
        status = wait_phase(cluster, namespace, "retried", ("Succeeded", "Failed"), timeout=300)["status"]
    assert status["phase"] == "Succeeded", (status, operator.log())
    metrics = TrialMetrics.model_validate_json(recorded)
    (row,) = status["trials"]
    assert row["objective"] == metrics.val_accuracy and row["metricsUri"] == f"s3://{s3_bucket}/{written}"
    assert s3_server.client().get_object(Bucket=s3_bucket, Key=written)["Body"].read() == recorded  # untouched
    (job,) = list_jobs(cluster, namespace)
    assert (job["status"].get("failed"), job["status"].get("succeeded")) == (1, 1)  # two attempts, one result
    logs = cluster.kubectl("logs", "-n", namespace, "-l", "lorasweep.dev/trial", "--tail=200", check=False).stdout
    assert "trial finished before, keeping its result" in logs, logs[-2000:]


def test_shell_metacharacters_and_newlines_in_every_string_reach_the_trial_verbatim(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    source = "s3://bucket/clips $(id);\n`touch /tmp/x` 'q'/"
    classes = {"sit; rm -rf / && echo $(id)\nnext": [8], "other `id` 'q' \"dq\"": "rest"}
    model = "/models/" + HOSTILE[:500]  # a volume path: a hub name or an s3:// URI has a stricter form
    argv = ("--note", HOSTILE, "$(id)", "a\nb")
    manifest = sweep_manifest(
        "hostile", namespace, command=behaviour_command(*argv, fields=[model, source, sorted(classes)]),
        parallelism=2, search={"groups": [{"name": GROUP_NAME, "values": [{"learningRate": 1e-3}]}]},
        model={"source": model, "preset": "tiny"}, dataset={"source": source, "classes": classes},
    )  # fmt: skip
    assert apply(cluster, manifest).returncode == 0, apply(cluster, manifest).stderr
    status = wait_phase(cluster, namespace, "hostile", ("Succeeded", "Failed"), timeout=180)["status"]
    rows = {row["group"]: row for row in status["trials"]}
    assert set(rows) == {"baseline", GROUP_NAME}  # the group name as written, in the status too
    # 1.0: the trial saw its argv, group, model source, dataset source and class names exactly as written.
    assert {group: row["objective"] for group, row in rows.items()} == {"baseline": 1.0, GROUP_NAME: 1.0}, rows
    (job,) = [
        j
        for j in list_jobs(cluster, namespace)
        if j["metadata"]["labels"]["lorasweep.dev/trial"] == rows[GROUP_NAME]["id"]
    ]
    assert job["metadata"]["annotations"]["lorasweep.dev/group"] == GROUP_NAME
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][3:] == list(argv)  # an argv, no shell


def test_a_trial_job_whose_owner_reference_is_removed_is_reported_and_relaunched_once_deleted(
    cluster: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.write_text("0")
    manifest = sweep_manifest(
        "disowned", namespace, command=behaviour_command("--gate", str(gate)), search=learning_rates(1e-4)
    )
    assert apply(cluster, manifest).returncode == 0
    (job,) = wait_for("the trial's Job", lambda: list_jobs(cluster, namespace), timeout=60)
    name = job["metadata"]["name"]
    cluster.kubectl("patch", "job", name, "-n", namespace, "--type=json",
                    "-p", '[{"op": "remove", "path": "/metadata/ownerReferences"}]')  # fmt: skip

    def reported() -> dict[str, Any] | None:
        rows = (get_sweep(cluster, namespace, "disowned").get("status") or {}).get("trials") or []
        return rows[0] if rows and rows[0].get("reason") == "JobNotOwned" else None

    # Documented: reported, not re-adopted (the operator never takes over a Job someone else may now own).
    row = wait_for("the trial to say its Job is not the sweep's", reported, timeout=30, interval=0.5)
    assert row["phase"] == "Pending" and name in row["message"] and "delete it" in row["message"]
    gate.write_text("1")  # the orphan runs to its end, and still is not the sweep's result
    wait_for("the orphan Job to finish", lambda: job_finished(list_jobs(cluster, namespace)[0]), timeout=60)
    assert reported() is not None and get_sweep(cluster, namespace, "disowned")["status"]["counts"]["succeeded"] == 0
    # As its message says, and as people do it: the default (background) deletion; its pod goes afterwards.
    cluster.kubectl("delete", "job", name, "-n", namespace, "--wait=true")
    status = wait_phase(cluster, namespace, "disowned", ("Succeeded",), timeout=120)["status"]
    (again,) = list_jobs(cluster, namespace)
    assert (
        again["metadata"]["name"] == name
        and again["metadata"]["ownerReferences"][0]["uid"]
        == get_sweep(cluster, namespace, "disowned")["metadata"]["uid"]
    )
    assert status["counts"]["succeeded"] == 1 and status["trials"][0].get("reason") is None
