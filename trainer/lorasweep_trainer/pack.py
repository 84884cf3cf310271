"""Packed trials (``spec.packing > 1``): several trials of one sweep in one pod, one after another on its GPU.

The pod's process imports torch, transformers and peft once (about 10 s per process) and then forks one child per
trial, so every trial still runs in a process of its own: its own seed and RNG state, optimizer, artifacts,
metrics.json and termination summary, and a crash (or an out-of-memory kill) takes down only that trial. The
parent itself never runs a torch op, so no thread pool exists yet when it forks.

The pod's termination message holds every trial's summary (`results.PackSummary`). Its exit code: 0 when every
trial succeeded; 1 (retryable: the Job runs the pack again) when any failed for a reason that may pass; else the
permanent code of the failures (2 or 3: the Job's podFailurePolicy ends it). A retried pack skips the trials whose
metrics.json exists (a trial writes it last; `recorded_result`), so a finished trial is never run twice and keeps
its result. A single trial does the same (cli.run_trial).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from lorasweep_trainer import storage
from lorasweep_trainer.config import (
    EXIT_INVALID_CONFIG,
    EXIT_SUCCEEDED,
    MAX_PACKING,
    PERMANENT_EXIT_CODES,
    SWEEP_UID_ENV,
    TERMINATION_LOG_ENV,
    TrialConfig,
)
from lorasweep_trainer.results import METRICS_FILE, PackSummary, TerminationSummary, TrialMetrics, summarize

log = logging.getLogger(__name__)

TRIALS = TypeAdapter(list[TrialConfig])


def _write(summary: PackSummary) -> None:
    from lorasweep_trainer.cli import write_termination

    write_termination(summary)


def _invalid(message: str) -> int:
    log.error("pack invalid message=%s", message)
    _write(
        PackSummary(pack=[TerminationSummary(trial="pack", status="Failed", reason="InvalidConfig", message=message)])
    )
    return EXIT_INVALID_CONFIG


def sweep_uid() -> str | None:
    """The sweep object this pod runs for (`SWEEP_UID_ENV`); None outside a cluster (the local runner)."""
    return os.environ.get(SWEEP_UID_ENV) or None


def recorded_result(cfg: TrialConfig) -> tuple[TrialMetrics, str] | None:
    """The result an earlier attempt of this trial left (its metrics.json, written last, so complete), and its URI;
    None when there is none, it is unreadable (the trial runs and rewrites it), or it belongs to another sweep
    object that had the same name (its uid differs)."""
    uri = storage.join(cfg.output, METRICS_FILE)
    data = storage.read_bytes_if_exists(uri)
    if data is None:
        return None
    try:
        metrics = TrialMetrics.model_validate_json(data)
    except ValidationError:
        return None
    if (metrics.sweep, metrics.trial, metrics.sweep_uid) != (cfg.sweep, cfg.trial, sweep_uid()):
        return None
    return metrics, uri


def finished_before(cfg: TrialConfig) -> TerminationSummary | None:
    """The summary of a trial an earlier attempt finished (`recorded_result`), else None."""
    found = recorded_result(cfg)
    return None if found is None else summarize(*found)


def run_child(
    cfg: TrialConfig, run_trial: Callable[[TrialConfig], int], folder: Path
) -> tuple[int, TerminationSummary]:
    """Fork; the child runs the trial with a termination log of its own; returns (exit code, its summary)."""
    termination = folder / f"{cfg.trial}.json"
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        code = 1
        try:
            os.environ[TERMINATION_LOG_ENV] = str(termination)
            storage.reset_client()  # the parent's connections are the parent's: sharing a socket garbles both
            code = run_trial(cfg)
        except BaseException:
            log.exception("trial crashed trial=%s", cfg.trial)
        finally:
            logging.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    try:
        summary = TerminationSummary.decode(termination.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        summary = TerminationSummary(trial=cfg.trial, status="Failed", reason="Crashed", message=reason)
    return code, summary


def preload() -> None:
    """Import what every trial imports (torch, transformers, peft, safetensors, matplotlib for the confusion
    matrix), once for the pack; importing starts no thread, so forking afterwards is safe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import safetensors.torch  # noqa: F401

    import lorasweep_trainer.train  # noqa: F401


def run_pack(text: str, run_trial: Callable[[TrialConfig], int]) -> int:
    """Run the packed trials of ``text`` (a JSON list of TrialConfig) and leave the pack's termination message."""
    try:
        trials = TRIALS.validate_json(text)
    except ValidationError as error:
        return _invalid(f"invalid packed trial configurations: {error.errors(include_url=False)[:3]}")
    if not 1 <= len(trials) <= MAX_PACKING:
        return _invalid(f"a pack holds 1 to {MAX_PACKING} trials, got {len(trials)}")
    preload()

    summaries: list[TerminationSummary] = []
    codes: list[int] = []
    with tempfile.TemporaryDirectory(prefix="lorasweep-pack-") as folder:
        for cfg in trials:
            earlier = finished_before(cfg)
            if earlier is not None:
                log.info("packed trial finished before, skipped trial=%s", cfg.trial)
                summaries.append(earlier)
                codes.append(EXIT_SUCCEEDED)
                continue
            code, summary = run_child(cfg, run_trial, Path(folder))
            log.info("packed trial done trial=%s status=%s exit_code=%d", cfg.trial, summary.status, code)
            summaries.append(summary)
            codes.append(code)
    _write(PackSummary(pack=summaries))
    failed = [code for code in codes if code != EXIT_SUCCEEDED]
    if not failed:
        return EXIT_SUCCEEDED
    retryable = [code for code in failed if code not in PERMANENT_EXIT_CODES]
    return 1 if retryable else failed[0]
