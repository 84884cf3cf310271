"""A real MLflow tracking server on loopback for the tracking tests: ``mlflow server`` (the full `mlflow` package,
a dev dependency) with its SQL backend (sqlite) and a local artifact root, as a child process.

- ``mlflow_server`` (session): ``.uri`` (http://127.0.0.1:PORT) and ``.client()`` (an `MlflowClient`).
- ``mlflow_down_uri`` (function): the URI of a loopback port nothing listens on: a tracking server that is down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from lorasweep_operator.devcluster.cluster import free_ports

MLFLOW = Path(sys.executable).with_name("mlflow")
# The first start migrates a fresh sqlite database; on a busy 2-core machine that takes about a minute.
STARTUP_TIMEOUT = 240.0


@dataclass
class MlflowServer:
    uri: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def start(folder: Path) -> tuple[MlflowServer, IO[bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    log_path = folder / f"server-{port}.log"
    log = log_path.open("wb")
    command = [
        str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--default-artifact-root", (folder / "artifacts").as_uri(),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return MlflowServer(f"http://127.0.0.1:{port}", process, log_path), log


def healthy(server: MlflowServer) -> bool:
    try:
        with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop(server: MlflowServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=20)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    folder = tmp_path_factory.mktemp("mlflow")
    problem = "not started"
    for _attempt in range(3):  # a port picked here may be taken before the server binds it
        server, log = start(folder)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and server.process.poll() is None and not healthy(server):
            time.sleep(0.5)
        if server.process.poll() is None and healthy(server):
            try:
                yield server
            finally:
                stop(server)
                log.close()
            return
        problem = server.log()
        stop(server)
        log.close()
    raise RuntimeError(f"mlflow server did not start (is the dev extra installed?): {problem}")


@pytest.fixture
def mlflow_down_uri() -> str:
    """A tracking server that is down: a loopback port nobody listens on (taken and released just now)."""
    return f"http://127.0.0.1:{free_ports(1)[0]}"
