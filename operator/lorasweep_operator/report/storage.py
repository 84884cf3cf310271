"""Where trial metrics are read from and the report is written to: a local folder or an s3:// prefix.

boto3 takes its endpoint from ``AWS_ENDPOINT_URL_S3`` and its credentials from the usual chain, so the
same code talks to AWS, MinIO and the tests' moto server.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from lorasweep_trainer.results import METRICS_FILE, TrialMetrics

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


class Unreadable(Exception):
    """A metrics.json that exists but cannot be parsed; the loader reports these rather than dropping them."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket; write s3://BUCKET/PREFIX/")
    return bucket, key


def s3_client() -> S3Client:
    import boto3

    return boto3.client("s3")


def load_metrics(source: str) -> tuple[list[TrialMetrics], dict[str, str]]:
    """Every ``metrics.json`` under ``source`` (a folder or an s3:// prefix), sorted by location, and the
    ones that could not be parsed (location -> why)."""
    texts = _s3_texts(source) if is_s3(source) else _folder_texts(Path(source))
    trials, problems = [], {}
    for location, text in sorted(texts.items()):
        try:
            trials.append(TrialMetrics.model_validate_json(text))
        except ValidationError as error:
            problems[location] = f"not a valid lorasweep.metrics/v1 document: {error.error_count()} errors, first: " + (
                f"{'.'.join(map(str, error.errors()[0]['loc']))}: {error.errors()[0]['msg']}"
            )
            log.warning("unreadable metrics location=%s", location)
    return trials, problems


def _folder_texts(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give the folder holding trials/<trial>/metrics.json")
    return {str(path): path.read_text() for path in folder.rglob(METRICS_FILE)}


def _s3_texts(uri: str) -> dict[str, str]:
    bucket, prefix = split_s3(uri)
    client = s3_client()
    texts = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.rsplit("/", 1)[-1] == METRICS_FILE:
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                texts[f"s3://{bucket}/{key}"] = body.decode()
    return texts


def write_files(destination: str, files: Mapping[str, bytes]) -> dict[str, str]:
    """Write ``files`` (relative name -> bytes) under ``destination``; returns name -> URI.

    Each file appears whole or not at all: a folder gets a temporary file renamed into place, S3 a
    single PUT. The report markdown should come last so a reader never finds it before its figures.
    """
    uris = {}
    for name, data in files.items():
        if is_s3(destination):
            bucket, prefix = split_s3(destination)
            key = f"{prefix.rstrip('/')}/{name}" if prefix.strip("/") else name
            content_type = "text/markdown" if name.endswith(".md") else "image/png"
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
            uris[name] = f"s3://{bucket}/{key}"
        else:
            path = Path(destination) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
                handle.write(data)
            os.chmod(handle.name, 0o644)
            os.replace(handle.name, path)
            uris[name] = str(path)
    return uris
