"""Where trial metrics are read from and the report is written to: a local folder or an s3:// prefix.

The I/O itself is the trainer's storage module (retries, verified and atomic writes), shared so the
operator, the local runner and the trainer agree on what a complete object is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from lorasweep_trainer import storage
from lorasweep_trainer.results import METRICS_FILE, TrialMetrics

log = logging.getLogger(__name__)

CONTENT_TYPES = {".md": "text/markdown; charset=utf-8", ".png": "image/png", ".json": "application/json"}


def load_metrics(source: str) -> tuple[list[TrialMetrics], dict[str, str]]:
    """Every ``metrics.json`` under ``source`` (a folder or an s3:// prefix), sorted by location, and the
    ones that could not be parsed (location -> why): a broken file is reported, never silently dropped."""
    if not storage.is_s3(source) and not Path(source).is_dir():
        raise FileNotFoundError(
            f"{source} is not a folder; give the folder or s3:// prefix holding <trial>/metrics.json"
        )
    trials, problems = [], {}
    for item in storage.list_objects(source):
        if item.name != METRICS_FILE:
            continue
        try:
            trials.append(TrialMetrics.model_validate_json(storage.read_bytes(item.uri)))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(map(str, first["loc"])) or "document"
            problems[item.uri] = (
                f"not a valid lorasweep.metrics/v1 document ({error.error_count()} errors; first: {where}: {first['msg']})"
            )
            log.warning("unreadable metrics uri=%s", item.uri)
    return trials, problems


def write_files(destination: str, files: Mapping[str, bytes]) -> dict[str, str]:
    """Write ``files`` (relative name -> bytes) under ``destination`` in order; returns name -> URI.

    Each file appears whole or not at all. Put report.md last so nobody finds it before its figures.
    """
    uris = {}
    for name, data in files.items():
        uri = storage.join(destination, name)
        storage.write_bytes(uri, data, content_type=CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"))
        if not storage.is_s3(uri):
            Path(uri).chmod(0o644)
        uris[name] = uri
    return uris
