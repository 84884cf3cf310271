"""Every Kubernetes API call the operator makes, in one place, so RBAC (deploy/rbac/) can be read off it.

| call                         | verb   | resource                      |
|------------------------------|--------|-------------------------------|
| `get_sweep`                  | get    | lorasweeps.lorasweep.dev      |
| `patch_status`               | patch  | lorasweeps/status             |
| `list_jobs`                  | list   | jobs.batch                    |
| `create_job`                 | create | jobs.batch (trials, report)   |
| `list_pods`                  | list   | pods                          |
| `emit_event`                 | create | events                        |

kopf itself watches (list, watch) lorasweeps and jobs, patches lorasweeps (its progress annotations) and
creates events. Bodies go in and come out as plain camelCase dicts (the API's JSON), never client models:
the pure modules read the same shapes the API returns.

A call that fails transiently (429, 5xx, a dropped connection) is tried again within the call, a few times,
with exponential backoff and jitter, waiting at least what a 429's Retry-After asks. So is a 409 on a status
write: the patch replaces the status whole, so sending it again is right. Then the error goes to the caller.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from lorasweep_operator import telemetry
from lorasweep_operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30
ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_MAX_SECONDS = 8.0
LIST_PAGE = 500
TRANSIENT_CODES = frozenset({0, 408, 425, 429, 500, 502, 503, 504})


class ApiError(Exception):
    """An API call failed; `transient` says whether trying again later can help."""

    def __init__(self, verb: str, resource: str, code: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{verb} {resource} failed: {code} {reason}")
        self.code = code
        self.transient = code in TRANSIENT_CODES
        self.retry_after = retry_after


class _Metadata(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class OwnerReference(_Metadata):
    kind: str = ""
    name: str = ""
    uid: str = ""


class ObjectMeta(_Metadata):
    """The metadata the handlers read off a sweep or Job body, parsed once instead of indexed."""

    name: str = ""
    namespace: str = ""
    uid: str = ""
    generation: int | None = None
    owner_references: list[OwnerReference] = Field(default_factory=list)

    @field_validator("owner_references", mode="before")
    @classmethod
    def _null_is_none(cls, value: Any) -> Any:
        return [] if value is None else value  # a client may send an empty list as null

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ObjectMeta:
        return cls.model_validate(body.get("metadata") or {})

    def owner(self, kind: str) -> OwnerReference | None:
        return next((ref for ref in self.owner_references if ref.kind == kind), None)

    def owned_by(self, uid: str) -> bool:
        return any(ref.uid == uid for ref in self.owner_references)


def load_config() -> None:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    from kubernetes import config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Kube:
    """Raw JSON requests through the client's ApiClient (auth, TLS, retries of urllib3). Thread-safe:
    kopf runs sync handlers in threads. Raw, because typed client models drop fields they do not know."""

    api: Any  # kubernetes.client.ApiClient

    @classmethod
    def from_environment(cls) -> Kube:
        from kubernetes import client

        load_config()
        return cls(client.ApiClient())

    def _request(
        self,
        verb: str,
        resource: str,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._send(verb, resource, method, path, query, body, content_type)
            except ApiError as error:
                again = error.transient or (error.code == 409 and verb == "patch" and path.endswith("/status"))
                if not again or attempt == ATTEMPTS:
                    raise
                backoff = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)) * (0.5 + random.random())
                delay = max(backoff, min(error.retry_after or 0.0, BACKOFF_MAX_SECONDS))
                log.warning(
                    "api retry verb=%s resource=%s attempt=%d delay_s=%.2f error=%s",
                    verb,
                    resource,
                    attempt,
                    delay,
                    error,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _send(
        self,
        verb: str,
        resource: str,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        body: Any,
        content_type: str,
    ) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        started = time.perf_counter()
        try:
            request = self.api.param_serialize(
                method=method,
                resource_path=path,
                query_params=[(key, value) for key, value in (query or {}).items()],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
            response.read()
            if not 200 <= response.status <= 299:
                raise ApiException.from_response(http_resp=response, body=None, data=None)
            return json.loads(response.data)
        except ApiException as error:
            telemetry.API_ERRORS.labels(verb=verb, resource=resource, code=str(error.status)).inc()
            raise ApiError(verb, resource, int(error.status or 0), _reason(error), _retry_after(error)) from error
        except (HTTPError, OSError) as error:
            telemetry.API_ERRORS.labels(verb=verb, resource=resource, code="connection").inc()
            raise ApiError(verb, resource, 0, f"connection error: {error}") from error
        finally:
            telemetry.API_DURATION.labels(verb=verb, resource=resource).observe(time.perf_counter() - started)

    def get_sweep(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = self._request("get", PLURAL, "GET", f"{_sweeps(namespace)}/{name}")
        except ApiError as error:
            if error.code == 404:
                return None
            raise
        return body

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Replace `.status` whole (a JSON patch `add`), so fields that went away are removed too."""
        patch = [{"op": "add", "path": "/status", "value": dict(status)}]
        path = f"{_sweeps(namespace)}/{name}/status"
        self._request(
            "patch", f"{PLURAL}/status", "PATCH", path, body=patch, content_type="application/json-patch+json"
        )

    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self._list("jobs", f"/apis/batch/v1/namespaces/{namespace}/jobs", selector)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self._list("pods", f"/api/v1/namespaces/{namespace}/pods", selector)

    def _list(self, resource: str, path: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        query = {"labelSelector": selector, "limit": str(LIST_PAGE)}
        while True:
            body = self._request("list", resource, "GET", path, query)
            items.extend(body.get("items") or [])
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                return items
            query = {**query, "continue": token}

    def _get(self, resource: str, path: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = self._request("get", resource, "GET", path)
        except ApiError as error:
            if error.code == 404:
                return None
            raise
        return body

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get("jobs", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get("pods", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def patch_job(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch; with metadata.resourceVersion in it, a 409 says someone else wrote first."""
        path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
        body: dict[str, Any] = self._request(
            "patch", "jobs", "PATCH", path, body=dict(patch), content_type="application/merge-patch+json"
        )
        return body

    def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """A TokenReview's status: who the API server says holds `token`, for which audiences."""
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        }
        body = self._request(
            "create", "tokenreviews", "POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=review
        )
        status: dict[str, Any] = body.get("status") or {}
        return status

    def create_job(self, body: Mapping[str, Any]) -> bool:
        """Create the Job; False when it already exists (a previous pass or operator made it)."""
        path = f"/apis/batch/v1/namespaces/{body['metadata']['namespace']}/jobs"
        try:
            self._request("create", "jobs", "POST", path, body=dict(body))
        except ApiError as error:
            if error.code == 409:
                return False
            raise
        return True

    def emit_event(
        self, sweep: Mapping[str, Any], type_: str, reason: str, message: str, component: str = "lorasweep-operator"
    ) -> None:
        """A core/v1 Event on the sweep; failures are logged, never raised (events are best effort)."""
        metadata = sweep.get("metadata") or {}
        namespace = str(metadata.get("namespace"))
        timestamp = now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata.get('name', 'lorasweep')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": sweep.get("apiVersion"),
                "kind": sweep.get("kind"),
                "name": metadata.get("name"),
                "namespace": namespace,
                "uid": metadata.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
        }
        try:
            self._request("create", "events", "POST", f"/api/v1/namespaces/{namespace}/events", body=event)
        except ApiError as error:
            log.warning(
                "event not posted namespace=%s sweep=%s reason=%s error=%s",
                namespace,
                metadata.get("name"),
                reason,
                error,
            )


def _sweeps(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def _reason(error: Any) -> str:
    """The API's own message (it says what was wrong) when the body is a Status, else the HTTP reason."""
    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(error.reason)


def _retry_after(error: Any) -> float | None:
    value = (error.headers or {}).get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff alone
