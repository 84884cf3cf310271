"""Job rendering: one planned trial to one batch/v1 Job body, and a finished sweep to its report Job. Pure;
the same inputs give the same Job.

The pods meet Pod Security Standards "restricted". The trial's configuration travels whole in
``LORASWEEP_TRIAL`` (JSON of `TrialConfig`), never through a shell. Exit codes 2 and 3 (invalid config,
unusable dataset) fail the Job at once through its podFailurePolicy; evictions and preemptions
(DisruptionTarget) do not count against backoffLimit.

The report Job (`render_report_job`) runs `lorasweep report` in the trainer image, with the trials' storage
access (the same Secret, endpoint and ServiceAccount), for an operator that has no storage access itself.
It is labelled like the trials (so the operator's Job watch sees it) but with component ``report`` and no
trial label, so it never counts as a trial and the trainer PodMonitor does not select it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from lorasweep_operator import preparation as preparations
from lorasweep_operator import tracking as trackings
from lorasweep_operator.commands.report import PERMANENT_EXIT_CODES as REPORT_PERMANENT_EXIT_CODES
from lorasweep_operator.planning import PACK_PREFIX, PlannedTrial, job_name, label_value, short_hash, trial_config
from lorasweep_operator.spec import API_VERSION, KIND, LoraSweepSpec
from lorasweep_trainer.config import (
    DEFAULT_TERMINATION_LOG,
    PACK_ENV,
    PERMANENT_EXIT_CODES,
    PREPARE_ENV,
    REPORT_FOLDER,
    SWEEP_UID_ENV,
    TERMINATION_LOG_ENV,
    TRACKING_ENV,
    TRIAL_ENV,
    TRIALS_FOLDER,
    ModelWeights,
    TrialConfig,
    sweep_output,
)
from lorasweep_trainer.progress import AUDIENCE, PROGRESS_TOKEN_ENV, PROGRESS_URL_ENV

CONTAINER = "trainer"
REPORT_CONTAINER = "report"
SWEEP_LABEL = "lorasweep.dev/sweep"
TRIAL_LABEL = "lorasweep.dev/trial"
GROUP_ANNOTATION = "lorasweep.dev/group"
VARIANT_ANNOTATION = "lorasweep.dev/variant"
INDEX_ANNOTATION = "lorasweep.dev/index"
TRIALS_ANNOTATION = "lorasweep.dev/trials"  # a pack's members, in order
# spec.earlyStopping: the metrics each epoch reported, and the rung decisions, as {"<epoch>": {...}} JSON.
PROGRESS_ANNOTATION = "lorasweep.dev/progress"
EARLY_STOPPING_ANNOTATION = "lorasweep.dev/early-stopping"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# On a running Job that spec.suspend suspended: resuming the sweep unsuspends only Jobs that carry it.
SUSPENDED_ANNOTATION = "lorasweep.dev/suspended-by-sweep"
APP_LABELS = {
    "app.kubernetes.io/name": "lorasweep",
    "app.kubernetes.io/component": "trial",
    "app.kubernetes.io/managed-by": "lorasweep-operator",
}
COMPONENT_LABEL = "app.kubernetes.io/component"
REPORT_COMPONENT = "report"
ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"
# huggingface_hub's switch: no request to the hub at all (from_pretrained of a local folder needs none).
HUB_OFFLINE = {"name": "HF_HUB_OFFLINE", "value": "1"}
# The keys of spec.storage.credentialsSecret a trial reads (name -> optional), each by secretKeyRef: the rest of
# that Secret never reaches the pod, so a Secret shared with other tools gives a trial only what it needs.
CREDENTIAL_KEYS = {
    "AWS_ACCESS_KEY_ID": False,
    "AWS_SECRET_ACCESS_KEY": False,
    "AWS_SESSION_TOKEN": True,
    "AWS_REGION": True,
    "AWS_DEFAULT_REGION": True,
    "HF_TOKEN": True,
}
# Reading a few hundred metrics.json files and drawing two figures: a fraction of a core, well under 1 GiB.
REPORT_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
REPORT_BACKOFF_LIMIT = 2
REPORT_DEADLINE_SECONDS = 1800
# Reasons are clipped so that a sweep with many failures still gives a Job far below the API's size limit.
REPORT_REASON_LIMIT = 200
SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


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


def report_labels(sweep: str) -> dict[str, str]:
    return {
        **APP_LABELS,
        COMPONENT_LABEL: REPORT_COMPONENT,
        "app.kubernetes.io/instance": label_value(sweep),
        SWEEP_LABEL: label_value(sweep),
    }


def component(job_or_pod: Mapping[str, Any]) -> str | None:
    """``trial``, ``report`` or ``prepare``: which of a sweep's children a Job or pod (as the API returns it) is."""
    value = ((job_or_pod.get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL)
    return None if value is None else str(value)


def is_report(job_or_pod: Mapping[str, Any]) -> bool:
    """A report Job or its pod (both carry the report labels), as the API returns them."""
    return component(job_or_pod) == REPORT_COMPONENT


def report_job_name(sweep: str, sweep_uid: str) -> str:
    """``<sweep prefix>-report-<hash of the uid>``: one per sweep object, never a trial's name (those end in a
    bare hash), and a sweep recreated under the same name gets a new one."""
    return job_name(sweep, f"{REPORT_COMPONENT}-{short_hash(sweep_uid)}")


def owner_reference(sweep: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": sweep,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _storage_env(spec: LoraSweepSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": TERMINATION_LOG_ENV, "value": DEFAULT_TERMINATION_LOG}]
    if spec.storage.endpoint:
        env.append({"name": ENDPOINT_ENV, "value": spec.storage.endpoint})
    if spec.storage.credentials_secret:
        for key, optional in CREDENTIAL_KEYS.items():
            ref: dict[str, Any] = {"name": spec.storage.credentials_secret, "key": key}
            if optional:
                ref["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def _container(
    spec: LoraSweepSpec, name: str, command: list[str], env: list[dict[str, Any]], resources: dict[str, Any]
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": spec.image,
        "command": command,
        "env": env,
        "resources": resources,
        "terminationMessagePath": DEFAULT_TERMINATION_LOG,
        # File, never FallbackToLogsOnError: a log tail (which may hold anything the program printed, secrets
        # included) must not become the pod's status, nor through it the sweep's status and Events.
        "terminationMessagePolicy": "File",
        "securityContext": copy.deepcopy(SECURITY_CONTEXT),
    }
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


def _failure_policy(container: str, permanent: Sequence[int]) -> dict[str, Any]:
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": container, "operator": "In", "values": list(permanent)},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


PROGRESS_VOLUME = "lorasweep-progress-token"
PROGRESS_MOUNT = "/var/run/secrets/lorasweep.dev/progress"
PROGRESS_TOKEN_FILE = "token"
PROGRESS_TOKEN_SECONDS = 3600


def _progress(pod: dict[str, Any], container: dict[str, Any], progress_url: str) -> None:
    """Per-epoch results to the operator's progress endpoint (spec.earlyStopping), authenticated by a projected
    ServiceAccount token of audience `lorasweep` that the kubelet rotates. The token grants nothing on the API
    server (wrong audience) and the pod keeps automountServiceAccountToken off."""
    container["env"] += [
        {"name": PROGRESS_URL_ENV, "value": progress_url},
        {"name": PROGRESS_TOKEN_ENV, "value": f"{PROGRESS_MOUNT}/{PROGRESS_TOKEN_FILE}"},
    ]
    container["volumeMounts"] = [{"name": PROGRESS_VOLUME, "mountPath": PROGRESS_MOUNT, "readOnly": True}]
    token = {"audience": AUDIENCE, "expirationSeconds": PROGRESS_TOKEN_SECONDS, "path": PROGRESS_TOKEN_FILE}
    pod["volumes"] = [{"name": PROGRESS_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}}]


def _pod_sets(spec: LoraSweepSpec, name: str) -> bool:
    """spec.pod.env names ``name`` (then the sweep's own value goes in, and no second one of the operator's)."""
    return spec.pod is not None and any(item.name == name for item in spec.pod.env)


def _with_pod_overrides(spec: LoraSweepSpec, template: dict[str, Any]) -> dict[str, Any]:
    """`template` (a Job's pod template) with spec.pod's additions: its env after the operator's in every container,
    its volumes and mounts after the operator's, its labels and annotations beside the operator's. spec.pod cannot
    name any of the operator's (spec.PodOverrides refuses them), so nothing of the operator's is replaced."""
    overrides = spec.pod
    if overrides is None:
        return template
    pod = template["spec"]
    env, mounts, volumes = (
        [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in items]
        for items in (overrides.env, overrides.volume_mounts, overrides.volumes)
    )
    for container in pod["containers"]:
        container["env"] = [*container["env"], *env]
        if mounts:
            container["volumeMounts"] = [*container.get("volumeMounts", []), *mounts]
    if volumes:
        pod["volumes"] = [*pod.get("volumes", []), *volumes]
    metadata = template["metadata"]
    if overrides.labels:
        metadata["labels"] = {**metadata["labels"], **overrides.labels}
    if overrides.annotations:
        metadata["annotations"] = {**metadata.get("annotations", {}), **overrides.annotations}
    return template


def _trial_job_spec(
    spec: LoraSweepSpec, container: str, labels: dict[str, str], pod: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any]]:
    """(Job labels, Job spec) of a trial's Job or the preparation's: retried, timed and queued as the sweep says."""
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": _failure_policy(container, PERMANENT_EXIT_CODES),
        "template": _with_pod_overrides(spec, {"metadata": {"labels": labels}, "spec": pod}),
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    if spec.queue_name:
        job_spec["suspend"] = True  # Kueue admits it by unsuspending.
    return job_labels, job_spec


def render_job(
    spec: LoraSweepSpec,
    namespace: str,
    sweep: str,
    sweep_uid: str,
    trial: PlannedTrial,
    progress_url: str | None = None,
    weights: ModelWeights | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job that runs `trial` of sweep `namespace/sweep`, reading the preparation's cache;
    `progress_url`: the operator's progress endpoint, given to the trainer when the sweep stops trials early;
    `weights`: the model the preparation fetched, pinned at its resolved revision (status.preparation.weights);
    `parent_run_id`: the sweep's MLflow parent run, as the preparation found or created it (spec.tracking)."""
    config = _trial_config(spec, namespace, sweep, sweep_uid, trial, weights, parent_run_id)
    env = [
        {"name": TRIAL_ENV, "value": config.model_dump_json(by_alias=True)},
        # Whose result a metrics.json already under the trial's output is: a retried pod keeps this sweep's.
        {"name": SWEEP_UID_ENV, "value": sweep_uid},
        *_storage_env(spec),
        *trackings.credential_env(spec),
    ]
    if weights is not None and not _pod_sets(spec, HUB_OFFLINE["name"]):
        env.append(dict(HUB_OFFLINE))  # the trial loads the files the preparation verified: it never needs the hub
    container = _container(spec, CONTAINER, list(spec.command), env, _resources(spec))
    container["ports"] = [{"name": "metrics", "containerPort": config.metrics_port, "protocol": "TCP"}]
    pod = _pod_spec(spec, container)
    if progress_url and spec.early_stopping is not None:
        _progress(pod, container, progress_url)
    labels = trial_labels(sweep, trial)
    job_labels, job_spec = _trial_job_spec(spec, CONTAINER, labels, pod)
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


def _trial_config(
    spec: LoraSweepSpec,
    namespace: str,
    sweep: str,
    sweep_uid: str,
    trial: PlannedTrial,
    weights: ModelWeights | None,
    parent_run_id: str | None,
) -> TrialConfig:
    """The trial's `LORASWEEP_TRIAL` document with what the preparation gave it: its cache, the pinned weights and
    the MLflow parent run."""
    cache = preparations.trial_cache(spec, namespace, trial)
    config = trial_config(spec, namespace, sweep, trial, cache=cache, weights=weights)
    tracking = trackings.for_sweep(spec, namespace, sweep, sweep_uid, parent_run_id)
    return config if tracking is None else config.model_copy(update={"tracking": tracking})


def render_pack_job(
    spec: LoraSweepSpec,
    namespace: str,
    sweep: str,
    sweep_uid: str,
    members: Sequence[PlannedTrial],
    weights: ModelWeights | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """The Job of packed trials (spec.packing > 1): a trial's Job whose pod runs every member, one after another
    (`LORASWEEP_PACK`); its trial label names the pack, its `TRIALS_ANNOTATION` the members in order."""
    job = render_job(spec, namespace, sweep, sweep_uid, members[0], weights=weights, parent_run_id=parent_run_id)
    configs = [_trial_config(spec, namespace, sweep, sweep_uid, trial, weights, parent_run_id) for trial in members]
    document = "[" + ",".join(config.model_dump_json(by_alias=True) for config in configs) + "]"
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": PACK_ENV, "value": document} if item["name"] == TRIAL_ENV else item for item in container["env"]
    ]
    pack = pack_label(members[0].job_name)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        labels[TRIAL_LABEL] = pack
    job["metadata"]["annotations"] = {
        TRIALS_ANNOTATION: ",".join(trial.id for trial in members),
        INDEX_ANNOTATION: str(members[0].index),
    }
    return job


def pack_label(job: str) -> str:
    """A pack's trial label value: ``pack-<hash>``, the tail of its Job name (never a trial id, those are bare hashes)."""
    return job[job.rindex(PACK_PREFIX) :]


def report_prefixes(spec: LoraSweepSpec, namespace: str, sweep: str) -> tuple[str, str]:
    """Where a sweep's trials write their metrics (``trials/``) and where its report goes (``report/``)."""
    root = sweep_output(spec.storage.output, namespace, sweep)
    return f"{root}{TRIALS_FOLDER}", f"{root}{REPORT_FOLDER}"


def report_command(
    spec: LoraSweepSpec, namespace: str, sweep: str, trials: Sequence[str], failed: Mapping[str, str]
) -> list[str]:
    """`lorasweep report` over the sweep's ``trials/`` prefix, into its ``report/`` prefix, as an argv."""
    source, destination = report_prefixes(spec, namespace, sweep)
    argv = [
        "lorasweep", "report", source, "--out", destination,
        "--objective", spec.objective.metric, "--goal", spec.objective.resolved_goal, "--sweep", sweep,
    ]  # fmt: skip
    if trials:
        argv += ["--trials", ",".join(sorted(trials))]
    for trial in sorted(failed):
        argv += ["--failed", f"{trial}={' '.join(failed[trial].split())[:REPORT_REASON_LIMIT]}"]
    return argv


def render_report_job(
    spec: LoraSweepSpec,
    namespace: str,
    sweep: str,
    sweep_uid: str,
    trials: Sequence[str],
    failed: Mapping[str, str],
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job that writes the report of finished sweep `namespace/sweep`: ``trials`` are the ids
    to report on, ``failed`` the trials without metrics (id -> why); with spec.tracking it also finishes the
    sweep's MLflow parent run (``parent_run_id`` when the preparation found it, else found by its key)."""
    command = report_command(spec, namespace, sweep, trials, failed)
    env = _storage_env(spec)
    tracking = trackings.for_sweep(spec, namespace, sweep, sweep_uid, parent_run_id)
    if tracking is not None:
        env += [
            {"name": TRACKING_ENV, "value": tracking.model_dump_json(by_alias=True)},
            *trackings.credential_env(spec),
        ]
    container = _container(spec, REPORT_CONTAINER, command, env, copy.deepcopy(REPORT_RESOURCES))
    labels = report_labels(sweep)
    job_spec: dict[str, Any] = {
        "backoffLimit": REPORT_BACKOFF_LIMIT,
        "completions": 1,
        "parallelism": 1,
        "activeDeadlineSeconds": REPORT_DEADLINE_SECONDS,
        "podFailurePolicy": _failure_policy(REPORT_CONTAINER, REPORT_PERMANENT_EXIT_CODES),
        # The trials' placement: the trainer image is already on those nodes, and their storage access is.
        # spec.pod too: the report reaches the same storage (a CA bundle's ConfigMap, proxy env, mesh annotations).
        "template": _with_pod_overrides(spec, {"metadata": {"labels": labels}, "spec": _pod_spec(spec, container)}),
    }
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": report_job_name(sweep, sweep_uid),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(sweep, sweep_uid)],
        },
        "spec": job_spec,
    }


def render_prepare_job(
    spec: LoraSweepSpec, namespace: str, sweep: str, sweep_uid: str, preparation: preparations.Preparation
) -> dict[str, Any]:
    """The batch/v1 Job of the sweep's preparation step: placed, sized and retried like a trial (it runs the
    encoder on the trials' GPU type), with the trials' storage access."""
    env = [
        {"name": PREPARE_ENV, "value": preparation.config.model_dump_json(by_alias=True)},
        *_storage_env(spec),
        *trackings.credential_env(spec),
    ]
    if preparation.config.model.source_kind != "hub" and not _pod_sets(spec, HUB_OFFLINE["name"]):
        env.append(dict(HUB_OFFLINE))  # weights from object storage or a volume: nothing of the hub is needed
    container = _container(spec, preparations.CONTAINER, list(preparations.COMMAND), env, _resources(spec))
    labels = {**report_labels(sweep), COMPONENT_LABEL: preparations.COMPONENT}
    job_labels, job_spec = _trial_job_spec(spec, preparations.CONTAINER, labels, _pod_spec(spec, container))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": preparation.job_name,
            "namespace": namespace,
            "labels": job_labels,
            "ownerReferences": [owner_reference(sweep, sweep_uid)],
        },
        "spec": job_spec,
    }
