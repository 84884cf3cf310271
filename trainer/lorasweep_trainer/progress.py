"""Per-epoch results to the operator, for early stopping across trials (spec.earlyStopping).

When the operator renders ``LORASWEEP_PROGRESS_URL`` (only for sweeps that stop trials early), the trainer
POSTs each epoch's record there as JSON, with the pod's projected ServiceAccount token of audience
``lorasweep`` (the file ``LORASWEEP_PROGRESS_TOKEN`` names) as a bearer token; the operator checks it with a
TokenReview. The pod needs no Kubernetes API rights. Without the URL nothing is sent; a report that cannot
be delivered is logged and dropped: it never fails the trial (it then runs its epochs to the end).

The answer says whether the trial has been stopped at this epoch's rung; then `report_epoch` raises
`TrialStopped` and the trainer exits with ``EXIT_STOPPED`` at once, before another epoch (the operator ends its
Job too; this only saves the time until the pod is gone). `lorasweep run` serves the same endpoint locally.

No torch here: the operator imports `ProgressReport` as the contract.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator

from lorasweep_trainer.config import Contract

if TYPE_CHECKING:
    from lorasweep_trainer.config import TrialConfig
    from lorasweep_trainer.results import EpochMetrics

log = logging.getLogger(__name__)

PROGRESS_URL_ENV = "LORASWEEP_PROGRESS_URL"
PROGRESS_TOKEN_ENV = "LORASWEEP_PROGRESS_TOKEN"
AUDIENCE = "lorasweep"
PROGRESS_PATH = "/v1/progress"
ATTEMPTS = 3
TIMEOUT_SECONDS = 10.0


class TrialStopped(Exception):
    """The sweep's early stopping ended this trial at the epoch just reported."""


class ProgressReport(Contract):
    """One epoch of one trial, as the trainer sends it."""

    trial: str = Field(min_length=1, max_length=63)
    epoch: Annotated[int, Field(ge=1, le=1000)]
    metrics: dict[str, float] = Field(max_length=32)

    @field_validator("metrics")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        # A diverged loss is NaN; JSON (and so the Job annotation and the sweep status) has no NaN.
        return {name: number for name, number in value.items() if math.isfinite(number)}


def report_epoch(cfg: TrialConfig, record: EpochMetrics) -> None:
    """Send `record` to the operator when it asked for progress; raises only `TrialStopped`."""
    url = os.environ.get(PROGRESS_URL_ENV)
    if not url:
        return
    metrics = {name: float(value) for name, value in record.model_dump().items() if name != "epoch"}
    body = ProgressReport(trial=cfg.trial, epoch=record.epoch, metrics=metrics).model_dump_json().encode()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            token = Path(os.environ.get(PROGRESS_TOKEN_ENV, "")).read_text().strip()
            request = urllib.request.Request(
                url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                answer = json.loads(response.read() or b"{}")
            log.info("progress reported epoch=%d stop=%s", record.epoch, answer.get("stop"))
            if answer.get("stop") is True:
                raise TrialStopped(answer.get("reason") or f"stopped early at epoch {record.epoch}")
            return
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500:
                log.warning("progress refused epoch=%d code=%d reason=%s", record.epoch, error.code, error.reason)
                return  # the operator will not take it; retrying cannot help
            problem: object = error
        except (OSError, ValueError) as error:
            problem = error
        log.warning("progress not delivered epoch=%d attempt=%d error=%s", record.epoch, attempt, problem)
        if attempt < ATTEMPTS:
            time.sleep(attempt)
