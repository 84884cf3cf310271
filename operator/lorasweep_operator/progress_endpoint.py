"""The operator's progress endpoint: trainers POST each epoch's metrics here (spec.earlyStopping).

Why this way: trial pods get no Kubernetes API rights and no sidecar. A trainer proves who it is with its pod's
projected ServiceAccount token of audience ``lorasweep``; a TokenReview tells the operator the token is valid
for that audience and which pod holds it (the API server binds projected tokens to their pod). The pod's own
trial label must name the trial in the report, so a pod can only report for itself.

What arrives is written onto the trial's Job (annotation ``lorasweep.dev/progress``), so it outlives this
process: a restarted operator reads the same results and makes the same rung decisions. Then a reconcile pass
of the sweep makes the decisions (`early_stopping.decide`) and stops the trials behind.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from lorasweep_operator.kube import ApiError, Kube, ObjectMeta
from lorasweep_operator.rendering import EARLY_STOPPING_ANNOTATION, PROGRESS_ANNOTATION, SWEEP_LABEL, TRIAL_LABEL
from lorasweep_operator.spec import KIND
from lorasweep_trainer.progress import AUDIENCE, PROGRESS_PATH, ProgressReport

log = logging.getLogger(__name__)

BODY_LIMIT = 16 * 1024
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
REVIEW_CACHE_SECONDS = 60.0
PATCH_ATTEMPTS = 5


class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProgressEndpoint:
    """Authenticate, check and record one report; `on_recorded(namespace, sweep)` then runs a pass."""

    def __init__(self, kube: Kube, on_recorded: Callable[[str, str], None]) -> None:
        self.kube = kube
        self.on_recorded = on_recorded
        self._reviews: dict[str, tuple[float, str, str]] = {}  # token -> (until, namespace, pod)
        self._guard = threading.Lock()

    def authenticate(self, token: str) -> tuple[str, str]:
        """(namespace, pod name) of the pod holding `token`, from a TokenReview (cached for a minute)."""
        with self._guard:
            cached = self._reviews.get(token)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1], cached[2]
        status = self.kube.review_token(token, [AUDIENCE])
        username = str((status.get("user") or {}).get("username") or "")
        pods = ((status.get("user") or {}).get("extra") or {}).get(POD_NAME_EXTRA) or []
        if not status.get("authenticated") or AUDIENCE not in (status.get("audiences") or []):
            raise Refused(401, f"token not valid for audience {AUDIENCE}: {status.get('error') or 'not authenticated'}")
        parts = username.split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or len(pods) != 1:
            raise Refused(403, "only a pod-bound ServiceAccount token of a trial pod may report progress")
        with self._guard:
            self._reviews = {k: v for k, v in self._reviews.items() if v[0] > time.monotonic()}
            self._reviews[token] = (time.monotonic() + REVIEW_CACHE_SECONDS, parts[2], pods[0])
        return parts[2], pods[0]

    def handle(self, token: str, body: bytes) -> dict[str, Any]:
        """Record the report; the answer tells the trainer whether its trial has been stopped."""
        if not token:
            raise Refused(401, "no bearer token; send the projected ServiceAccount token of audience lorasweep")
        try:
            report = ProgressReport.model_validate_json(body)
        except ValidationError as error:
            raise Refused(400, f"not a progress report: {error.errors()[0]['msg']}") from None
        namespace, pod_name = self.authenticate(token)
        pod = self.kube.get_pod(namespace, pod_name)
        labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
        if pod is None or labels.get(TRIAL_LABEL) != report.trial or not labels.get(JOB_NAME_LABEL):
            raise Refused(403, f"pod {namespace}/{pod_name} is not trial {report.trial}'s")
        job_name = labels[JOB_NAME_LABEL]
        for _ in range(PATCH_ATTEMPTS):
            job = self.kube.get_job(namespace, job_name)
            owner = ObjectMeta.of(job).owner(KIND) if job is not None else None
            if job is None or owner is None or not (job["metadata"].get("labels") or {}).get(SWEEP_LABEL):
                raise Refused(404, f"trial Job {namespace}/{job_name} not found")
            annotations = job["metadata"].get("annotations") or {}
            decisions = _read(annotations.get(EARLY_STOPPING_ANNOTATION))
            stopped = any(item.get("stop") for item in decisions.values())
            recorded = _read(annotations.get(PROGRESS_ANNOTATION))
            if recorded.get(str(report.epoch)) == report.metrics:
                break  # a retry of a report already written
            recorded[str(report.epoch)] = report.metrics
            text = json.dumps(dict(sorted(recorded.items(), key=lambda item: int(item[0]))), separators=(",", ":"))
            patch = {
                "metadata": {
                    "resourceVersion": job["metadata"]["resourceVersion"],
                    "annotations": {PROGRESS_ANNOTATION: text},
                }
            }
            try:
                self.kube.patch_job(namespace, job_name, patch)
                break
            except ApiError as error:
                if error.code != 409:
                    raise
        else:
            raise Refused(503, "the trial Job kept changing; report again")
        log.info("progress recorded namespace=%s job=%s epoch=%d", namespace, job_name, report.epoch)
        if stopped:
            return {"recorded": True, "stop": True, "reason": "stopped early by an earlier rung decision"}
        # The pass decides now, so the answer can tell the trainer to stop before it starts another epoch.
        self.on_recorded(namespace, owner.name)
        job = self.kube.get_job(namespace, job_name) or job
        decision = _read((job["metadata"].get("annotations") or {}).get(EARLY_STOPPING_ANNOTATION)).get(
            str(report.epoch)
        )
        if decision and decision.get("stop"):
            reason = f"stopped at epoch {report.epoch}: below the rung's cutoff {decision.get('cutoff')}"
            return {"recorded": True, "stop": True, "reason": reason}
        return {"recorded": True, "stop": False}


def _read(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


Handle = Callable[[str, bytes], dict[str, Any]]  # (bearer token, body) -> the answer; raises Refused


def serve(handle: Handle, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - pods reach it
    """Serve `handle` on ``POST /v1/progress`` in a daemon thread (port 0: any free port, see server_address)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the name http.server calls
            return

        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            if self.path != PROGRESS_PATH:
                self._answer(404, {"error": f"POST {PROGRESS_PATH}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > BODY_LIMIT:
                self._answer(413, {"error": f"a report is at most {BODY_LIMIT} bytes"})
                return
            header = self.headers.get("Authorization") or ""
            token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            try:
                answer = handle(token, self.rfile.read(length))
            except Refused as refused:
                log.warning("progress refused code=%d problem=%s", refused.code, refused)
                self._answer(refused.code, {"error": str(refused)})
                return
            except ApiError as error:
                log.warning("progress not recorded error=%s", error)
                self._answer(503, {"error": "the API server could not be reached; report again"})
                return
            self._answer(200, answer)

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="progress-endpoint", daemon=True).start()
    return server
