"""The LoraSweep custom resource as typed models: the spec users write and the status the operator keeps.

The trial-level parts (model, dataset, training, LoRA) are the trainer's own contract models from
``lorasweep_trainer.config``; this module adds what only a sweep has: the search, the objective, the
scheduling knobs of the trial Jobs, and the status. Field names are camelCase on the wire and agree
with ``deploy/crd/lorasweeps.lorasweep.dev.yaml`` (a unit test holds the two together).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from lorasweep_trainer.config import (
    MAX_PACKING,
    Contract,
    DatasetConfig,
    FeatureCacheMode,
    Goal,
    LoraConfig,
    MlflowConfig,
    ModelConfig,
    ModelWeights,
    ObjectiveMetric,
    SplitConfig,
    TrainingConfig,
    default_goal,
    feature_cache_blocker,
)

GROUP = "lorasweep.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LoraSweep"
PLURAL = "lorasweeps"
SHORT_NAME = "lsw"

DEFAULT_COMMAND = ("lorasweep-trainer", "train")
DEFAULT_MAX_TRIALS = 10_000
DEFAULT_SEEDS = (42,)
# search.fromSweep takes at most this many; status.outcomes keeps the objectives of this many best trials.
FROM_SWEEP_TOP_MAX = 100
MAX_OPTIMIZE_TRIALS = 1000
GPU_RESOURCE = "nvidia.com/gpu"

__all__ = [
    "API_VERSION",
    "BestTrial",
    "Condition",
    "DatasetConfig",
    "Distribution",
    "EarlyStopping",
    "FromSweep",
    "GridSearch",
    "KIND",
    "LoraConfig",
    "LoraSweepSpec",
    "LoraSweepStatus",
    "MlflowSpec",
    "ModelConfig",
    "Objective",
    "PodOverrides",
    "PreparationStatus",
    "OptimizeSearch",
    "RandomSearch",
    "SearchGroup",
    "SearchSpec",
    "SourceTrial",
    "SpecError",
    "SplitConfig",
    "Storage",
    "Tracking",
    "SweepManifest",
    "TrainingConfig",
    "TrainingOverride",
    "TrialCounts",
    "TrialOutcome",
    "TrialStatus",
    "load_sweep_file",
    "parse_manifest",
    "parse_spec",
]


class SpecError(ValueError):
    """A sweep that cannot run as written; the message says what to change."""


# --- what a trial may change -------------------------------------------------------------------------------


class LoraOverride(Contract):
    rank: Annotated[int, Field(ge=1, le=1024)] | None = None
    alpha: Annotated[float, Field(gt=0)] | None = None
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    target_modules: tuple[str, ...] | None = None


class TrainingOverride(Contract):
    """A partial `TrainingConfig`: only the fields a trial changes against `spec.training`."""

    epochs: Annotated[int, Field(ge=1, le=1000)] | None = None
    batch_size: Annotated[int, Field(ge=1, le=1024)] | None = None
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1.0)] | None = None
    weight_decay: Annotated[float, Field(ge=0, le=1.0)] | None = None
    scheduler: Literal["cosine", "constant"] | None = None
    warmup_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    lora: LoraOverride | None = None

    def changes(self) -> dict[str, Any]:
        """The fields set, nested, camelCase: what `planning.apply_override` merges into the defaults."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _alpha_with_rank(values: list[TrainingOverride], where: str) -> list[TrainingOverride]:
    # Changing the rank alone silently changes alpha/rank (the LoRA scale); the reference always moved them together.
    for index, value in enumerate(values):
        _override_alpha_with_rank(value, f"{where}[{index}]")
    return values


def _override_alpha_with_rank(value: TrainingOverride, where: str) -> None:
    if value.lora is not None and value.lora.rank is not None and value.lora.alpha is None:
        raise ValueError(
            f"{where} sets lora.rank={value.lora.rank} without lora.alpha; give alpha too "
            f"(for example alpha: {2 * value.lora.rank} keeps the reference's alpha = 2 x rank)"
        )


# --- the search ---------------------------------------------------------------------------------------------


class SearchGroup(Contract):
    """One factor at a time: each value is applied to the baseline on its own (the reference's design)."""

    name: str = Field(min_length=1, max_length=63)
    values: list[TrainingOverride] = Field(min_length=1)

    @model_validator(mode="after")
    def _rank_alpha(self) -> SearchGroup:
        _alpha_with_rank(self.values, f"search.groups[{self.name}].values")
        return self


class Range(Contract):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.min < self.max:
            raise ValueError(f"a range needs min < max, got min={self.min:g} max={self.max:g}")
        return self


class Distribution(Contract):
    """Exactly one of: ``choice: [..]``, ``uniform: {min, max}``, ``logUniform: {min, max}`` (min > 0)."""

    choice: list[float] | None = Field(default=None, min_length=1)
    uniform: Range | None = None
    log_uniform: Range | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        options = {"choice": self.choice, "uniform": self.uniform, "logUniform": self.log_uniform}
        given = [name for name, value in options.items() if value is not None]
        if len(given) != 1:
            raise ValueError(f"a distribution needs exactly one of choice, uniform, logUniform; got {given or 'none'}")
        if self.log_uniform is not None and self.log_uniform.min <= 0:
            raise ValueError(f"logUniform needs min > 0, got {self.log_uniform.min:g}")
        return self


class LoraSpace(Contract):
    rank: Distribution | None = None
    alpha: Distribution | None = None
    dropout: Distribution | None = None

    @model_validator(mode="after")
    def _rank_alpha(self) -> LoraSpace:
        _rank_needs_alpha(self.rank, self.alpha, "the search space's lora (random or optimize)")
        return self


class SearchSpace(Contract):
    epochs: Distribution | None = None
    batch_size: Distribution | None = None
    gradient_accumulation_steps: Distribution | None = None
    learning_rate: Distribution | None = None
    weight_decay: Distribution | None = None
    lora: LoraSpace | None = None


def _space_named(space: SearchSpace, where: str) -> None:
    if not space.model_dump(exclude_none=True, exclude={"lora"}) and not (
        space.lora and space.lora.model_dump(exclude_none=True)
    ):
        raise ValueError(f"{where} names no parameter; add one, e.g. learningRate: {{logUniform: ...}}")


class RandomSearch(Contract):
    samples: Annotated[int, Field(ge=1, le=DEFAULT_MAX_TRIALS)]
    seed: int = 0
    space: SearchSpace

    @model_validator(mode="after")
    def _non_empty(self) -> RandomSearch:
        _space_named(self.space, "search.random.space")
        return self


def _rank_needs_alpha(rank: object, alpha: object, where: str) -> None:
    # The same rule as _alpha_with_rank, for a grid's or a random space's lora (CEL: the same rule on each).
    if rank is not None and alpha is None:
        raise ValueError(
            f"{where} varies lora.rank without lora.alpha; give alpha too (alpha = 2 x rank keeps the "
            f"reference's scale)"
        )


class OptimizeSearch(Contract):
    """Model-based search: each next configuration is proposed from the results so far (Optuna's TPE)."""

    algorithm: Literal["tpe"] = "tpe"
    # Each finished proposal keeps its configuration in status.outcomes: 1,000 stay far below the object size limit.
    trials: Annotated[int, Field(ge=1, le=MAX_OPTIMIZE_TRIALS)]
    seed: int = 0
    startup_trials: Annotated[int, Field(ge=1, le=DEFAULT_MAX_TRIALS)] | None = Field(
        default=None, description="trials sampled at random before TPE models the results; default trials / 3, 1-10"
    )
    space: SearchSpace

    @model_validator(mode="after")
    def _non_empty(self) -> OptimizeSearch:
        _space_named(self.space, "search.optimize.space")
        return self

    @property
    def resolved_startup_trials(self) -> int:
        return self.startup_trials if self.startup_trials is not None else max(1, min(10, self.trials // 3))


class LoraGrid(Contract):
    rank: list[Annotated[int, Field(ge=1, le=1024)]] | None = Field(default=None, min_length=1)
    alpha: list[Annotated[float, Field(gt=0)]] | None = Field(default=None, min_length=1)
    dropout: list[Annotated[float, Field(ge=0.0, lt=1.0)]] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _rank_alpha(self) -> LoraGrid:
        _rank_needs_alpha(self.rank, self.alpha, "search.grid.lora")
        return self


class GridSearch(Contract):
    """The cartesian product of every listed value."""

    epochs: list[Annotated[int, Field(ge=1, le=1000)]] | None = Field(default=None, min_length=1)
    batch_size: list[Annotated[int, Field(ge=1, le=1024)]] | None = Field(default=None, min_length=1)
    gradient_accumulation_steps: list[Annotated[int, Field(ge=1, le=1024)]] | None = Field(default=None, min_length=1)
    learning_rate: list[Annotated[float, Field(gt=0, le=1.0)]] | None = Field(default=None, min_length=1)
    weight_decay: list[Annotated[float, Field(ge=0, le=1.0)]] | None = Field(default=None, min_length=1)
    lora: LoraGrid | None = None


class FromSweep(Contract):
    """Re-run the best `top` configurations of a finished sweep in the same namespace (the reference's Phase 2)."""

    name: str = Field(min_length=1, max_length=253)
    top: Annotated[int, Field(ge=1, le=FROM_SWEEP_TOP_MAX)] = 3
    override: TrainingOverride | None = Field(default=None, description="applied on top of each source trial")
    refine: bool = Field(
        default=False,
        description="also run the neighbours of the top trials: in each top trial's group, the midpoint between "
        "its two best values (the reference's 'LR=7.5e-4 between the two best, rank between 32 and 64')",
    )

    @model_validator(mode="after")
    def _rank_alpha(self) -> FromSweep:
        if self.override is not None:
            _override_alpha_with_rank(self.override, "search.fromSweep.override")
        return self


SEARCH_KINDS = ("groups", "grid", "random", "list", "fromSweep", "optimize")


class SearchSpec(Contract):
    include_baseline: bool | None = Field(
        default=None, description="run spec.training itself as the first trial; default true for groups only"
    )
    groups: list[SearchGroup] | None = Field(default=None, min_length=1)
    grid: GridSearch | None = None
    random: RandomSearch | None = None
    explicit: list[TrainingOverride] | None = Field(default=None, alias="list", min_length=1)
    from_sweep: FromSweep | None = None
    optimize: OptimizeSearch | None = None
    seeds: list[int] = Field(default_factory=lambda: list(DEFAULT_SEEDS), min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one_kind(self) -> SearchSpec:
        given = self.kinds()
        if len(given) != 1:
            raise ValueError(
                f"search needs exactly one of {', '.join(SEARCH_KINDS)}; got {', '.join(given) if given else 'none'}"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"search.seeds has duplicates: {self.seeds}")
        if self.optimize is not None and (len(self.seeds) != 1 or self.include_baseline):
            raise ValueError(
                "search.optimize proposes every trial itself: give one seed (search.seeds: [42]) and no includeBaseline"
            )
        if self.explicit is not None:
            _alpha_with_rank(self.explicit, "search.list")
        names = [group.name for group in self.groups or []]
        if len(set(names)) != len(names):
            raise ValueError(f"search.groups names must be unique, got {names}")
        return self

    def kinds(self) -> list[str]:
        fields: dict[str, object] = {"groups": self.groups, "grid": self.grid, "random": self.random}
        fields.update({"list": self.explicit, "fromSweep": self.from_sweep, "optimize": self.optimize})
        return [name for name, value in fields.items() if value is not None]

    @property
    def kind(self) -> str:
        return self.kinds()[0]

    def baseline_included(self) -> bool:
        return self.include_baseline if self.include_baseline is not None else self.groups is not None


# --- the rest of the spec -----------------------------------------------------------------------------------


class Objective(Contract):
    """What ranks the trials. Immutable once the sweep's trials have started (the CRD's CEL rule on the root, with
    status.startTime): every recorded score is of this metric and goal, so a changed objective would rank old
    scores as new ones. To rank by another objective, create a new sweep (search.fromSweep reuses the results)."""

    metric: ObjectiveMetric = "val_accuracy"
    goal: Goal | None = Field(default=None, description="default: minimize for val_loss, maximize otherwise")

    @property
    def resolved_goal(self) -> Goal:
        return self.goal if self.goal is not None else default_goal(self.metric)


class EarlyStopping(Contract):
    """ASHA: at each rung (epoch minEpochs x reductionFactor^k, below the trial's epochs) a trial whose `metric`
    is worse than the best 1/reductionFactor of every result at that rung is stopped."""

    algorithm: Literal["asha"] = "asha"
    metric: ObjectiveMetric | None = Field(
        default=None, description="the per-epoch metric compared; default the objective's"
    )
    reduction_factor: Annotated[int, Field(ge=2, le=100)] = 3
    min_epochs: Annotated[int, Field(ge=1, le=1000)] = 1


class Storage(Contract):
    output: str = Field(min_length=1, description="s3://bucket/prefix/: trials and reports go under it")
    endpoint: str | None = Field(default=None, description="S3 endpoint URL (MinIO, moto); AWS when unset")
    credentials_secret: str | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optional AWS_SESSION_TOKEN, AWS_REGION, "
        "AWS_DEFAULT_REGION, HF_TOKEN): only these keys reach the trial pods, each by secretKeyRef",
    )


class MlflowSpec(MlflowConfig):
    """spec.tracking.mlflow: one parent run per sweep, one child run per trial, in `experiment` on `uri`."""

    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        description="Secret with MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD: "
        "only these keys reach the pods, each by secretKeyRef",
    )

    @field_validator("uri")
    @classmethod
    def _http(cls, value: str) -> str:
        # The CRD's CEL rule says the same: a pod can reach only a server, not a file or database of its own.
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                "tracking.mlflow.uri must be an http:// or https:// URL of an MLflow tracking server "
                "(a file or database URI would stay inside each pod)"
            )
        return value


class Tracking(Contract):
    """Experiment tracking of the sweep's trials; without it nothing is logged anywhere but object storage."""

    mlflow: MlflowSpec


Quantity = int | str


class Resources(Contract):
    limits: dict[str, Quantity] = Field(default_factory=lambda: dict[str, Quantity]({GPU_RESOURCE: 1}))
    requests: dict[str, Quantity] = Field(default_factory=dict)


class Toleration(Contract):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class LocalObjectReference(Contract):
    name: str = Field(min_length=1)


# --- pod overrides (spec.pod) -------------------------------------------------------------------------------
# What a sweep may add to the pods the operator runs for it (trials, packs, the preparation, the report): extra
# environment variables, volumes and their mounts, pod labels and annotations. Everything else stays the
# operator's: the security context, the restart policy, the trial's own variables, the credentials' keys, the GPU
# runtime's variables, the label and annotation keys of Kubernetes and the operator, and every path of the image
# and of the operator (mounts go to /dev/shm or under MOUNT_ROOTS only). These rules hold for every author (the
# CRD's CEL says the same); which of the rest an author may use is the admin's policy (policy.py).

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
VOLUME_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
# The trial's contract and plumbing (LORASWEEP_TRIAL, LORASWEEP_PACK, the termination log, the progress endpoint),
# and the GPU runtime's (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES=all would show a pod every GPU of its node).
RESERVED_ENV_PREFIXES = ("LORASWEEP_", "CUDA_", "NVIDIA_")
# What the operator sets from spec.storage (rendering.CREDENTIAL_KEYS and its ENDPOINT_ENV; a unit test holds them).
STORAGE_ENV_NAMES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "HF_TOKEN",
    "AWS_ENDPOINT_URL_S3",
)
# What the operator sets from spec.tracking.mlflow.credentialsSecret (tracking.CREDENTIAL_KEYS; a unit test holds
# them); spec.pod.env may set them only when that Secret is not named (`LoraSweepSpec._one_tracking_credential`).
TRACKING_ENV_NAMES = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
SHM_PATH = "/dev/shm"
MOUNT_ROOTS = ("/tmp", "/mnt", "/data", "/models", "/cache", "/scratch", "/workspace")
OPERATOR_VOLUME_PREFIX = "lorasweep-"
# Keys of Kubernetes itself and its projects (kubernetes.io, k8s.io, x-k8s.io and their subdomains: the Job
# controller's batch.kubernetes.io/, app.kubernetes.io/, Kueue's queue label, Pod Security's and AppArmor's
# annotations) and the operator's (lorasweep.dev); and the Job controller's legacy pod labels.
RESERVED_KEY_PATTERN = r"^([^/]*\.)?(kubernetes\.io|k8s\.io|x-k8s\.io|lorasweep\.dev)/"
RESERVED_KEYS = ("controller-uid", "job-name")
QUALIFIED_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
RELATIVE_PATH_PATTERN = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
DOT_SEGMENT_PATTERN = r"(^|/)\.\.?(/|$)"
# The admission policy asks the API server about each Secret and ConfigMap a sweep names, and CEL allows only a
# few such questions per expression: one validation per reference, so their number is bounded.
MAX_SECRET_REFS = 4
MAX_CONFIG_MAP_REFS = 4

EnvSource = Literal["value", "secretKeyRef", "configMapKeyRef"]
VolumeType = Literal["emptyDir", "configMap", "persistentVolumeClaim"]


def reserved_env_problem(name: str) -> str | None:
    """Why `name` is the operator's or the GPU runtime's, with what to do instead; None when a sweep may set it."""
    if name.startswith("LORASWEEP_"):
        return (
            f"spec.pod.env {name}: LORASWEEP_ variables are the trial's configuration and the operator's plumbing; "
            "remove it (a trial's settings come from spec.training and spec.search)"
        )
    if name.startswith(("CUDA_", "NVIDIA_")):
        return (
            f"spec.pod.env {name}: CUDA_ and NVIDIA_ variables are set by the GPU runtime for the GPUs the pod was "
            "given; remove it and ask for GPUs in spec.resources.limits"
        )
    if name in STORAGE_ENV_NAMES:
        return (
            f"spec.pod.env {name}: the operator sets {name} from spec.storage (the credentialsSecret key of that "
            "name, or the endpoint); remove it and set it there"
        )
    return None


def mount_path_problem(path: str) -> str | None:
    """Why a volume may not be mounted at `path`; None when it may."""
    clean = re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", path) is not None and re.search(DOT_SEGMENT_PATTERN, path) is None
    if clean and (path == SHM_PATH or any(path == root or path.startswith(f"{root}/") for root in MOUNT_ROOTS)):
        return None
    return (
        f"spec.pod.volumeMounts {path}: mount at {SHM_PATH} or at or under {', '.join(MOUNT_ROOTS)}, as an absolute "
        "path without . or .. parts; elsewhere a volume would shadow the image's code or the operator's files"
    )


def relative_path_problem(where: str, path: str) -> str | None:
    if re.fullmatch(RELATIVE_PATH_PATTERN, path) and not re.search(DOT_SEGMENT_PATTERN, path):
        return None
    return f"{where} {path}: give a relative path without . or .. parts, e.g. config/settings.json"


def reserved_key(key: str) -> bool:
    return key in RESERVED_KEYS or re.match(RESERVED_KEY_PATTERN, key) is not None


def key_problems(field: str, keys: list[str]) -> list[str]:
    """What is wrong with spec.pod.<field>'s keys (labels or annotations), one sentence per kind of problem."""
    problems = []
    malformed = [key for key in keys if len(key) > 316 or not re.fullmatch(QUALIFIED_NAME_PATTERN, key)]
    if malformed:
        problems.append(
            f"spec.pod.{field} {', '.join(malformed)}: a key is an optional DNS prefix and '/', then a name of at "
            "most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    reserved = [key for key in keys if reserved_key(key)]
    if reserved:
        problems.append(
            f"spec.pod.{field} {', '.join(reserved)}: keys under kubernetes.io, k8s.io, x-k8s.io and lorasweep.dev "
            "(and their subdomains), and controller-uid and job-name, belong to Kubernetes and the operator; use a "
            "key of your own, e.g. example.com/team"
        )
    return problems


class KeyRef(Contract):
    """One key of a Secret or ConfigMap of the sweep's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN)
    key: str = Field(min_length=1, max_length=253, pattern=KEY_PATTERN)
    optional: bool | None = None


class EnvValueSource(Contract):
    secret_key_ref: KeyRef | None = None
    config_map_key_ref: KeyRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvValueSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("an env valueFrom needs exactly one of secretKeyRef and configMapKeyRef")
        return self


class PodEnvVar(Contract):
    """An environment variable of every container of the sweep's pods: a value, or a key of a Secret or ConfigMap."""

    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)
    value: str | None = Field(default=None, max_length=8192)
    value_from: EnvValueSource | None = None

    @model_validator(mode="after")
    def _one_source_not_reserved(self) -> PodEnvVar:
        if (self.value is None) == (self.value_from is None):
            raise ValueError(f"spec.pod.env {self.name} needs exactly one of value and valueFrom")
        if (problem := reserved_env_problem(self.name)) is not None:
            raise ValueError(problem)
        return self

    @property
    def source(self) -> EnvSource:
        if self.value_from is None:
            return "value"
        return "secretKeyRef" if self.value_from.secret_key_ref is not None else "configMapKeyRef"


class EmptyDirSource(Contract):
    medium: Literal["", "Memory"] | None = Field(default=None, description="Memory: a tmpfs, e.g. for /dev/shm")
    size_limit: str | None = Field(default=None, pattern=QUANTITY_PATTERN, max_length=64)


class KeyToPath(Contract):
    key: str = Field(min_length=1, max_length=253, pattern=KEY_PATTERN)
    path: str = Field(min_length=1, max_length=256)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        if (problem := relative_path_problem("spec.pod.volumes configMap.items path", value)) is not None:
            raise ValueError(problem)
        return value


class ConfigMapVolumeSource(Contract):
    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN)
    items: list[KeyToPath] | None = Field(default=None, min_length=1, max_length=64)
    optional: bool | None = None


class ClaimVolumeSource(Contract):
    claim_name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN)
    read_only: bool | None = None


class PodVolume(Contract):
    """Exactly one of emptyDir, configMap, persistentVolumeClaim."""

    name: str = Field(min_length=1, max_length=63, pattern=VOLUME_NAME_PATTERN)
    empty_dir: EmptyDirSource | None = None
    config_map: ConfigMapVolumeSource | None = None
    persistent_volume_claim: ClaimVolumeSource | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> PodVolume:
        kinds = [self.empty_dir, self.config_map, self.persistent_volume_claim]
        if sum(kind is not None for kind in kinds) != 1:
            raise ValueError(
                f"spec.pod.volumes {self.name} needs exactly one of emptyDir, configMap, persistentVolumeClaim"
            )
        if self.name.startswith(OPERATOR_VOLUME_PREFIX):
            raise ValueError(
                f"spec.pod.volumes {self.name}: names starting with {OPERATOR_VOLUME_PREFIX} are the operator's "
                "volumes; rename it"
            )
        return self

    @property
    def type(self) -> VolumeType:
        if self.empty_dir is not None:
            return "emptyDir"
        return "configMap" if self.config_map is not None else "persistentVolumeClaim"


class PodVolumeMount(Contract):
    name: str = Field(min_length=1, max_length=63, description="a volume of spec.pod.volumes")
    mount_path: str = Field(min_length=1, max_length=256)
    read_only: bool | None = None
    sub_path: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _paths(self) -> PodVolumeMount:
        if (problem := mount_path_problem(self.mount_path)) is not None:
            raise ValueError(problem)
        if self.sub_path is not None and (
            problem := relative_path_problem("spec.pod.volumeMounts subPath", self.sub_path)
        ):
            raise ValueError(problem)
        return self


class PodOverrides(Contract):
    """spec.pod: what the sweep adds to each of its pods; the rest of the pod is the operator's."""

    env: list[PodEnvVar] = Field(default_factory=list, max_length=64)
    volumes: list[PodVolume] = Field(default_factory=list, max_length=16)
    volume_mounts: list[PodVolumeMount] = Field(default_factory=list, max_length=16)
    labels: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=dict, max_length=32
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(default_factory=dict, max_length=32)

    @model_validator(mode="after")
    def _consistent(self) -> PodOverrides:
        problems = []
        for field, names in (
            ("env", [item.name for item in self.env]),
            ("volumes", [volume.name for volume in self.volumes]),
            ("volumeMounts", [mount.mount_path for mount in self.volume_mounts]),
        ):
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                problems.append(f"spec.pod.{field} {', '.join(repeated)} given more than once; give each once")
        volumes = {volume.name for volume in self.volumes}
        if unknown := [mount.name for mount in self.volume_mounts if mount.name not in volumes]:
            problems.append(
                f"spec.pod.volumeMounts {', '.join(unknown)}: no such volume in spec.pod.volumes; add it there or fix "
                "the name"
            )
        mounted = {mount.name for mount in self.volume_mounts}
        if unmounted := [volume.name for volume in self.volumes if volume.name not in mounted]:
            problems.append(
                f"spec.pod.volumes {', '.join(unmounted)} mounted nowhere; add a volumeMount for it or remove it"
            )
        secrets = sum(item.source == "secretKeyRef" for item in self.env)
        if secrets > MAX_SECRET_REFS:
            problems.append(
                f"spec.pod.env takes more than {MAX_SECRET_REFS} values from Secrets ({secrets}; the admission policy "
                "checks each against your rights); keep the others in the trial's own files"
            )
        config_maps = sum(item.source == "configMapKeyRef" for item in self.env)
        config_maps += sum(volume.type == "configMap" for volume in self.volumes)
        if config_maps > MAX_CONFIG_MAP_REFS:
            problems.append(
                f"spec.pod names ConfigMaps more than {MAX_CONFIG_MAP_REFS} times ({config_maps}, env configMapKeyRef "
                "and configMap volumes; the admission policy checks each against your rights): mount one ConfigMap "
                "as a volume instead of several keys as env"
            )
        problems += key_problems("labels", list(self.labels))
        problems += key_problems("annotations", list(self.annotations))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def secret_names(self) -> list[str]:
        return [
            item.value_from.secret_key_ref.name
            for item in self.env
            if item.value_from and item.value_from.secret_key_ref
        ]

    def config_map_names(self) -> list[str]:
        names = [
            item.value_from.config_map_key_ref.name
            for item in self.env
            if item.value_from and item.value_from.config_map_key_ref
        ]
        return names + [volume.config_map.name for volume in self.volumes if volume.config_map is not None]

    def claim_names(self) -> list[str]:
        return [v.persistent_volume_claim.claim_name for v in self.volumes if v.persistent_volume_claim is not None]


class LoraSweepSpec(Contract):
    image: str = Field(min_length=1, description="the trainer image")
    command: list[str] = Field(default_factory=lambda: list(DEFAULT_COMMAND), min_length=1)
    model: ModelConfig = ModelConfig()
    dataset: DatasetConfig
    training: TrainingConfig = TrainingConfig()
    search: SearchSpec
    objective: Objective = Objective()
    early_stopping: EarlyStopping | None = None
    storage: Storage
    tracking: Tracking | None = None
    parallelism: Annotated[int, Field(ge=1, le=1000)] = 1
    max_failed_trials: Annotated[int, Field(ge=0)] = 3
    max_trials: Annotated[int, Field(ge=1, le=DEFAULT_MAX_TRIALS)] = DEFAULT_MAX_TRIALS
    suspend: bool = False
    resources: Resources = Resources()
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    service_account_name: str | None = None
    pod: PodOverrides | None = Field(
        default=None, description="extra env, volumes, mounts, labels and annotations of the sweep's pods"
    )
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 2
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    queue_name: str | None = Field(default=None, description="Kueue LocalQueue; Jobs are created suspended for it")
    packing: Annotated[int, Field(ge=1, le=MAX_PACKING)] = Field(
        default=1, description="trials per Job: more than 1 runs them one after another in one pod, one import"
    )
    feature_cache: FeatureCacheMode = Field(
        default="auto",
        description="train on the frozen encoder's features computed once: auto (where LoRA leaves the encoder "
        "alone), on (required: a sweep that cannot is invalid), off (decoded frames only)",
    )

    @model_validator(mode="after")
    def _packing_without_early_stopping(self) -> LoraSweepSpec:
        if self.early_stopping is not None and self.packing > 1:
            raise ValueError(
                "earlyStopping ends a stopped trial's Job, which with packing above 1 would end the other trials "
                "of its pack too; set packing: 1 (or drop earlyStopping)"
            )
        return self

    @model_validator(mode="after")
    def _one_tracking_credential(self) -> LoraSweepSpec:
        # The CRD's CEL rule on spec says the same: spec.pod's env comes after the operator's and would win.
        secret = self.tracking.mlflow.credentials_secret if self.tracking is not None else None
        named = [item.name for item in self.pod.env if item.name in TRACKING_ENV_NAMES] if self.pod else []
        if secret and named:
            raise ValueError(
                f"spec.pod.env sets {', '.join(named)}, which the operator sets from "
                f"spec.tracking.mlflow.credentialsSecret ({secret}); give the credentials in one place"
            )
        return self

    @model_validator(mode="after")
    def _feature_cache_possible(self) -> LoraSweepSpec:
        if self.feature_cache != "on":
            return self
        for where, lora in self.lora_configs():
            if (blocker := feature_cache_blocker(lora)) is not None:
                raise ValueError(f"featureCache: on, but {where}: {blocker}; or set featureCache: auto")
        return self

    def lora_configs(self) -> list[tuple[str, LoraConfig]]:
        """spec.training's LoRA config and every one a search value can make (where each comes from)."""
        overrides: list[tuple[str, TrainingOverride | None]] = []
        for group in self.search.groups or []:
            overrides += [(f"search.groups[{group.name}].values[{i}]", v) for i, v in enumerate(group.values)]
        overrides += [(f"search.list[{i}]", value) for i, value in enumerate(self.search.explicit or [])]
        if self.search.from_sweep is not None:
            overrides.append(("search.fromSweep.override", self.search.from_sweep.override))
        found = [("spec.training.lora", self.training.lora)]
        for where, override in overrides:
            if override is not None and override.lora is not None and override.lora.target_modules is not None:
                found.append(
                    (where, self.training.lora.model_copy(update={"target_modules": override.lora.target_modules}))
                )
        return found

    def early_stopping_rule(self) -> tuple[str, Goal] | None:
        """(metric, goal) that ASHA compares, when early stopping is on."""
        if self.early_stopping is None:
            return None
        metric = self.early_stopping.metric or self.objective.metric
        goal = self.objective.resolved_goal if metric == self.objective.metric else default_goal(metric)
        return metric, goal

    @field_validator("command")
    @classmethod
    def _no_empty_args(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("command[0] must name the program to run, e.g. lorasweep-trainer")
        return value

    @model_validator(mode="after")
    def _grid_within_cap(self) -> LoraSweepSpec:
        # The CRD's CEL rule on spec says the same, so an oversized grid is refused when applied.
        grid = self.search.grid
        if grid is None:
            return self
        listed = [v for v in grid.model_dump(exclude_none=True, exclude={"lora"}).values()]
        listed += list((grid.lora.model_dump(exclude_none=True) if grid.lora else {}).values())
        trials = (math.prod(len(values) for values in listed) + int(self.search.baseline_included())) * len(
            self.search.seeds
        )
        if trials > self.max_trials:
            raise ValueError(
                f"search.grid expands to more trials than maxTrials ({trials:,} > {self.max_trials:,}: the product "
                f"of its value counts, times the seeds); narrow the grid or raise spec.maxTrials (at most "
                f"{DEFAULT_MAX_TRIALS:,})"
            )
        return self


# --- status -------------------------------------------------------------------------------------------------


class StatusModel(BaseModel):
    """camelCase like the spec; unknown keys ignored so a newer operator's status never breaks an older one."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# Stopped: ended early by spec.earlyStopping (its own phase: it did not fail, it was behind).
TrialPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Stopped"]
SweepPhase = Literal["Pending", "Preparing", "Running", "Suspended", "Succeeded", "Failed"]
TERMINAL_TRIAL_PHASES: tuple[TrialPhase, ...] = ("Succeeded", "Failed", "Stopped")
TERMINAL_SWEEP_PHASES: tuple[SweepPhase, ...] = ("Succeeded", "Failed")


class Condition(StatusModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class TrialStatus(StatusModel):
    """One row of the trial table."""

    id: str
    job: str
    phase: TrialPhase
    group: str | None = None
    variant: str | None = None
    seed: int
    params: TrainingConfig
    objective: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    best_epoch: int | None = None
    metrics_uri: str | None = None
    reason: str | None = None
    message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    epochs_completed: int | None = Field(default=None, description="epochs that reported; set for stopped trials")


class TrialOutcome(StatusModel):
    """What survives of every finished trial even when the table keeps only the top ones."""

    phase: Literal["Succeeded", "Failed", "Stopped"]
    objective: float | None = None
    rungs: dict[int, float] | None = Field(
        default=None,
        description="the early-stopping metric at each rung epoch the trial reached (spec.earlyStopping), for later "
        "rung decisions; rungs only, so a 10,000-trial sweep's status stays small",
    )
    params: TrainingConfig | None = Field(default=None, description="the trial's configuration (search.optimize)")
    index: int | None = Field(default=None, description="the proposal's position (search.optimize)")


class SourceTrial(StatusModel):
    """A configuration a fromSweep sweep took from its source, best first; frozen in its status when it starts,
    so editing or deleting the source later changes nothing."""

    id: str
    phase: Literal["Succeeded"] = "Succeeded"
    group: str | None = None
    params: TrainingConfig
    objective: float


class TrialCounts(StatusModel):
    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    stopped: int = 0

    def by_phase(self) -> dict[str, int]:
        return {phase: getattr(self, phase.lower()) for phase in get_args(TrialPhase)}


class BestTrial(StatusModel):
    trial: str
    job: str
    group: str | None = None
    variant: str | None = None
    seed: int
    params: TrainingConfig
    metric: ObjectiveMetric
    objective: float
    metrics_uri: str | None = None
    adapter_uri: str | None = Field(
        default=None, description="the trial's adapter folder, beside its metrics.json: lorasweep-trainer predict/merge"
    )
    summary: str = Field(description="'<objective> <variant>', the Best printer column")


class PreparationStatus(StatusModel):
    """The sweep's preparation step (decode once, encode once): its Job and what it left in the cache."""

    job: str
    phase: Literal["Pending", "Running", "Succeeded", "Failed"]
    cache_uri: str
    features: bool = False
    reason: str | None = None
    message: str | None = None
    stats: dict[str, int] = Field(default_factory=dict)
    seconds: float | None = None
    weights: ModelWeights | None = Field(
        default=None, description="the model fetched for the trials and its resolved revision, pinned in each trial"
    )
    mlflow_parent_run_id: str | None = Field(
        default=None, description="the sweep's MLflow parent run, found or created by the preparation"
    )


FINISHED_KEYS: dict[str, Literal["Succeeded", "Failed", "Stopped"]] = {
    "succeeded": "Succeeded",
    "failed": "Failed",
    "stopped": "Stopped",
}
# What keeps an outcome in `outcomes` on the wire rather than as a bare id in `finished`.
OUTCOME_DATA = ("objective", "rungs", "params")


class LoraSweepStatus(StatusModel):
    phase: SweepPhase = "Pending"
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    counts: TrialCounts = TrialCounts()
    best: BestTrial | None = None
    trials: list[TrialStatus] = Field(default_factory=list, description="best first; all trials while small")
    trials_truncated: bool = False
    outcomes: dict[str, TrialOutcome] = Field(default_factory=dict, description="every finished trial, by id")
    start_time: str | None = None
    completion_time: str | None = None
    report_uri: str | None = None
    preparation: PreparationStatus | None = None
    source_trials: list[SourceTrial] | None = None

    # On the wire, `outcomes` holds only the finished trials that still carry an objective (the best
    # FROM_SWEEP_TOP_MAX, see status.bounded_outcomes); every other finished trial is one id in the space-separated
    # strings of `finished` (11 bytes a trial, against ~70 for a map entry): 10,000 trials stay ~110 KB.
    @model_validator(mode="before")
    @classmethod
    def _expand_finished(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not data.get("finished"):
            return data
        outcomes = dict(data.get("outcomes") or {})
        for key, phase in FINISHED_KEYS.items():
            for trial in str(data["finished"].get(key) or "").split():
                outcomes.setdefault(trial, {"phase": phase})
        return {**{k: v for k, v in data.items() if k != "finished"}, "outcomes": outcomes}

    def to_patch(self) -> dict[str, Any]:
        patch = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        outcomes: dict[str, dict[str, Any]] = patch.pop("outcomes")
        patch["outcomes"] = {trial: o for trial, o in outcomes.items() if any(key in o for key in OUTCOME_DATA)}
        finished = {
            key: " ".join(sorted(t for t, o in outcomes.items() if t not in patch["outcomes"] and o["phase"] == phase))
            for key, phase in FINISHED_KEYS.items()
        }
        if any(finished.values()):
            patch["finished"] = {key: ids for key, ids in finished.items() if ids}
        return patch

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


# --- manifests ----------------------------------------------------------------------------------------------


class SweepManifest(BaseModel):
    """A LoraSweep as a file or API object holds it: the validated spec plus the identity around it."""

    model_config = ConfigDict(frozen=True)

    name: str
    namespace: str
    spec: LoraSweepSpec
    generation: int | None = None
    uid: str | None = None


def _describe(error: ValidationError, prefix: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        lines.append(f"{prefix}.{where}: {item['msg']}" if where else f"{prefix}: {item['msg']}")
    return "; ".join(lines)


def parse_spec(spec: Mapping[str, Any]) -> LoraSweepSpec:
    """Validate a spec mapping; `SpecError` lists every problem with its field path."""
    try:
        return LoraSweepSpec.model_validate(dict(spec))
    except ValidationError as error:
        raise SpecError(_describe(error, "spec")) from None


def parse_manifest(document: Mapping[str, Any], default_namespace: str = "default") -> SweepManifest:
    kind = document.get("kind")
    if kind != KIND:
        raise SpecError(f"expected kind {KIND}, got {kind!r}")
    api_version = document.get("apiVersion")
    if api_version != API_VERSION:
        raise SpecError(f"expected apiVersion {API_VERSION}, got {api_version!r}")
    metadata = document.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name is required")
    spec = document.get("spec")
    if not isinstance(spec, Mapping):
        raise SpecError("spec is required")
    return SweepManifest(
        name=name,
        namespace=metadata.get("namespace") or default_namespace,
        spec=parse_spec(spec),
        generation=metadata.get("generation"),
        uid=metadata.get("uid"),
    )


def load_sweep_file(path: str | Path, default_namespace: str = "default") -> SweepManifest:
    """Read a sweep YAML file (the one users `kubectl apply`); other documents in it are skipped."""
    text = Path(path).read_text()
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from None
    sweeps = [doc for doc in documents if isinstance(doc, Mapping) and doc.get("kind") == KIND]
    if len(sweeps) != 1:
        raise SpecError(f"{path}: expected exactly one {KIND} document, found {len(sweeps)}")
    try:
        return parse_manifest(sweeps[0], default_namespace)
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None
