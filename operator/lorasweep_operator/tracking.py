"""spec.tracking in the sweep's Jobs. Pure.

The operator holds no MLflow credentials and makes no MLflow call: it tells the preparation and the trials where
to log (`MlflowTracking`: server, experiment, the sweep's key and, once the preparation found or created it, the
parent run's id) and gives their pods the keys of spec.tracking.mlflow.credentialsSecret, each by secretKeyRef,
as storage.credentialsSecret's are given. The trainer does the rest (lorasweep_trainer.tracking).
"""

from __future__ import annotations

from typing import Any

from lorasweep_operator.spec import LoraSweepSpec
from lorasweep_trainer.config import MlflowTracking
from lorasweep_trainer.tracking import sweep_key

# The MLflow client reads these from the environment: a token, or a user name and password (all optional, so one
# Secret serves either way and a server without authentication needs none).
CREDENTIAL_KEYS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def for_sweep(
    spec: LoraSweepSpec, namespace: str, sweep: str, sweep_uid: str, parent_run_id: str | None = None
) -> MlflowTracking | None:
    """The MLflow contract of a sweep object's Jobs; None without spec.tracking. The key is the object's (its uid):
    a sweep deleted and created again under the same name gets a parent run of its own."""
    if spec.tracking is None:
        return None
    mlflow = spec.tracking.mlflow
    return MlflowTracking(
        uri=mlflow.uri,
        experiment=mlflow.experiment,
        sweep_key=sweep_key(namespace, sweep, sweep_uid),
        parent_run_id=parent_run_id,
    )


def for_local(spec: LoraSweepSpec, namespace: str, sweep: str, results: str) -> MlflowTracking | None:
    """`lorasweep run`'s: keyed by the results' folder, so resuming a run logs under the same parent run."""
    if spec.tracking is None:
        return None
    mlflow = spec.tracking.mlflow
    return MlflowTracking(uri=mlflow.uri, experiment=mlflow.experiment, sweep_key=sweep_key(namespace, sweep, results))


def credential_env(spec: LoraSweepSpec) -> list[dict[str, Any]]:
    """The credentials Secret's MLflow keys, each by an optional secretKeyRef; nothing else of that Secret."""
    if spec.tracking is None or not spec.tracking.mlflow.credentials_secret:
        return []
    secret = spec.tracking.mlflow.credentials_secret
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for key in CREDENTIAL_KEYS
    ]
