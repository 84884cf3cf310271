"""An S3-protocol server on loopback (moto's server mode) for tests, the demo and ``lorasweep-trainer bench``.

It runs as a child process (``python -m moto.server``), not as a thread, so its request handling does not
compete with the caller for the GIL and its in-memory state is isolated from any in-process moto mocks.
moto is a dev dependency; importing this module does not need it, starting a server does.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any

log = logging.getLogger(__name__)

ACCESS_KEY = "lorasweep-test"
SECRET_KEY = "lorasweep-test-secret"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    """``with MotoServer() as server: server.client().list_buckets()``."""

    startup_timeout: float = 30.0
    endpoint_url: str = ""
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The env a process needs to reach this server with boto3 (no config files involved)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def start(self) -> MotoServer:
        # A port picked here may be taken before the child binds it; retry with a fresh one.
        last_error = "not started"
        for _attempt in range(5):
            port = _free_port()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            # moto logs every request to stderr: a file, not a pipe nobody drains (a full pipe blocks the server).
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed in stop()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=self._log,
                env=env,
            )
            self.endpoint_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    self._log.seek(0)
                    last_error = self._log.read().decode(errors="replace")
                    break
                try:
                    with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2):
                        pass
                    log.info("moto server started endpoint=%s pid=%d", self.endpoint_url, self._process.pid)
                    return self
                except (urllib.error.URLError, OSError):
                    time.sleep(0.1)
            else:
                last_error = f"no answer within {self.startup_timeout}s"
            self.stop()
        raise RuntimeError(f"could not start the moto S3 server (is moto[server] installed?): {last_error[-2000:]}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
