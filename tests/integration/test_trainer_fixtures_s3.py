"""The shared S3 fixtures talk to a real S3-protocol server over HTTP."""

from __future__ import annotations

import os

import boto3
import pytest

pytestmark = pytest.mark.integration


def test_bucket_round_trip(s3_server, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read() == b"hello"
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")


def test_env_reaches_the_server(monkeypatched_s3_env, s3_bucket: str) -> None:
    assert os.environ["AWS_ENDPOINT_URL_S3"] == monkeypatched_s3_env.endpoint_url
    # boto3 picks the endpoint and credentials up from the env alone, as the trainer pod does.
    names = [bucket["Name"] for bucket in boto3.client("s3").list_buckets()["Buckets"]]
    assert s3_bucket in names
