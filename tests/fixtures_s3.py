"""The S3-protocol server on loopback (moto's server mode), shared by every suite.

- ``s3_server`` (session): ``.endpoint_url`` (http://127.0.0.1:PORT), ``.env`` (AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION=us-east-1, AWS_ENDPOINT_URL_S3) and ``.client()`` (a boto3 S3 client).
- ``s3_bucket`` (function): a fresh, empty bucket name, unique per test.
- ``monkeypatched_s3_env`` (function): sets ``s3_server.env`` in ``os.environ`` for the test; returns the server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lorasweep_trainer.motoserver import MotoServer


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> str:
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def monkeypatched_s3_env(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server
