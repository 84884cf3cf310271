"""One trial's configuration: the contract between the operator and the trainer.

The operator renders a `TrialConfig` into the Job's ``LORASWEEP_TRIAL`` env var as JSON; the trainer
parses it with this same model. This module must not import torch, so the operator can share it.
Field names are snake_case in Python and camelCase on the wire, matching the LoraSweep CRD.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

TRIAL_ENV = "LORASWEEP_TRIAL"
TERMINATION_LOG_ENV = "LORASWEEP_TERMINATION_LOG"
# The uid of the sweep object a trial pod runs for (set by the operator, not in TrialConfig, so a trainer image
# older than the operator still reads its configuration). A metrics.json carries it: a retried or repeated
# attempt of a finished trial keeps that result, while a sweep recreated under the same name trains again.
SWEEP_UID_ENV = "LORASWEEP_SWEEP_UID"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096
# Where the trainer makes its scratch folder (default: the system temp folder); the local runner
# points it into the trial's own folder to follow the event log while the trial runs.
WORK_DIR_ENV = "LORASWEEP_WORK_DIR"

# Trainer exit codes. 2 and 3 are permanent: the Job's podFailurePolicy fails the Job on them.
EXIT_SUCCEEDED = 0
EXIT_INVALID_CONFIG = 2
EXIT_DATASET_UNUSABLE = 3
EXIT_STOPPED = 4  # stopped early by the sweep's spec.earlyStopping (the progress endpoint said so)
PERMANENT_EXIT_CODES = (EXIT_INVALID_CONFIG, EXIT_DATASET_UNUSABLE, EXIT_STOPPED)


class ConfigError(ValueError):
    """The trial configuration is well-formed but cannot run here, e.g. a LoRA target module this model lacks
    (exit 2: retrying cannot help)."""


DEFAULT_MODEL = "facebook/vjepa2-vitl-fpc16-256-ssv2"
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
REST: Final = "rest"

ObjectiveMetric = Literal["val_accuracy", "val_macro_f1", "val_loss"]
Goal = Literal["maximize", "minimize"]
ModelPreset = Literal["tiny", "vjepa2-vitl-256"]


class Contract(BaseModel):
    """camelCase on the wire, snake_case in code, unknown fields rejected, values immutable."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class LoraConfig(Contract):
    rank: Annotated[int, Field(ge=1, le=1024)] = 16
    alpha: Annotated[float, Field(gt=0)] = 32.0
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.10
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("targetModules must name at least one module, for example [q_proj, v_proj]")
        return value


class TrainingConfig(Contract):
    """Defaults are the reference sweep's baseline."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 5
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 1
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 4
    learning_rate: Annotated[float, Field(gt=0, le=1.0)] = 2.0e-4
    weight_decay: Annotated[float, Field(ge=0, le=1.0)] = 0.01
    lora: LoraConfig = LoraConfig()
    scheduler: Literal["cosine", "constant"] = Field(
        default="cosine", description="after warmup: cosine decay to 0, or the constant learning rate"
    )
    warmup_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.1, description="share of the optimizer steps with a linear warmup from 0"
    )


class SplitConfig(Contract):
    train: Annotated[float, Field(gt=0, lt=1)] = 0.70
    val: Annotated[float, Field(gt=0, lt=1)] = 0.15
    test: Annotated[float, Field(gt=0, lt=1)] = 0.15

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must sum to 1 (train + val + test = {total:g})")
        return self


ClassSpec = list[Annotated[int, Field(ge=1, le=120)]] | Literal["rest"]


def reference_classes() -> dict[str, ClassSpec]:
    """The reference sweep's four classes: NTU actions 8, 9, 23 and everything else."""
    return {"sit_down": [8], "stand_up": [9], "waving": [23], "other": REST}


class DatasetConfig(Contract):
    source: str = Field(min_length=1, description="s3://bucket/prefix/ or a local folder of NTU clips")
    classes: dict[str, ClassSpec] = Field(default_factory=reference_classes)
    videos_per_class: Annotated[int, Field(ge=1, le=100_000)] = 50
    split: SplitConfig = SplitConfig()
    seed: int = 42
    max_corrupt_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.10

    @field_validator("classes")
    @classmethod
    def _valid_classes(cls, value: dict[str, ClassSpec]) -> dict[str, ClassSpec]:
        if len(value) < 2:
            raise ValueError("classes needs at least two entries, for example {sit_down: [8], other: rest}")
        rest = [name for name, actions in value.items() if actions == REST]
        if len(rest) > 1:
            raise ValueError(f"only one class may be 'rest', got {rest}")
        seen: dict[int, str] = {}
        for name, actions in value.items():
            if isinstance(actions, str):
                continue
            if not actions:
                raise ValueError(f"class {name!r} lists no action ids; give ids like [8] or 'rest'")
            for action in actions:
                if action in seen:
                    raise ValueError(f"action {action} is in both {seen[action]!r} and {name!r}")
                seen[action] = name
        return value

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)


# model.source: a hub repository id (``org/name``), an ``s3://bucket/prefix/`` holding a save_pretrained folder,
# or an absolute path on a volume mounted in the pods. Hub ids: one or two names of letters, digits, ".", "_", "-".
HUB_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$"
ModelSourceKind = Literal["hub", "s3", "volume"]
# Fields ModelConfig once had, with the name that replaced each: a spec that still writes one is told which.
RENAMED_MODEL_FIELDS: Final = {"name": "source"}


def model_source_kind(source: str) -> ModelSourceKind:
    """Where ``model.source`` points: the hub, object storage or a mounted volume."""
    if source.startswith("s3://"):
        return "s3"
    if source.startswith("/"):
        return "volume"
    return "hub"


class ModelConfig(Contract):
    source: str = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        max_length=1024,
        description="a hub name (org/name), s3://bucket/prefix/ holding a save_pretrained folder, or an absolute "
        "path on a volume mounted in the pods",
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="hub branch, tag or commit; the preparation resolves it to a commit that every trial uses",
    )
    preset: ModelPreset | None = Field(
        default=None, description="build this architecture with random weights instead of loading `source`"
    )
    frames_per_clip: Annotated[int, Field(ge=2, le=128)] = 8

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, value: object) -> object:
        if isinstance(value, dict):
            for old, new in RENAMED_MODEL_FIELDS.items():
                if old in value:
                    raise ValueError(
                        f"model.{old} was renamed to model.{new}: write model.{new} (a hub name, "
                        "s3://bucket/prefix/ or an absolute path)"
                    )
        return value

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        kind = model_source_kind(value)
        if kind == "s3" and not value.removeprefix("s3://").split("/", 1)[0]:
            raise ValueError(f"model.source {value!r} names no bucket; write s3://bucket/prefix/")
        if kind == "hub" and not re.fullmatch(HUB_NAME_PATTERN, value):
            raise ValueError(
                f"model.source {value!r} is neither a hub name (org/name), an s3://bucket/prefix/ nor an absolute "
                "path (/models/vjepa2)"
            )
        return value

    @field_validator("frames_per_clip")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"framesPerClip must be even (V-JEPA2 tubelets span 2 frames), got {value}")
        return value

    @model_validator(mode="after")
    def _revision_of_hub_models(self) -> ModelConfig:
        if self.revision is not None and self.source_kind != "hub":
            raise ValueError(
                "model.revision applies to hub names only; an s3:// or volume folder is pinned by its files' "
                "SHA-256 (drop revision)"
            )
        return self

    @property
    def source_kind(self) -> ModelSourceKind:
        return model_source_kind(self.source)

    @property
    def fetched(self) -> bool:
        """Weights to fetch (and verify) before the trials: anything but a preset's random weights."""
        return self.preset is None


class ModelWeights(Contract):
    """Where a trial loads its base model from: what the sweep's preparation fetched and verified, and the
    revision it resolved, the same for every trial of the sweep (lorasweep_trainer.weights)."""

    uri: str = Field(min_length=1, description="the folder: <cache>/models/<key>/, or the volume path itself")
    manifest: str = Field(min_length=1, description="its manifest: every file with its size and SHA-256")
    revision: str = Field(
        min_length=1, description="the resolved revision: a hub commit, or sha256:<digest> of an s3:// or volume folder"
    )


PRESET_PREFIX: Final = "preset:"


class ModelIdentity(Contract):
    """What a trial's model is: its source and resolved revision (for metrics.json, the adapter, tracking)."""

    source: str = Field(description="model.source, or preset:<name> for a preset's random weights")
    revision: str | None = Field(
        default=None, description="the resolved revision (hub commit or sha256:<digest>); unresolved: as written"
    )

    @property
    def is_preset(self) -> bool:
        return self.source.startswith(PRESET_PREFIX)


def model_identity(model: ModelConfig, weights: ModelWeights | None = None) -> ModelIdentity:
    """The one answer to "which model": a preset by name, else the source with the revision the preparation
    pinned (or, without a preparation, the revision as written)."""
    if model.preset is not None:
        return ModelIdentity(source=f"{PRESET_PREFIX}{model.preset}")
    return ModelIdentity(source=model.source, revision=weights.revision if weights is not None else model.revision)


FeatureCacheMode = Literal["auto", "on", "off"]

# Leaf names of every module inside V-JEPA2's encoder (embeddings, layers, final norm), the same for every
# size (a unit test compares them with the tiny preset and the ViT-L shape). A LoRA target with one of these
# names adapts the encoder, whose output then changes with training and cannot be cached.
ENCODER_MODULE_NAMES: Final = frozenset(
    {"embeddings", "patch_embeddings", "proj", "layer", "norm1", "norm2", "attention", "query", "key", "value"}
    | {"dropout", "drop_path", "mlp", "fc1", "fc2", "activation", "layernorm"}
)


def feature_cache_blocker(lora: LoraConfig, encoder_modules: frozenset[str] = ENCODER_MODULE_NAMES) -> str | None:
    """Why the frozen encoder's features cannot be cached for a trial with this LoRA config; None when they can.

    The trainer calls it again with the names of the model it really built (and checks the encoder's dropout and
    drop-path, which only the model's config knows)."""
    inside = sorted(set(lora.target_modules) & encoder_modules)
    if inside:
        return (
            f"training.lora.targetModules {inside} name modules inside the encoder, so its output changes with "
            "training; target only the pooler's q_proj, k_proj, v_proj, out_proj to use the feature cache"
        )
    return None


class CacheConfig(Contract):
    """Where a sweep's shared work lives and how a trial uses it (DESIGN.md "Artifacts": cache/)."""

    uri: str = Field(min_length=1, description="the cache root: <output>/<namespace>/cache/ or a folder")
    features: bool = Field(default=False, description="train the pooler and head on cached encoder outputs")
    reason: str = Field(default="", description="why features are (not) used, for the log and metrics.json")


class MlflowConfig(Contract):
    """An MLflow tracking server and the experiment a sweep's runs go to (spec.tracking.mlflow)."""

    uri: str = Field(min_length=1, max_length=1024, description="the tracking server's URL")
    experiment: str = Field(min_length=1, max_length=500, description="the experiment's name; created when missing")


class MlflowTracking(MlflowConfig):
    """What a trial or the preparation needs to log to MLflow: the sweep's server and experiment, the key that
    finds the sweep's one parent run, and that run's id when the preparation already found or created it.
    Credentials never travel here: the pod reads them from the Secret (MLFLOW_TRACKING_TOKEN, or
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)."""

    sweep_key: str = Field(
        min_length=1, max_length=64, description="tag value of the sweep's parent run: one sweep object, one run"
    )
    parent_run_id: str | None = Field(default=None, max_length=64, description="the parent run, when known")


class TrialConfig(Contract):
    """Everything one trial needs; what the operator writes and the trainer reads."""

    namespace: str = "default"
    sweep: str = Field(min_length=1)
    trial: str = Field(min_length=1, description="the trial id, stable across restarts")
    group: str | None = Field(default=None, description="the search group this trial varies, e.g. learning-rate")
    variant: str | None = Field(default=None, description="what this trial changes, e.g. learningRate=1e-3")
    model: ModelConfig = ModelConfig()
    dataset: DatasetConfig
    training: TrainingConfig = TrainingConfig()
    seed: int = 42
    output: str = Field(min_length=1, description="the trial's own prefix: s3://bucket/.../trials/<trial>/ or a folder")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9400
    prefetch: Annotated[int, Field(ge=1, le=64)] = 4
    io_threads: Annotated[int, Field(ge=1, le=64)] = 4
    cache: CacheConfig | None = Field(default=None, description="read decoded frames or features from here")
    weights: ModelWeights | None = Field(
        default=None, description="the model as the preparation fetched it; None: load model.source directly"
    )
    tracking: MlflowTracking | None = Field(default=None, description="log the trial as an MLflow run")

    @property
    def model_identity(self) -> ModelIdentity:
        return model_identity(self.model, self.weights)


class PrepareConfig(Contract):
    """A sweep's preparation step: fetch the model once, decode every clip once (and encode it once) for all of
    its trials."""

    namespace: str = "default"
    sweep: str = Field(min_length=1)
    model: ModelConfig = ModelConfig()
    dataset: DatasetConfig
    seeds: tuple[int, ...] = Field(default=(42,), min_length=1)
    epochs: Annotated[int, Field(ge=1, le=1000)] = Field(default=5, description="the most epochs any trial runs")
    cache: CacheConfig = Field(description="features: cache the encoder's output (the trials allow it)")
    frames: bool = Field(default=False, description="cache decoded frames too (trials that cannot use features)")
    require_features: bool = Field(default=False, description="featureCache: on; a model that forbids it fails")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    io_threads: Annotated[int, Field(ge=1, le=64)] = 4
    encode_batch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    shards: bool = Field(
        default=True, description="decode (and encode) the clips; False: fetch the model only (a command of one's own)"
    )
    tracking: MlflowTracking | None = Field(default=None, description="find or create the sweep's MLflow parent run")


PREPARE_ENV = "LORASWEEP_PREPARE"
# The report Job's MLflow contract (spec.tracking), a JSON `MlflowTracking`: it finishes the sweep's parent run.
TRACKING_ENV = "LORASWEEP_TRACKING"
# Packed trials (spec.packing > 1): a JSON list of TrialConfig documents, run one after another in one pod.
PACK_ENV = "LORASWEEP_PACK"
MAX_PACKING = 8  # their termination summaries must fit in one termination message together
CACHE_FOLDER = "cache/"


def cache_root(root: str, namespace: str) -> str:
    """``<output>/<namespace>/cache/``: content-keyed, so every sweep of the namespace shares it."""
    return f"{root.rstrip('/')}/{namespace}/{CACHE_FOLDER}"


# A sweep's folders under its output, for the operator, the local runner and the report alike.
TRIALS_FOLDER = "trials/"
REPORT_FOLDER = "report/"


def trial_output(root: str, namespace: str, sweep: str, trial: str) -> str:
    """``<output>/<namespace>/<sweep>/trials/<trial>/`` (DESIGN.md "Artifacts")."""
    return f"{sweep_output(root, namespace, sweep)}{TRIALS_FOLDER}{trial}/"


def sweep_output(root: str, namespace: str, sweep: str) -> str:
    """``<output>/<namespace>/<sweep>/``: the trials and the report live under it."""
    return f"{root.rstrip('/')}/{namespace}/{sweep}/"


def default_goal(metric: str) -> Goal:
    """A loss is minimized, every other objective maximized."""
    return "minimize" if metric == "val_loss" else "maximize"
