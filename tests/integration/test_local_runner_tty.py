"""`lorasweep run` on a terminal (a pseudo-terminal, as a user's shell gives it): the overall bar with counts
and an ETA, one line per running trial with its phase; after Ctrl-C the printed command resumes the sweep
and runs exactly the count of trials it announced. Real trainer, tiny model, synthetic clips."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shlex
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_local_runner import tiny_sweep

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
ETA = re.compile(r"ETA \d+m\d\ds")


def sweep_file(folder: Path, clips: Path) -> Path:
    """Three trials, one at a time; 12 epochs of 12 clips through the whole model (featureCache: off; on cached
    encoder features an epoch of the tiny model takes a few milliseconds), so the runner's 0.5 s redraws catch
    an epoch."""
    document: dict[str, Any] = tiny_sweep(clips)
    document["metadata"]["name"] = "tty"
    spec = document["spec"]
    spec["dataset"]["videosPerClass"] = 8
    spec["training"]["epochs"] = 12
    spec["featureCache"] = "off"
    spec["search"] = {"list": [{"learningRate": 1.0e-2}, {"learningRate": 3.0e-3}, {"learningRate": 1.0e-3}]}
    path = folder / "sweep file.yaml"  # a space: the printed command must quote it
    path.write_text(yaml.safe_dump(document))
    return path


class Terminal:
    """A process on a 120x40 pseudo-terminal, its output collected as it comes."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        main, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
        self.process = subprocess.Popen(command, stdin=child, stdout=child, stderr=child, cwd=cwd, env=env)
        os.close(child)
        self.main = main
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.main, 65536)
            except OSError:  # EIO: the process closed the terminal
                return
            if not data:
                return
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def wait_for(self, done: object, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not (done() if callable(done) else done):
            assert self.process.poll() is None, f"exited {self.process.returncode} before {what}:\n{self.text}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{self.text}"
            time.sleep(0.2)

    def finish(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        os.close(self.main)
        return code


def test_a_terminal_shows_progress_and_ctrl_c_prints_a_working_resume_command(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    subprocess.run(
        [BIN / "lorasweep-trainer", "synth", str(clips), "--actions", "8,9,23", "--clips-per-action", "8"],
        check=True,
        capture_output=True,
    )
    sweep = sweep_file(tmp_path, clips)
    out = tmp_path / "out"
    command = [str(BIN / "lorasweep"), "run", sweep.name, "--out", "out", "--device", "cpu"]
    terminal = Terminal(command, cwd=tmp_path)

    def finished() -> list[Path]:
        return list(out.glob("trials/*/metrics.json"))

    terminal.wait_for(lambda: "starting" in terminal.text, "trial in phase starting")
    terminal.wait_for(lambda: finished() and ETA.search(terminal.text), "finished trial and an ETA")
    terminal.wait_for(lambda: terminal.text.count("running (") >= 2, "second trial")
    terminal.process.send_signal(signal.SIGINT)
    assert terminal.finish() == 130, terminal.text
    screen = terminal.text

    assert re.search(r"sweep tty \|[#\s]*\| 0/3 trials  0 done, 1 running, 0 failed, 2 pending; ETA", screen)
    assert re.search(r"\| 1/3 trials  1 done, 1 running, 0 failed, 1 pending; ETA \d+m\d\ds", screen), screen
    assert re.search(r"  [0-9a-f]{10}\s+starting\s+val_acc   -   ", screen)
    assert re.search(r"  [0-9a-f]{10}\s+epoch \d+/12\s+val_acc\s+\d+\.\d%", screen)
    assert "\x1b[" in screen  # redrawn in place on a terminal
    assert " INFO " not in screen  # log lines stay out of the display unless -v

    ran = len(finished())
    match = re.search(r"to resume, run `([^`]+)`: it runs the (\d+) trials? without results", screen)
    assert match, screen
    resume = shlex.split(match.group(1))
    assert resume == [str(BIN / "lorasweep"), "run", sweep.name, "--out", "out", "--device", "cpu"]
    assert int(match.group(2)) == 3 - ran

    # The printed command, run as printed (from the same folder), off a terminal: plain lines, no redraws.
    rerun = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"sweep tty: 3 trials, {ran} finished before (skipped)" in rerun.stdout
    assert len(re.findall(r"^trial [0-9a-f]{10} running ", rerun.stdout, re.MULTILINE)) == 3 - ran, rerun.stdout
    assert "\x1b[" not in rerun.stdout and "\r" not in rerun.stdout
    assert re.search(r"succeeded in \d+m\d\ds val_acc=\S+ \(.*\) \[3 done, 0 running, 0 failed; ETA", rerun.stdout)
    assert len(finished()) == 3
