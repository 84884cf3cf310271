"""Where trial metrics are read from and the report is written to: a local folder or an s3:// prefix.

The I/O itself is the trainer's storage module (retries, verified and atomic writes), shared so the
operator, the local runner and the trainer agree on what a complete object is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lorasweep_operator.report.builder import impossible_values
from lorasweep_trainer import storage
from lorasweep_trainer.results import METRICS_FILE, PEFT_ADAPTER_FILES, TrialMetrics, adapter_uri_beside

log = logging.getLogger(__name__)

CONTENT_TYPES = {".md": "text/markdown; charset=utf-8", ".png": "image/png", ".json": "application/json"}


# Fields the report can do without, read as empty when a metrics.json has them null (the report then
# says what is missing). Fields with a default in the schema are read as that default when null.
REPORT_OPTIONAL: dict[str, object] = {"epochs": [], "per_class": {}, "confusion_matrix": [], "git_commit": "unknown"}


@dataclass
class Loaded:
    """What `read_metrics` found under a source: usable trials, files left out (location -> why), and
    warnings about files read in part (location and field named)."""

    trials: list[TrialMetrics] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    found: int = 0


def load_metrics(source: str) -> tuple[list[TrialMetrics], dict[str, str]]:
    """Every ``metrics.json`` under ``source`` (a folder or an s3:// prefix), sorted by location, and the
    ones that could not be used (location -> why): a broken file is reported, never silently dropped."""
    loaded = read_metrics(source)
    return loaded.trials, loaded.unreadable


def read_metrics(source: str) -> Loaded:
    """`load_metrics` with the count of files found and the warnings about fields that were missing."""
    if not storage.is_s3(source) and not Path(source).is_dir():
        raise FileNotFoundError(
            f"{source} is not a folder; give the folder or s3:// prefix holding <trial>/metrics.json"
        )
    loaded = Loaded()
    listed = storage.list_objects(source)
    present = {item.uri for item in listed}
    for item in listed:
        if item.name != METRICS_FILE:
            continue
        loaded.found += 1
        try:
            document = json.loads(storage.read_bytes(item.uri))
        except ValueError as error:
            loaded.unreadable[item.uri] = f"not JSON ({error})"
            log.warning("unreadable metrics uri=%s", item.uri)
            continue
        missing = _fill_nulls(document) if isinstance(document, dict) else []
        try:
            trial = TrialMetrics.model_validate(document)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(map(str, first["loc"])) or "document"
            loaded.unreadable[item.uri] = (
                f"not a valid lorasweep.metrics/v1 document ({error.error_count()} errors; first: {where}: {first['msg']})"
            )
            log.warning("unreadable metrics uri=%s", item.uri)
            continue
        impossible = impossible_values(trial)
        if impossible:
            loaded.unreadable[item.uri] = f"impossible values: {'; '.join(impossible)}"
            loaded.notes += [f"{item.uri}: {why}; trial {trial.trial} left out of the report" for why in impossible]
            log.warning("impossible metrics uri=%s fields=%s", item.uri, impossible)
            continue
        if missing:
            loaded.notes.append(
                f"{item.uri}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} null; "
                f"trial {trial.trial} is reported without {'it' if len(missing) == 1 else 'them'}"
            )
        # The adapter beside this metrics.json, where it is now (a sweep folder may have been copied since the
        # trainer recorded adapter_uri), and only when its files are there.
        adapter = adapter_uri_beside(item.uri)
        found = all(storage.join(adapter, name) in present for name in PEFT_ADAPTER_FILES)
        loaded.trials.append(trial.model_copy(update={"adapter_uri": adapter if found else None}))
    return loaded


def _fill_nulls(document: dict[str, Any]) -> list[str]:
    """Drop null values the schema has a default for, fill report-optional ones; returns the names filled."""
    missing = []
    for name, info in TrialMetrics.model_fields.items():
        key = info.alias or name
        if key not in document or document[key] is not None:
            continue
        if name in REPORT_OPTIONAL:
            document[key] = REPORT_OPTIONAL[name]
            missing.append(key)
        elif not info.is_required() and info.default is not None:
            del document[key]
            missing.append(key)
    return missing


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
