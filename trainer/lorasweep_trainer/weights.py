"""The model's weights from where the cluster has them: fetched once per sweep, verified, shared by its trials.

``model.source`` is one of three kinds (`config.model_source_kind`):

- ``hub``: a hub name; ``model.revision`` a branch, tag or commit (default ``main``). The preparation resolves
  the revision to its commit (one API call; with ``HF_HUB_OFFLINE=1``, the ref in the pod's Hugging Face cache),
  downloads that commit's files once and copies them into the cache.
- ``s3``: an ``s3://bucket/prefix/`` holding a ``save_pretrained`` folder: copied once into the cache.
- ``volume``: an absolute path on a volume mounted in the pods: verified in place (every file hashed); trials
  read it directly.

The cache (DESIGN.md "Artifacts": ``<output>/<namespace>/cache/``, beside the clip shards) holds
``models/<key>/<file>`` and, written after every file, the manifest ``models/<key>.json``: the source, the
resolved revision, and each file's size and SHA-256. The key is the SHA-256 of the source and what identifies its
content (the hub commit; an s3 folder's names, ETags and sizes; a volume folder's names, sizes and modification
times), so a new commit or a re-uploaded folder finds no entry instead of a stale one. The revision of an s3 or
volume folder is ``sha256:`` over its files' names and SHA-256s: the same bytes give the same revision wherever
they are.

Only what ``from_pretrained`` needs is taken: the ``*.json`` and ``*.safetensors`` files at the folder's top
level. A folder is complete with config.json and its weights: model.safetensors, or model.safetensors.index.json
and every shard it names. Anything less, a file whose bytes do not match the manifest, or a source that cannot be
reached is `ModelUnavailable` (exit 2, never retried).

Trials (`locate`) never fetch from the source when the preparation did: from an ``s3://`` cache they download
every file of the manifest to local disk (``$LORASWEEP_MODEL_DIR``, default the system temp folder), verifying
its SHA-256 as it arrives, then ``from_pretrained(local_dir)``; a file already there that verifies (packed
trials in one pod, a local re-run) is not downloaded again. A local cache (``lorasweep run``) is verified and read
in place; a volume path is checked against the manifest (every file, its size) and read in place. The preparation
verifies an entry it reuses the same way, and fetches the model again when it does not verify (as the shards).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasweep_trainer import storage
from lorasweep_trainer.config import ConfigError, ModelConfig, ModelWeights

log = logging.getLogger(__name__)

SCHEMA = "lorasweep.model/v1"
MODELS_FOLDER = "models/"
MODEL_DIR_ENV = "LORASWEEP_MODEL_DIR"  # where trials keep the files they download (an emptyDir, say)
FILE_PATTERNS = ("*.json", "*.safetensors")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
DEFAULT_HUB_REVISION = "main"
FULL_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ModelUnavailable(ConfigError):
    """The model cannot be fetched or loaded (no config.json, a missing weight file, a checksum that does not match,
    an unreachable source, HF_HUB_OFFLINE with an empty cache, a wrong name or path): retrying the same pod cannot
    help (exit 2, reason ModelUnavailable)."""


HOW_TO_PROVIDE_WEIGHTS = (
    "provide the weights where the cluster has them: set model.source to an s3://bucket/prefix/ holding a "
    "save_pretrained checkpoint (config.json and model.safetensors, or its index and shards) or to an absolute path "
    "of such a folder on a volume mounted in the pods; or keep a hub name and let the preparation reach "
    "huggingface.co (HF_TOKEN from spec.storage.credentialsSecret for gated models), or fill its Hugging Face cache "
    "(HF_HOME) and keep HF_HUB_OFFLINE=1; model.preset builds the architecture with random weights instead (tests, "
    "benchmarks)"
)


# --- what a folder holds (pure) -------------------------------------------------------------------------------


def wanted_file(name: str) -> bool:
    """A file ``from_pretrained`` needs: a ``*.json`` or ``*.safetensors`` at the folder's top level."""
    return "/" not in name and any(fnmatch.fnmatchcase(name, pattern) for pattern in FILE_PATTERNS)


def missing_parts(names: Iterable[str], index: Mapping[str, Any] | None = None) -> str | None:
    """Why a folder holding ``names`` is no loadable checkpoint, or None when it is complete. ``index``: the
    content of model.safetensors.index.json where the weights are sharded (None: only the names are checked)."""
    present = set(names)
    if not present:
        return f"no model files there (none of {', '.join(FILE_PATTERNS)} at its top level)"
    if CONFIG_FILE not in present:
        return f"no {CONFIG_FILE}"
    if WEIGHTS_FILE in present:
        return None
    if WEIGHTS_INDEX not in present:
        found = sorted(name for name in present if name != CONFIG_FILE) or ["nothing else"]
        return f"no weight file ({WEIGHTS_FILE}, or {WEIGHTS_INDEX} with its shards); found {found[:5]}"
    if index is None:
        return None
    shards = sorted(set((index.get("weight_map") or {}).values()))
    if not shards:
        return f"{WEIGHTS_INDEX} names no shard"
    absent = [shard for shard in shards if shard not in present]
    if absent:
        return f"missing weight file {absent[0]} (of {len(shards)} shards named by {WEIGHTS_INDEX})"
    return None


def cache_key(source: str, identity: Any) -> str:
    """SHA-256 of the source and what identifies its content (a commit, or the files' names, tags and sizes)."""
    return storage.content_key({"schema": SCHEMA, "source": source, "identity": identity})


def content_revision(digests: Mapping[str, str]) -> str:
    """The revision of a folder outside the hub: ``sha256:`` over its files' names and SHA-256s."""
    lines = "".join(f"{name}\0{digest}\n" for name, digest in sorted(digests.items()))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def entry_uri(cache_root: str, key: str) -> tuple[str, str]:
    """(folder, manifest) of cache entry ``key``: ``models/<key>/`` and ``models/<key>.json``."""
    base = storage.join(cache_root, f"{MODELS_FOLDER}{key}")
    return base + "/", base + ".json"


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A cache entry's (or a volume folder's) files, as the preparation verified them."""

    key: str
    source: str
    revision: str
    files: Mapping[str, FileEntry]
    created_at: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_json(self) -> str:
        document = {
            "schema": SCHEMA,
            "key": self.key,
            "source": self.source,
            "revision": self.revision,
            "files": {name: {"bytes": e.size, "sha256": e.sha256} for name, e in sorted(self.files.items())},
            "bytes": self.total_bytes,
            "created_at": self.created_at,
        }
        return json.dumps(document, indent=1)

    @classmethod
    def from_json(cls, text: bytes | str) -> Manifest | None:
        """The manifest, or None when it is no manifest of this schema (unreadable, another version)."""
        try:
            document = json.loads(text)
            if document.get("schema") != SCHEMA:
                return None
            files = {name: FileEntry(int(e["bytes"]), str(e["sha256"])) for name, e in document["files"].items()}
            return cls(document["key"], document["source"], document["revision"], files, document.get("created_at", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass
class FetchStats:
    """What fetching the model took, for the preparation's summary and the trial's metrics.json."""

    files: int = 0
    total_bytes: int = 0
    bytes_fetched: int = 0  # copied from the source (preparation) or the cache (trial); 0 when read in place
    reused: bool = False  # the preparation found a cache entry that verified
    rejected: int = 0  # cached files that failed their checksum (the preparation fetched them again)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, int]:
        """The integer counters, under the names the preparation's stats use."""
        return {
            "model_files": self.files,
            "model_bytes": self.total_bytes,
            "model_bytes_fetched": self.bytes_fetched,
            "model_reused": int(self.reused),
            "model_rejected": self.rejected,
        }


@dataclass(frozen=True)
class Located:
    """Where ``from_pretrained`` reads the model, and what the trial (or preparation) did to get it there."""

    path: str | None  # a local folder; None: model.source at model.revision as written (a hub name, unprepared)
    revision: str | None
    stats: FetchStats = field(default_factory=FetchStats)


def model_dir() -> Path:
    return Path(os.environ.get(MODEL_DIR_ENV) or Path(tempfile.gettempdir()) / "lorasweep-models")


def _unavailable(model: ModelConfig, problem: str) -> ModelUnavailable:
    return ModelUnavailable(f"model.source {model.source!r} cannot be used: {problem}; {HOW_TO_PROVIDE_WEIGHTS}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


# --- the preparation: fetch once into the cache -----------------------------------------------------------------


def prepare(model: ModelConfig, cache_root: str) -> tuple[ModelWeights, Located]:
    """Make the model available to the sweep's trials: copied into the cache (hub, s3) or verified in place
    (volume). Returns what the trials are told (their `TrialConfig.weights`) and the local copy the preparation
    itself loads (its encoder)."""
    started = time.perf_counter()
    kind = model.source_kind
    if kind == "volume":
        weights, located = _prepare_volume(model, cache_root)
    elif kind == "s3":
        weights, located = _prepare_s3(model, cache_root)
    else:
        weights, located = _prepare_hub(model, cache_root)
    located.stats.seconds = round(time.perf_counter() - started, 3)
    log.info(
        "model ready source=%s revision=%s files=%d bytes=%d fetched=%d reused=%s seconds=%.2f",
        model.source, weights.revision, located.stats.files, located.stats.total_bytes,
        located.stats.bytes_fetched, located.stats.reused, located.stats.seconds,
    )  # fmt: skip
    return weights, located


def _reuse(model: ModelConfig, cache_root: str, key: str, rejected: FetchStats) -> tuple[ModelWeights, Located] | None:
    """A cache entry for ``key`` that verifies, on local disk; None when there is none, or when it does not verify
    (counted in ``rejected``: the caller fetches the model again and rewrites it)."""
    folder, manifest_uri = entry_uri(cache_root, key)
    raw = _read_manifest(model, manifest_uri)
    manifest = Manifest.from_json(raw) if raw is not None else None
    if manifest is None or manifest.key != key:
        return None
    stats = FetchStats()
    try:
        path = _materialize(model, folder, manifest, stats)
    except ModelUnavailable as error:
        log.warning("cached model failed its checksum, fetching it again key=%s error=%s", key, error)
        rejected.rejected += 1
        return None
    stats.reused = True
    weights = ModelWeights(uri=folder, manifest=manifest_uri, revision=manifest.revision)
    return weights, Located(str(path), manifest.revision, stats)


def _publish(
    model: ModelConfig,
    cache_root: str,
    key: str,
    revision: str | None,
    local: Path,
    names: Iterable[str],
    hashed: Mapping[str, tuple[int, str]] | None = None,
) -> tuple[ModelWeights, Manifest]:
    """Copy the local files into cache entry ``key``, then write its manifest (last) with their sizes and SHA-256
    (``hashed`` as they were downloaded, else hashed here)."""
    folder, manifest_uri = entry_uri(cache_root, key)
    known = hashed or {}
    files = {name: FileEntry(*(known.get(name) or storage.sha256_hex(local / name))) for name in sorted(names)}
    resolved = revision or content_revision({name: entry.sha256 for name, entry in files.items()})
    manifest = Manifest(key, model.source, resolved, files, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    # A write that fails is the cache's outage, not the model's: it propagates (exit 1, the Job retries).
    for name in files:
        storage.upload_file(local / name, storage.join(folder, name))
    storage.write_bytes(manifest_uri, manifest.to_json().encode(), "application/json")
    return ModelWeights(uri=folder, manifest=manifest_uri, revision=resolved), manifest


def _listing(model: ModelConfig, prefix: str) -> list[storage.StoredObject]:
    """The source folder's top-level files that from_pretrained needs, sorted."""
    try:
        objects = storage.list_objects(prefix)
    except FileNotFoundError as error:
        raise _unavailable(model, str(error)) from error
    except Exception as error:  # unreachable endpoint, access denied: the source cannot be read
        raise _unavailable(model, f"listing it failed ({_first_line(error)})") from error
    root = prefix if storage.is_s3(prefix) else str(Path(prefix)) + "/"
    found = [item for item in objects if wanted_file(item.uri.removeprefix(root))]
    return sorted(found, key=lambda item: item.uri)


def _check_names(model: ModelConfig, names: Iterable[str]) -> None:
    if (problem := missing_parts(names)) is not None:
        raise _unavailable(model, problem)


def _check_index(model: ModelConfig, folder: Path, names: Iterable[str]) -> None:
    names = list(names)
    index = None
    if WEIGHTS_INDEX in names and WEIGHTS_FILE not in names:
        try:
            index = json.loads((folder / WEIGHTS_INDEX).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise _unavailable(model, f"{WEIGHTS_INDEX} is unreadable ({_first_line(error)})") from error
    if (problem := missing_parts(names, index)) is not None:
        raise _unavailable(model, problem)


def _prepare_s3(model: ModelConfig, cache_root: str) -> tuple[ModelWeights, Located]:
    prefix = model.source.rstrip("/") + "/"
    listing = _listing(model, prefix)
    names = {item.uri.removeprefix(prefix): item for item in listing}
    _check_names(model, names)
    key = cache_key(prefix, [[name, item.etag, item.size] for name, item in sorted(names.items())])
    stats = FetchStats(files=len(names))
    if (reused := _reuse(model, cache_root, key, stats)) is not None:
        return reused
    local = model_dir() / key
    hashed = {}
    for name, item in names.items():
        try:
            hashed[name] = storage.download(item.uri, local / name)
        except Exception as error:
            raise _unavailable(model, f"{name} could not be read ({_first_line(error)})") from error
        stats.total_bytes += hashed[name][0]
        stats.bytes_fetched += hashed[name][0]
    _check_index(model, local, names)
    weights, manifest = _publish(model, cache_root, key, None, local, names, hashed)
    return weights, Located(str(local), manifest.revision, stats)


def _prepare_volume(model: ModelConfig, cache_root: str) -> tuple[ModelWeights, Located]:
    folder = Path(model.source)
    if not folder.is_dir():
        raise _unavailable(model, "no such folder in this pod (is its volume mounted here, at this path?)")
    listing = _listing(model, str(folder))
    names = {Path(item.uri).relative_to(folder).as_posix(): item for item in listing}
    _check_names(model, names)
    _check_index(model, folder, names)
    key = cache_key(str(folder), [[name, item.etag, item.size] for name, item in sorted(names.items())])
    files = {name: FileEntry(*storage.sha256_hex(folder / name)) for name in sorted(names)}
    revision = content_revision({name: entry.sha256 for name, entry in files.items()})
    manifest = Manifest(key, model.source, revision, files, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    _, manifest_uri = entry_uri(cache_root, key)
    storage.write_bytes(manifest_uri, manifest.to_json().encode(), "application/json")
    stats = FetchStats(files=len(files), total_bytes=manifest.total_bytes)
    return ModelWeights(uri=str(folder), manifest=manifest_uri, revision=revision), Located(
        str(folder), revision, stats
    )


def resolve_hub_revision(model: ModelConfig) -> str:
    """The commit ``model.revision`` names (default ``main``): as written when it is a full commit hash; else one
    API call, or with HF_HUB_OFFLINE=1 the ref in the local Hugging Face cache."""
    revision = model.revision or DEFAULT_HUB_REVISION
    if FULL_COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi, constants, snapshot_download

    try:
        if constants.HF_HUB_OFFLINE:
            local = snapshot_download(
                model.source, revision=revision, local_files_only=True, allow_patterns=list(FILE_PATTERNS)
            )
            return Path(local).name
        sha = HfApi().model_info(model.source, revision=revision).sha
    except (OSError, ValueError) as error:
        raise _unavailable(model, f"revision {revision!r} could not be resolved ({_first_line(error)})") from error
    if not sha:
        raise _unavailable(model, f"the hub gave no commit for revision {revision!r}")
    return sha


def _prepare_hub(model: ModelConfig, cache_root: str) -> tuple[ModelWeights, Located]:
    commit = resolve_hub_revision(model)
    key = cache_key(model.source, commit)
    rejected = FetchStats()
    if (reused := _reuse(model, cache_root, key, rejected)) is not None:
        return reused
    from huggingface_hub import constants, snapshot_download

    try:
        local = Path(
            snapshot_download(
                model.source,
                revision=commit,
                allow_patterns=list(FILE_PATTERNS),
                local_files_only=constants.HF_HUB_OFFLINE,
            )
        )
    except (OSError, ValueError) as error:
        raise _unavailable(model, f"commit {commit} could not be downloaded ({_first_line(error)})") from error
    names = sorted(p.name for p in local.iterdir() if p.is_file() and wanted_file(p.name))
    _check_index(model, local, names)
    weights, manifest = _publish(model, cache_root, key, commit, local, names)
    stats = FetchStats(
        files=len(names),
        total_bytes=manifest.total_bytes,
        bytes_fetched=manifest.total_bytes,
        rejected=rejected.rejected,
    )
    return weights, Located(str(local), commit, stats)


# --- a trial: load what the preparation fetched ------------------------------------------------------------------


def _read_manifest(model: ModelConfig, uri: str) -> bytes | None:
    try:
        return storage.read_bytes_if_exists(uri)
    except Exception as error:
        raise _unavailable(model, f"its manifest {uri} could not be read ({_first_line(error)})") from error


def _materialize(model: ModelConfig, folder: str, manifest: Manifest, stats: FetchStats) -> Path:
    """The entry's files on local disk, each verified against the manifest: a local cache in place, an s3 one
    downloaded into `model_dir` (files already there that verify are kept)."""
    stats.files, stats.total_bytes = len(manifest.files), manifest.total_bytes
    if not storage.is_s3(folder):
        local = Path(folder)
        for name, entry in manifest.files.items():
            found = storage.sha256_hex(local / name) if (local / name).is_file() else None
            _verify(model, folder, name, entry, found)
        return local
    local = model_dir() / manifest.key
    for name, entry in manifest.files.items():
        path = local / name
        if path.is_file() and path.stat().st_size == entry.size and storage.sha256_hex(path)[1] == entry.sha256:
            continue
        try:
            found = storage.download(storage.join(folder, name), path)
        except Exception as error:  # absent, unreadable: a damaged entry, like a bad checksum
            raise _unavailable(model, f"cached file {name} could not be read ({_first_line(error)})") from error
        stats.bytes_fetched += found[0]
        try:
            _verify(model, folder, name, entry, found)
        except ModelUnavailable:
            path.unlink(missing_ok=True)
            raise
    _check_index(model, local, manifest.files)
    return local


def _verify(model: ModelConfig, folder: str, name: str, entry: FileEntry, found: tuple[int, str] | None) -> None:
    if found is None:
        raise _unavailable(model, f"missing weight file {name} in {folder}")
    size, digest = found
    if (size, digest) != (entry.size, entry.sha256):
        raise _unavailable(
            model,
            f"{name} in {folder} failed its checksum ({size} bytes, SHA-256 {digest[:16]}..., the manifest says "
            f"{entry.size} bytes, {entry.sha256[:16]}...): the cache entry is damaged; create the sweep again and "
            "its preparation verifies the cache and fetches the model again",
        )


def locate(model: ModelConfig, weights: ModelWeights | None) -> Located:
    """Where a trial's ``from_pretrained`` reads the model. With ``weights`` (the preparation fetched it): the
    verified local copy, or the volume path checked against the manifest; the revision must be the one pinned.
    Without (a trial run on its own): a volume path or hub name as it is, an s3 folder fetched from the source."""
    started = time.perf_counter()
    if weights is None:
        located = _locate_unprepared(model)
    else:
        raw = _read_manifest(model, weights.manifest)
        manifest = Manifest.from_json(raw) if raw is not None else None
        if manifest is None:
            raise _unavailable(model, f"no manifest at {weights.manifest} (the preparation's cache entry is gone)")
        if manifest.revision != weights.revision:
            raise _unavailable(
                model, f"the cache holds revision {manifest.revision}, not {weights.revision} that the sweep pinned"
            )
        stats = FetchStats()
        if model.source_kind == "volume":
            _check_in_place(model, Path(weights.uri), manifest)
            stats.files, stats.total_bytes = len(manifest.files), manifest.total_bytes
            located = Located(weights.uri, manifest.revision, stats)
        else:
            located = Located(str(_materialize(model, weights.uri, manifest, stats)), manifest.revision, stats)
    located.stats.seconds = round(time.perf_counter() - started, 3)
    return located


def _check_in_place(model: ModelConfig, folder: Path, manifest: Manifest) -> None:
    """A volume folder still holds the files the preparation hashed (each present, with its size)."""
    for name, entry in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise _unavailable(model, f"missing weight file {name} in {folder}")
        if path.stat().st_size != entry.size:
            raise _unavailable(
                model,
                f"{name} in {folder} has {path.stat().st_size} bytes, {entry.size} when the preparation verified it: "
                "the folder changed during the sweep",
            )


def _locate_unprepared(model: ModelConfig) -> Located:
    kind = model.source_kind
    if kind == "hub":
        return Located(None, model.revision)
    if kind == "volume":
        folder = Path(model.source)
        if not folder.is_dir():
            raise _unavailable(model, "no such folder in this pod (is its volume mounted here, at this path?)")
        found = [Path(item.uri).relative_to(folder).as_posix() for item in _listing(model, str(folder))]
        _check_index(model, folder, found)
        return Located(str(folder), None)
    prefix = model.source.rstrip("/") + "/"
    listing = _listing(model, prefix)
    names = {item.uri.removeprefix(prefix): item for item in listing}
    _check_names(model, names)
    local = model_dir() / cache_key(prefix, [[n, i.etag, i.size] for n, i in sorted(names.items())])
    stats = FetchStats(files=len(names))
    digests = {}
    for name, item in names.items():
        try:
            size, digests[name] = storage.download(item.uri, local / name)
        except Exception as error:
            raise _unavailable(model, f"{name} could not be read ({_first_line(error)})") from error
        stats.total_bytes += size
        stats.bytes_fetched += size
    _check_index(model, local, names)
    log.warning("no preparation fetched the model: this trial read it from its source source=%s", model.source)
    return Located(str(local), content_revision(digests), stats)
