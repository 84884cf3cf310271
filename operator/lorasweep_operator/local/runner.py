"""`lorasweep run SWEEP.yaml`: the operator's sweep without Kubernetes.

Same planning as the operator; each trial is a local ``lorasweep-trainer train`` process given its
``LORASWEEP_TRIAL``, up to ``--parallel`` at once. Results land where a cluster run puts them
(``<out>/trials/<trial>/``), then the report in ``<out>/report/``.

Resuming is by construction: a trial whose metrics.json exists is finished (the trainer writes it last),
so a re-run skips it. Ctrl-C stops every trial (SIGTERM, then SIGKILL after a grace period); the stopped
trials left no metrics.json and run again next time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, TextIO

from lorasweep_operator.local.progress import (
    STARTING,
    State,
    TrialProgress,
    eta_seconds,
    event,
    overall,
    read_log,
    trial_line,
)
from lorasweep_operator.local.terminal import Screen
from lorasweep_trainer.config import CACHE_FOLDER, PERMANENT_EXIT_CODES, REPORT_FOLDER, TRIALS_FOLDER
from lorasweep_trainer.results import EVENT_LOG

if TYPE_CHECKING:
    from lorasweep_operator.planning import PlannedTrial
    from lorasweep_operator.spec import SweepManifest
    from lorasweep_trainer.config import TrialConfig

EXIT_OK = 0
EXIT_TRIALS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BUSY = 3
EXIT_INTERRUPTED = 130
STOP_GRACE_SECONDS = 20.0
POLL_SECONDS = 0.5
LOCAL_STATE = Path("runs")
LOCK_FILE = "run.lock"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "exit codes: 0 every trial succeeded and the report is written; 1 some trials failed (the report covers "
        "the rest); 2 the sweep file is invalid; 3 another `lorasweep run` is working in the same folder; "
        "130 interrupted (run the same command again to resume)"
    )
    parser.add_argument("sweep_file", metavar="SWEEP.yaml", help="a LoraSweep manifest, as for kubectl apply")
    parser.add_argument(
        "-p",
        "--parallel",
        type=int,
        default=None,
        help="trials at once (default: the sweep's spec.parallelism; with CUDA_VISIBLE_DEVICES listing GPUs, "
        "one GPU per trial and at most that many)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", help="folder or s3:// prefix for trials and report (default: runs/<sweep>)")
    where.add_argument(
        "--to-storage",
        action="store_true",
        help="write under the sweep's spec.storage.output/<namespace>/<sweep>/, as the operator does",
    )
    parser.add_argument("-n", "--namespace", default=None, help="namespace recorded in results (default: the file's)")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="trial device (default: auto)"
    )


def run(args: argparse.Namespace) -> int:
    from lorasweep_operator.planning import plan
    from lorasweep_operator.spec import SpecError, load_sweep_file
    from lorasweep_trainer.config import cache_root, sweep_output

    try:
        manifest = load_sweep_file(args.sweep_file, default_namespace=args.namespace or "default")
        if args.namespace:
            manifest = manifest.model_copy(update={"namespace": args.namespace})
        if manifest.spec.search.from_sweep is not None:
            raise SpecError(
                "search.fromSweep reads a finished sweep's status from the cluster; locally, list the "
                "configurations under search.list instead"
            )
        trials = plan(manifest.spec, manifest.name)
    except (SpecError, OSError) as error:
        print(f"lorasweep run: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.parallel is not None and args.parallel < 1:
        print("lorasweep run: --parallel must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT

    if args.to_storage:
        results = sweep_output(manifest.spec.storage.output, manifest.namespace, manifest.name)
    else:
        results = args.out or str(LOCAL_STATE / manifest.name)
    local = Path(results) if not results.startswith("s3://") else LOCAL_STATE / manifest.name
    gpus = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), args.device)
    parallel = args.parallel or manifest.spec.parallelism
    if gpus:
        parallel = min(parallel, len(gpus))
    options = RunOptions(
        results=results if results.startswith("s3://") else str(Path(results).resolve()),
        state=local.resolve(),
        parallel=parallel,
        device=args.device,
        gpus=gpus,
        cache=cache_root(manifest.spec.storage.output, manifest.namespace) if args.to_storage else None,
        resume_command=resume_command(args),
    )
    return LocalSweep(manifest, trials, options).run()


def program() -> str:
    """How the user called lorasweep (``.venv/bin/lorasweep``, say), so a printed command runs as it is."""
    called = sys.argv[0] if sys.argv else ""
    return called if Path(called).name == "lorasweep" else "lorasweep"


def resume_command(args: argparse.Namespace) -> list[str]:
    """The `lorasweep run` command that picks this run up again: the same file, folder and options."""
    command = [program(), "run", args.sweep_file]
    if args.out:
        command += ["--out", args.out]
    if args.to_storage:
        command.append("--to-storage")
    if args.parallel is not None:
        command += ["--parallel", str(args.parallel)]
    if args.namespace:
        command += ["--namespace", args.namespace]
    if args.device != "auto":
        command += ["--device", args.device]
    return command


def visible_gpus(value: str | None, device: str) -> list[str]:
    """GPUs to hand out one per trial: those CUDA_VISIBLE_DEVICES lists, unless trials run on the CPU."""
    if device == "cpu" or not value:
        return []
    return [gpu.strip() for gpu in value.split(",") if gpu.strip() and gpu.strip() != "-1"]


def trainer_command(subcommand: str = "train") -> list[str]:
    """``lorasweep-trainer SUBCOMMAND`` from this environment (next to this Python), not whatever PATH finds first."""
    script = Path(sys.executable).with_name("lorasweep-trainer")
    if script.exists():
        return [str(script), subcommand]
    return [sys.executable, "-m", "lorasweep_trainer.cli", subcommand]


def metrics_exist(uri: str) -> bool:
    from lorasweep_trainer import storage

    if not storage.is_s3(uri):
        return Path(uri).is_file()
    from botocore.exceptions import ClientError

    bucket, key = storage.split_s3(uri)
    try:
        storage.s3_client().head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


@dataclass(frozen=True)
class RunOptions:
    results: str  # folder or s3:// prefix: trials/<trial>/ and report/ go under it
    state: Path  # local folder for the trainers' logs and scratch space (the results' folder when local)
    parallel: int = 1
    device: str = "auto"
    gpus: Sequence[str] = ()
    command: Sequence[str] = field(default_factory=trainer_command)
    cache: str | None = None  # the preparation's cache; default: cache/ under results
    resume_command: Sequence[str] = ()  # printed after an interrupt; empty: "run the same command again"


@dataclass
class Running:
    progress: TrialProgress
    process: subprocess.Popen[bytes]
    folder: Path
    log: IO[bytes]
    gpu: str | None


class LocalSweep:
    def __init__(
        self, manifest: SweepManifest, trials: Sequence[PlannedTrial], options: RunOptions, out: TextIO | None = None
    ) -> None:
        from lorasweep_operator.planning import trial_config
        from lorasweep_operator.preparation import plan_preparation
        from lorasweep_trainer import storage

        self.manifest = manifest
        self.options = options
        self.out = out or sys.stdout
        self.interactive = self.out.isatty()
        self.stopping = 0
        self.configs: dict[str, TrialConfig] = {}
        self.progress: list[TrialProgress] = []
        # The operator's preparation step, as one local process before the trials (only for the trainer's own
        # command: another command may not read the cache).
        cache = options.cache or storage.join(options.results, CACHE_FOLDER)
        preparation = plan_preparation(manifest.spec, manifest.namespace, manifest.name, trials, cache)
        prepares = list(options.command) == trainer_command()
        self.preparation = preparation.config.model_copy(update={"device": options.device}) if prepares else None
        for trial in trials:
            config = trial_config(
                manifest.spec,
                manifest.namespace,
                manifest.name,
                trial,
                cache=preparation.trial_caches[trial.id] if prepares else None,
            )
            # Local trials share one machine: no fixed metrics port to collide on, the device the user chose.
            self.configs[trial.id] = config.model_copy(
                update={
                    "output": storage.join(options.results, f"{TRIALS_FOLDER}{trial.id}/"),
                    "device": options.device,
                    "metrics_port": 0,
                }
            )
            label = "baseline" if trial.group == "baseline" else f"{trial.group}: {trial.variant}"
            self.progress.append(TrialProgress(trial=trial.id, label=label, epochs=trial.training.epochs))
        self.prepared_code: int | None = None
        self.running: dict[str, Running] = {}
        self.failures: dict[str, str] = {}
        self.free_gpus = list(options.gpus)
        self.screen = Screen(self.out, f"sweep {manifest.name}", len(self.progress), options.parallel, self.interactive)

    # --- the loop ---------------------------------------------------------------------------------------

    def run(self) -> int:
        self.options.state.mkdir(parents=True, exist_ok=True)
        with (self.options.state / LOCK_FILE).open("a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                print(
                    f"lorasweep run: another `lorasweep run` (pid {lock.read().strip() or '?'}) is working in "
                    f"{self.options.state}; wait for it or stop it (Ctrl-C) first",
                    file=sys.stderr,
                )
                return EXIT_BUSY
            lock.truncate(0)
            lock.write(str(os.getpid()))
            lock.flush()
            return self.run_locked()

    def run_locked(self) -> int:
        name = self.manifest.name
        for t in self.progress:
            if metrics_exist(self.metrics_uri(t.trial)):
                t.state = State.DONE_BEFORE
        done = sum(t.state is State.DONE_BEFORE for t in self.progress)
        self.say(
            f"sweep {name}: {plural(len(self.progress), 'trial')}, {done} finished before (skipped), "
            f"{self.options.parallel} at a time; results in {self.options.results}"
        )
        previous = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.pending() and self.preparation is not None and not self.prepare():
                return self.prepare_failed()
            while not self.stopping and (self.pending() or self.running):
                self.launch()
                self.poll()
                self.draw()
                time.sleep(POLL_SECONDS)
        finally:
            if self.running:
                self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.draw()  # the bar left on screen shows the final counts
            self.screen.close()
        if self.stopping:
            self.say(self.interrupted())
            return EXIT_INTERRUPTED
        return self.finish()

    def prepare(self) -> bool:
        """The sweep's shared work, once: ``lorasweep-trainer prepare`` (clips decoded and encoded into the cache).
        False when it failed or was interrupted."""
        from lorasweep_trainer.config import PREPARE_ENV, TERMINATION_LOG_ENV, WORK_DIR_ENV

        assert self.preparation is not None
        folder = self.options.state / "prepare"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "termination.json").unlink(missing_ok=True)
        env = dict(os.environ)
        env[PREPARE_ENV] = self.preparation.model_dump_json(by_alias=True)
        env[TERMINATION_LOG_ENV] = str(folder / "termination.json")
        env[WORK_DIR_ENV] = str(folder)
        self.note(f"preparing: decoding the sweep's clips once into {self.preparation.cache.uri}")
        with (folder / "prepare.log").open("ab") as log:
            process = subprocess.Popen(
                trainer_command("prepare"),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            while process.poll() is None:
                if self.stopping:
                    _signal_group(process, signal.SIGTERM)
                    process.wait()
                    return False
                time.sleep(POLL_SECONDS)
        self.prepared_code = process.returncode
        return process.returncode == 0

    def prepare_failed(self) -> int:
        from lorasweep_trainer.results import PrepareSummary

        if self.stopping:
            self.say(self.interrupted())
            return EXIT_INTERRUPTED
        folder = self.options.state / "prepare"
        try:
            summary = PrepareSummary.model_validate_json((folder / "termination.json").read_text())
            why = f"{summary.reason}: {summary.message}"
        except (OSError, ValueError):
            why = f"exit code {self.prepared_code}"
        self.say(f"preparation failed ({why}); no trial ran. Its log: {folder / 'prepare.log'}")
        return EXIT_BAD_INPUT if self.prepared_code in PERMANENT_EXIT_CODES else EXIT_TRIALS_FAILED

    def interrupted(self) -> str:
        """What to do after Ctrl-C: the next run starts every trial without a metrics.json, the check it makes."""
        left = sum(not metrics_exist(self.metrics_uri(t.trial)) for t in self.progress)
        again = f"`{shlex.join(self.options.resume_command)}`" if self.options.resume_command else "the same command"
        return (
            f"interrupted: finished trials are kept; to resume, run {again}: it runs the "
            f"{plural(left, 'trial')} without results and skips the {len(self.progress) - left} finished"
        )

    def pending(self) -> list[TrialProgress]:
        if self.too_many_failures():
            return []
        return [t for t in self.progress if t.state is State.PENDING]

    def too_many_failures(self) -> bool:
        return len(self.failures) > self.manifest.spec.max_failed_trials

    def metrics_uri(self, trial: str) -> str:
        from lorasweep_trainer import storage
        from lorasweep_trainer.results import METRICS_FILE

        return storage.join(self.configs[trial].output, METRICS_FILE)

    def launch(self) -> None:
        from lorasweep_trainer.config import TERMINATION_LOG_ENV, TRIAL_ENV, WORK_DIR_ENV

        for t in self.pending()[: max(0, self.options.parallel - len(self.running))]:
            folder = self.options.state / "trials" / t.trial
            scratch = folder / "tmp"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            (folder / "termination.json").unlink(missing_ok=True)
            env = dict(os.environ)
            env[TRIAL_ENV] = self.configs[t.trial].model_dump_json(by_alias=True)
            env[TERMINATION_LOG_ENV] = str(folder / "termination.json")
            env[WORK_DIR_ENV] = str(scratch)  # the trainer's event log lands here, for the progress display
            # Parallel CPU trials would each start one thread per core and fight over them.
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.options.parallel)))
            gpu = self.free_gpus.pop(0) if self.free_gpus else None
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            log = (folder / "trainer.log").open("ab")
            process = subprocess.Popen(
                list(self.options.command),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the trials in order
                preexec_fn=_die_with_parent,
            )
            t.state, t.started, t.epoch, t.val_accuracy = State.RUNNING, time.monotonic(), 0, None
            t.phase, t.epoch_finished = STARTING, None
            self.running[t.trial] = Running(progress=t, process=process, folder=folder, log=log, gpu=gpu)
            self.note(event(t, time.monotonic()))

    def poll(self) -> None:
        for trial, r in list(self.running.items()):
            self.read_progress(r)
            code = r.process.poll()
            if code is None:
                continue
            self.release(r)
            t = r.progress
            t.finished = time.monotonic()
            if code == 0 and metrics_exist(self.metrics_uri(trial)):
                t.state = State.SUCCEEDED
                t.val_accuracy = self.final_val_accuracy(r)
            else:
                t.state = State.FAILED
                t.reason = self.failure_reason(r, code)
                self.failures[trial] = t.reason
            self.note(event(t, time.monotonic()))

    def read_progress(self, r: Running) -> None:
        logs = sorted((r.folder / "tmp").glob(f"*/{EVENT_LOG}"))
        if not logs:
            return
        state = read_log(logs[-1], r.progress.epochs)
        r.progress.phase = state.phase
        latest = state.latest
        if latest is not None and latest.epoch != r.progress.epoch:
            r.progress.epoch, r.progress.val_accuracy, r.progress.train_loss = (
                latest.epoch,
                latest.val_accuracy,
                latest.train_loss,
            )
            r.progress.epoch_finished = time.monotonic()
            if not self.interactive:
                accuracy = f" val_acc={latest.val_accuracy:.4f}" if latest.val_accuracy is not None else ""
                self.note(f"trial {r.progress.trial} epoch {latest.epoch}/{r.progress.epochs}{accuracy}")

    def final_val_accuracy(self, r: Running) -> float | None:
        """The best epoch's validation accuracy from the trial's termination message (the last epoch's may differ)."""
        from lorasweep_trainer.results import TerminationSummary

        try:
            summary = TerminationSummary.decode((r.folder / "termination.json").read_text())
        except (OSError, ValueError):
            return r.progress.val_accuracy
        return summary.metrics.get("val_accuracy", r.progress.val_accuracy)

    def failure_reason(self, r: Running, code: int) -> str:
        from lorasweep_trainer.config import EXIT_DATASET_UNUSABLE, EXIT_INVALID_CONFIG
        from lorasweep_trainer.results import TerminationSummary

        known = {EXIT_INVALID_CONFIG: "invalid trial configuration", EXIT_DATASET_UNUSABLE: "dataset unusable"}
        why = known.get(code, f"exit code {code}")
        try:
            summary = TerminationSummary.decode((r.folder / "termination.json").read_text())
            if summary.status == "Failed" and summary.message:
                return f"{why}: {summary.message}"
        except (OSError, ValueError):
            pass
        tail = [line for line in (r.folder / "trainer.log").read_text(errors="replace").splitlines() if line.strip()]
        last = f": {tail[-1].strip()[:300]}" if tail else ""
        return f"{why}{last} (log: {r.folder / 'trainer.log'})"

    def release(self, r: Running) -> None:
        r.log.close()
        shutil.rmtree(r.folder / "tmp", ignore_errors=True)
        if r.gpu is not None:
            self.free_gpus.append(r.gpu)
        del self.running[r.progress.trial]

    # --- stopping ---------------------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping += 1
        if self.stopping > 1:
            for r in self.running.values():
                _signal_group(r.process, signal.SIGKILL)

    def stop_all(self) -> None:
        """SIGTERM every trial's process group, SIGKILL what is left after the grace period."""
        self.say(f"stopping {plural(len(self.running), 'running trial')}")
        for r in self.running.values():
            _signal_group(r.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for r in list(self.running.values()):
            try:
                r.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(r.process, signal.SIGKILL)
                r.process.wait()
            # A trial that finished publishing before the signal keeps its result; the rest run again.
            finished = r.process.returncode == 0 and metrics_exist(self.metrics_uri(r.progress.trial))
            r.progress.state = State.SUCCEEDED if finished else State.PENDING
            self.release(r)

    # --- the end ----------------------------------------------------------------------------------------

    def finish(self) -> int:
        from lorasweep_operator.report import publish_sweep_report
        from lorasweep_trainer import storage

        succeeded = sum(t.state in (State.SUCCEEDED, State.DONE_BEFORE) for t in self.progress)
        self.say(f"sweep {self.manifest.name}: {succeeded} succeeded, {len(self.failures)} failed")
        if self.too_many_failures():
            skipped = sum(t.state is State.PENDING for t in self.progress)
            self.say(
                f"stopped launching after {plural(len(self.failures), 'failure')} (maxFailedTrials="
                f"{self.manifest.spec.max_failed_trials}); {plural(skipped, 'trial')} not run"
            )
        for trial, reason in self.failures.items():
            self.say(f"  failed {trial}: {reason}")
        if not succeeded:
            self.say("no trial succeeded, so there is no report")
            return EXIT_TRIALS_FAILED
        objective = self.manifest.spec.objective
        uri = publish_sweep_report(
            storage.join(self.options.results, TRIALS_FOLDER),
            storage.join(self.options.results, REPORT_FOLDER),
            objective.metric,
            objective.resolved_goal,
            sweep=self.manifest.name,
            failed=self.failures,
            trials=[t.trial for t in self.progress],
            class_actions=self.manifest.spec.dataset.classes,
        )
        self.say(f"report: {uri}")
        return EXIT_TRIALS_FAILED if self.failures else EXIT_OK

    # --- the terminal -----------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        self.screen.say(line)

    def note(self, line: str) -> None:
        """An event line; off a terminal it carries the overall counts and ETA the live block would show."""
        self.say(line if self.interactive else f"{line} [{self.summary()}]")

    def summary(self) -> str:
        now = time.monotonic()
        eta = eta_seconds(self.progress, len(self.pending()), self.options.parallel, now)
        return overall(self.progress, eta)

    def draw(self) -> None:
        now = time.monotonic()
        finished = sum(t.state not in (State.PENDING, State.RUNNING) for t in self.progress)
        running = [trial_line(r.progress, now) for r in self.running.values()]
        self.screen.update(finished, self.summary(), running)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the runner dies, even by SIGKILL, so no trial is orphaned."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
