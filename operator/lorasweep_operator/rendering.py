"""Job rendering: one planned trial to one batch/v1 Job body. Pure; the same inputs give the same Job.

The pod meets Pod Security Standards "restricted". The trial's configuration travels whole in
``LORASWEEP_TRIAL`` (JSON of `TrialConfig`), never through a shell. Exit codes 2 and 3 (invalid config,
unusable dataset) fail the Job at once through its podFailurePolicy; evictions and preemptions
(DisruptionTarget) do not count against backoffLimit.
"""

from __future__ import annotations

from typing import Any

from lorasweep_operator.planning import PlannedTrial, label_value, trial_config
from lorasweep_operator.spec import API_VERSION, KIND, LoraSweepSpec
from lorasweep_trainer.config import DEFAULT_TERMINATION_LOG, PERMANENT_EXIT_CODES, TERMINATION_LOG_ENV, TRIAL_ENV

CONTAINER = "trainer"
SWEEP_LABEL = "lorasweep.dev/sweep"
TRIAL_LABEL = "lorasweep.dev/trial"
GROUP_ANNOTATION = "lorasweep.dev/group"
VARIANT_ANNOTATION = "lorasweep.dev/variant"
INDEX_ANNOTATION = "lorasweep.dev/index"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
APP_LABELS = {
    "app.kubernetes.io/name": "lorasweep",
    "app.kubernetes.io/component": "trial",
    "app.kubernetes.io/managed-by": "lorasweep-operator",
}
ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"


def sweep_selector(sweep: str) -> str:
    """The label selector of a sweep's Jobs and pods."""
    return f"{SWEEP_LABEL}={label_value(sweep)}"


def trial_labels(sweep: str, trial: PlannedTrial) -> dict[str, str]:
    return {
        **APP_LABELS,
        "app.kubernetes.io/instance": label_value(sweep),
        SWEEP_LABEL: label_value(sweep),
        TRIAL_LABEL: trial.id,
    }


def owner_reference(sweep: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": sweep,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _env(spec: LoraSweepSpec, trial_json: str) -> list[dict[str, Any]]:
    env = [
        {"name": TRIAL_ENV, "value": trial_json},
        {"name": TERMINATION_LOG_ENV, "value": DEFAULT_TERMINATION_LOG},
    ]
    if spec.storage.endpoint:
        env.append({"name": ENDPOINT_ENV, "value": spec.storage.endpoint})
    return env


def _container(spec: LoraSweepSpec, trial_json: str, metrics_port: int) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": list(spec.command),
        "env": _env(spec, trial_json),
        "ports": [{"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"}],
        "resources": _resources(spec),
        "terminationMessagePath": DEFAULT_TERMINATION_LOG,
        # A crash before the trainer writes its summary still leaves the log tail as the message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.storage.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.storage.credentials_secret}}]
    return container


def _resources(spec: LoraSweepSpec) -> dict[str, dict[str, str]]:
    # Quantities are strings in the API (an int is accepted on input but never returned).
    resources = {"limits": spec.resources.limits, "requests": spec.resources.requests}
    return {kind: {name: str(value) for name, value in values.items()} for kind, values in resources.items() if values}


def _pod_spec(spec: LoraSweepSpec, container: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        # The trainer never talks to the API server; workload identity webhooks mount their own token.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.tolerations]
    if spec.affinity:
        pod["affinity"] = spec.affinity
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": ref.name} for ref in spec.image_pull_secrets]
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    return pod


def render_job(
    spec: LoraSweepSpec,
    namespace: str,
    sweep: str,
    sweep_uid: str,
    trial: PlannedTrial,
) -> dict[str, Any]:
    """The batch/v1 Job that runs `trial` of sweep `namespace/sweep`."""
    config = trial_config(spec, namespace, sweep, trial)
    container = _container(spec, config.model_dump_json(by_alias=True), config.metrics_port)
    labels = trial_labels(sweep, trial)
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": list(PERMANENT_EXIT_CODES),
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {
            "metadata": {"labels": labels},
            "spec": _pod_spec(spec, container),
        },
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    if spec.queue_name:
        job_spec["suspend"] = True  # Kueue admits it by unsuspending.
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": trial.job_name,
            "namespace": namespace,
            "labels": job_labels,
            "annotations": {
                GROUP_ANNOTATION: trial.group,
                VARIANT_ANNOTATION: trial.variant,
                INDEX_ANNOTATION: str(trial.index),
            },
            "ownerReferences": [owner_reference(sweep, sweep_uid)],
        },
        "spec": job_spec,
    }
