"""What the dev node does with a pod, as pure functions: the container's environment and argv, and the
pod status a kubelet would report. The node agent (node_agent.py) does the I/O around them.

Pods arrive as the API server's JSON (camelCase dicts, as in ``kubectl get -o json``); the status
built here is a dict ready for a strategic-merge patch of the pod's ``status``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# The kubelet's limit for a termination message, and what it keeps of the log as a fallback.
TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
START_ERROR_EXIT_CODE = 128
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

Lookup = Callable[[str], Mapping[str, str] | None]
"""Name of a ConfigMap or Secret in the pod's namespace -> its data (decoded), or None when it does not exist."""


class EnvError(Exception):
    """A reference the container's environment needs is missing: the kubelet's CreateContainerConfigError."""


# ---------------------------------------------------------------------------------------------
# Environment


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, the rest stays as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i):
            end = text.find(")", i + 2)
            name = text[i + 2 : end] if end != -1 else ""
            if end != -1 and name in env:
                out.append(env[name])
                i = end + 1
            else:
                out.append("$(")
                i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """The value of a ``fieldRef.fieldPath`` (the paths the downward API supports for env)."""
    metadata = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((metadata.get(match[1]) or {}).get(match[2], ""))
    simple: dict[str, Any] = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.hostIPs": status.get("hostIP", "127.0.0.1"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.podIPs": status.get("podIP", "127.0.0.1"),
    }
    if path not in simple:
        raise EnvError(f"unsupported fieldRef fieldPath {path!r}")
    return str(simple[path] or "")


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ("500m", "2Gi", "1e3") as a number."""
    from kubernetes.utils import parse_quantity as parse

    return Decimal(parse(text))  # type: ignore[no-untyped-call]


def resource_value(
    pod: Mapping[str, Any], container_name: str, ref: Mapping[str, Any], allocatable: Mapping[str, str]
) -> str:
    """A ``resourceFieldRef``: the container's request or limit, the node's allocatable when no limit is set."""
    resource = str(ref.get("resource", ""))
    target = ref.get("containerName") or container_name
    containers: list[dict[str, Any]] = pod.get("spec", {}).get("containers", [])
    container = next((c for c in containers if c.get("name") == target), {})
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise EnvError(f"unsupported resourceFieldRef resource {resource!r}")
    quantity = (container.get("resources", {}).get(kind) or {}).get(name)
    if quantity is None:
        quantity = allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(quantity) / divisor))


def _from_source(kind: str, lookup: Lookup, name: str, key: str, optional: bool) -> str | None:
    data = lookup(name)
    if data is None:
        if optional:
            return None
        raise EnvError(f'{kind.lower()} "{name}" not found')
    if key not in data:
        if optional:
            return None
        raise EnvError(f"couldn't find key {key} in {kind} {name}")
    return data[key]


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    configmaps: Lookup,
    secrets: Lookup,
    allocatable: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The container's own variables, resolved like the kubelet: envFrom in order, then env, each may use the ones before."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, lookup, ref in (
            ("ConfigMap", configmaps, source.get("configMapRef")),
            ("Secret", secrets, source.get("secretRef")),
        ):
            if ref is None:
                continue
            data = lookup(ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f'{kind.lower()} "{ref["name"]}" not found')
            for key, item in data.items():
                if ENV_NAME.match(prefix + key):
                    env[prefix + key] = item
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            value = resource_value(pod, container["name"], source["resourceFieldRef"], allocatable or {})
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            value = _from_source("ConfigMap", configmaps, ref["name"], ref["key"], bool(ref.get("optional")))
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = _from_source("Secret", secrets, ref["name"], ref["key"], bool(ref.get("optional")))
        else:
            raise EnvError(f"env {name}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args with ``$(VAR)`` expanded. There is no image to take an entrypoint from, so a command is required."""
    command = [expand(str(a), env) for a in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    if not command:
        raise StartError(
            f"container {container.get('name')!r} has no command: the dev node runs commands in the project's "
            f"environment and cannot run the entrypoint of image {container.get('image')!r}; set `command`"
        )
    return command + args


class StartError(Exception):
    """The container could not be started (the runtime's StartError, exit code 128)."""


# ---------------------------------------------------------------------------------------------
# Termination message


def termination_message(file_text: str, log_text: str, policy: str | None, exit_code: int) -> str:
    """What the kubelet puts in ``state.terminated.message``: the file, or the log's tail when the policy asks for it."""
    message = file_text[:TERMINATION_MESSAGE_LIMIT]
    if not message.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
        tail = "\n".join(log_text.splitlines()[-FALLBACK_LOG_LINES:])
        message = tail[-FALLBACK_LOG_BYTES:]
    return message


def exit_code_of(returncode: int) -> int:
    """Popen's returncode (negative for a signal) as a container runtime reports it (128 + signal)."""
    return 128 - returncode if returncode < 0 else returncode


# ---------------------------------------------------------------------------------------------
# Status


@dataclass
class ContainerRun:
    """What the node knows of one container; the input to the status it reports."""

    name: str
    image: str = ""
    state: str = "waiting"  # waiting | running | terminated
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    restart_count: int = 0
    last_state: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.state == "terminated" and self.exit_code == 0

    def container_id(self, pod_uid: str) -> str:
        return f"lorasweep-dev://{pod_uid}-{self.name}-{self.restart_count}"

    def terminated_state(self) -> dict[str, Any]:
        terminated: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.message:
            terminated["message"] = self.message
        return {"terminated": terminated}

    def state_dict(self) -> dict[str, Any]:
        if self.state == "running":
            return {"running": {"startedAt": self.started_at}}
        if self.state == "terminated":
            return self.terminated_state()
        waiting: dict[str, Any] = {"reason": self.waiting_reason}
        if self.waiting_message:
            waiting["message"] = self.waiting_message
        return {"waiting": waiting}

    def status(self, pod_uid: str, init: bool = False) -> dict[str, Any]:
        ready = self.succeeded if init else self.state == "running"
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": ready,
            "restartCount": self.restart_count,
            "state": self.state_dict(),
            "lastState": self.last_state,
        }
        if self.state != "waiting":
            status["containerID"] = self.container_id(pod_uid)
        if not init:
            status["started"] = self.state == "running"
        return status


def pod_phase(
    restart_policy: str, init: list[ContainerRun], main: list[ContainerRun], stopped_for_deletion: bool = False
) -> str:
    """The kubelet's phase rules for the container states it knows."""
    never = restart_policy == "Never"
    if any(c.state == "terminated" and not c.succeeded for c in init) and never:
        return "Failed"
    if stopped_for_deletion and all(c.state != "running" for c in init + main):
        # A deleted pod whose containers have stopped goes to a terminal phase before it is removed.
        started = [c for c in main if c.state == "terminated"]
        return "Succeeded" if started and all(c.succeeded for c in main) else "Failed"
    if not all(c.succeeded for c in init):
        return "Pending"
    if main and all(c.state == "terminated" for c in main):
        if all(c.succeeded for c in main) and restart_policy != "Always":
            return "Succeeded"
        if never:
            return "Failed"
        return "Running"  # restarting
    if any(c.state in ("running", "terminated") for c in main):
        return "Running"
    return "Pending"


def _condition(
    kind: str, ok: bool, now: str, previous: Mapping[str, Mapping[str, Any]], reason: str = ""
) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(kind, {})
    transition = before.get("lastTransitionTime") if before.get("status") == status else None
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": transition or now,
    }
    if reason and not ok:
        condition["reason"] = reason
    return condition


def pod_status(
    pod: Mapping[str, Any],
    init: list[ContainerRun],
    main: list[ContainerRun],
    now: str,
    start_time: str,
    stopped_for_deletion: bool = False,
    pod_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """The pod's status as a kubelet would report it, for a strategic-merge patch."""
    uid = pod["metadata"]["uid"]
    restart_policy = pod.get("spec", {}).get("restartPolicy", "Always")
    phase = pod_phase(restart_policy, init, main, stopped_for_deletion)
    previous = {c["type"]: c for c in pod.get("status", {}).get("conditions") or []}
    terminal = phase in ("Succeeded", "Failed")
    initialized = all(c.succeeded for c in init)
    all_running = bool(main) and all(c.state == "running" for c in main)
    not_ready = "PodCompleted" if terminal else "ContainersNotReady"
    conditions = [
        _condition("PodReadyToStartContainers", not terminal, now, previous),
        _condition("Initialized", initialized, now, previous, "ContainersNotInitialized"),
        _condition("Ready", all_running and not terminal, now, previous, not_ready),
        _condition("ContainersReady", all_running and not terminal, now, previous, not_ready),
        _condition("PodScheduled", True, now, previous),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "containerStatuses": [c.status(uid) for c in main],
    }
    if init:
        status["initContainerStatuses"] = [c.status(uid, init=True) for c in init]
    return status
