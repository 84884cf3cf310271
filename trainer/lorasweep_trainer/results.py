"""What a trial leaves behind: metrics.json (schema ``lorasweep.metrics/v1``) and the termination
message the operator reads. Torch-free, shared by the trainer, the operator and the report.

Accuracies are fractions in [0, 1]. The confusion matrix has actual classes as rows and predicted
classes as columns, both in ``classes`` order.
"""

from __future__ import annotations

import json
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from lorasweep_trainer.config import TERMINATION_MESSAGE_LIMIT, ModelPreset, ModelWeights, ObjectiveMetric

METRICS_SCHEMA: Final = "lorasweep.metrics/v1"
METRICS_FILE = "metrics.json"
EVENT_LOG = "train.jsonl"  # one JSON object per line: step, epoch, test and corrupt-clip events
ADAPTER_FOLDER = "adapter"
# Beside peft's adapter_config.json and adapter_model.safetensors in ADAPTER_FOLDER: what `predict` and `merge`
# need to use the adapter without the sweep (AdapterInfo), and the video processor (save_pretrained's file).
ADAPTER_INFO_FILE = "lorasweep_adapter.json"
ADAPTER_SCHEMA: Final = "lorasweep.adapter/v1"
PEFT_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# A preset has no hub name: its adapter's base_model_name_or_path is "preset:<name>" (as metrics.json's `model`)
# and its revision "seed-<trial seed>", the seed its random weights are drawn with (model.py).
PRESET_REVISION_PREFIX = "seed-"


class Record(BaseModel):
    """metrics.json keeps snake_case keys; extra keys from newer trainers are kept, not rejected."""

    model_config = ConfigDict(extra="allow")


class TrialParams(Record):
    learning_rate: float
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    epochs: int
    batch_size: int
    gradient_accumulation_steps: int
    weight_decay: float
    frames_per_clip: int
    seed: int


class DatasetSizes(Record):
    videos_per_class: int
    train: int
    val: int
    test: int


class EpochMetrics(Record):
    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    val_loss: float | None = None
    val_macro_f1: float | None = None


class ClassMetrics(Record):
    precision: float
    recall: float
    f1: float
    support: int


class FeatureCacheUse(Record):
    """Whether the trial trained on cached encoder features, and why (not)."""

    used: bool
    reason: str


class ModelLoad(Record):
    """Where the trial's base model came from and what loading it took (absent for presets)."""

    source: str = Field(description="model.source")
    revision: str | None = Field(default=None, description="the pinned revision: hub commit or sha256:<digest>")
    path: str = Field(description="the folder (or hub name) from_pretrained read")
    files: int = 0
    bytes: int = 0
    bytes_fetched: int = Field(default=0, description="downloaded by this trial (0: read in place or already local)")
    fetch_seconds: float = Field(default=0.0, description="download and SHA-256 verification")
    load_seconds: float = Field(default=0.0, description="from_pretrained")


class TrackingUse(Record):
    """Where the trial's MLflow run is (spec.tracking.mlflow) and how many calls failed or were dropped."""

    backend: Literal["mlflow"] = "mlflow"
    uri: str
    experiment_id: str | None = None
    parent_run_id: str | None = None
    run_id: str | None = None
    failures: int = 0
    dropped: int = 0


class TrialMetrics(Record):
    schema_: Literal["lorasweep.metrics/v1"] = Field(METRICS_SCHEMA, alias="schema")
    sweep: str
    trial: str
    group: str | None = None
    variant: str | None = None
    params: TrialParams
    classes: list[str]
    dataset: DatasetSizes
    epochs: list[EpochMetrics]
    best_epoch: int
    train_accuracy: float
    val_accuracy: float
    test_accuracy: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    trainable_parameters: int
    total_parameters: int
    inference_ms_per_video: float
    train_seconds: float
    git_commit: str
    model: str
    device: str
    started_at: str
    finished_at: str
    val_loss: float | None = None
    val_macro_f1: float | None = None
    split: dict[str, list[str]] = Field(default_factory=dict, description="clip keys per split")
    corrupt_clips: list[str] = Field(default_factory=list)
    test_predictions: dict[str, str] = Field(
        default_factory=dict, description="test clip key -> predicted class, from the best epoch's adapter"
    )
    test_probabilities: dict[str, list[float]] = Field(
        default_factory=dict, description="test clip key -> class probabilities (softmax) in classes order"
    )
    adapter_uri: str | None = Field(default=None, description="the best epoch's adapter (peft save_pretrained)")
    feature_cache: FeatureCacheUse | None = None
    cache: dict[str, int] | None = Field(default=None, description="cache shards hit/built/rejected, decodes")
    # Added to lorasweep.metrics/v1 (older files lack them; readers take None): the model pinned for the sweep.
    model_revision: str | None = Field(default=None, description="the resolved revision every trial of the sweep used")
    model_load: ModelLoad | None = None
    tracking: TrackingUse | None = None
    sweep_uid: str | None = Field(
        default=None, description="the sweep object the result belongs to (LORASWEEP_SWEEP_UID); None when run locally"
    )

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def objective(self, metric: ObjectiveMetric) -> float | None:
        value = getattr(self, metric)
        return None if value is None else float(value)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


def adapter_uri_beside(metrics_uri: str) -> str:
    """The adapter folder of the trial whose metrics.json is ``metrics_uri``: they are written side by side
    (DESIGN.md "Artifacts"), so whoever knows one knows the other."""
    return f"{metrics_uri.rsplit('/', 1)[0]}/{ADAPTER_FOLDER}/"


class AdapterBase(Record):
    """The base model an adapter was trained on, enough to build it again bit for bit."""

    name_or_path: str = Field(description="the adapter's base_model_name_or_path: hub name, folder or preset:<name>")
    revision: str | None = Field(description="the hub commit the weights came from; seed-<n> for a preset")
    preset: ModelPreset | None = None
    seed: int = Field(description="the trial seed: it draws a preset's weights (and a new classifier's init)")
    digest: str = Field(description="SHA-256 of the base weights without the classifier (model.base_digest)")


class AdapterInfo(Record):
    """``lorasweep_adapter.json``: what using the adapter needs beyond peft's own files."""

    schema_: Literal["lorasweep.adapter/v1"] = Field(ADAPTER_SCHEMA, alias="schema")
    sweep: str
    trial: str
    classes: list[str] = Field(description="the classifier's labels in id2label order")
    frames_per_clip: int = Field(description="frames sampled per clip: the centre of each of as many equal segments")
    base: AdapterBase
    best_epoch: int
    git_commit: str
    merged_from: str | None = Field(default=None, description="in a merged model's folder: the adapter merged")

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


class TerminationSummary(BaseModel):
    """The trial's result as the operator sees it, small enough for the kubelet (< 4 KiB)."""

    model_config = ConfigDict(populate_by_name=True)

    trial: str
    status: Literal["Succeeded", "Failed"]
    reason: str | None = None
    message: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="headline metrics, by metrics.json name")
    best_epoch: int | None = None
    metrics_uri: str | None = None

    def encode(self) -> str:
        text = self.model_dump_json(exclude_none=True)
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            trimmed = self.model_copy(update={"message": (self.message or "")[:200]})
            text = trimmed.model_dump_json(exclude_none=True)
        return text

    @classmethod
    def decode(cls, text: str) -> TerminationSummary:
        return cls.model_validate(json.loads(text))


class PackSummary(BaseModel):
    """The termination message of packed trials: one summary per trial, in pack order."""

    pack: list[TerminationSummary]

    def encode(self) -> str:
        text = self.model_dump_json(exclude_none=True)
        for limit in (200, 60, 0):  # what does not fit is the failures' messages, never the results
            if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
                break
            trimmed = [s.model_copy(update={"message": (s.message or "")[:limit] or None}) for s in self.pack]
            text = PackSummary(pack=trimmed).model_dump_json(exclude_none=True)
        return text


class PrepareSummary(BaseModel):
    """The preparation step's outcome (its termination message): what the cache holds and what it took."""

    status: Literal["Succeeded", "Failed"]
    reason: str = ""
    message: str = ""
    features: bool = False
    cache_uri: str = ""
    shards: int = 0
    stats: dict[str, int] = Field(default_factory=dict, description="cache.CacheStats: hits, built, decodes, ...")
    corrupt_clips: int = 0
    seconds: float = 0.0
    weights: ModelWeights | None = Field(default=None, description="the model fetched for the trials, its revision")
    mlflow_parent_run_id: str | None = Field(default=None, description="the sweep's parent run (spec.tracking)")
    mlflow_failures: int = 0

    def encode(self) -> str:
        text = self.model_dump_json()
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            text = self.model_copy(update={"message": self.message[:200]}).model_dump_json()
        return text


HEADLINE_METRICS = (
    "val_accuracy",
    "val_macro_f1",
    "val_loss",
    "train_accuracy",
    "test_accuracy",
    "trainable_parameters",
    "inference_ms_per_video",
    "train_seconds",
)


def summarize(metrics: TrialMetrics, metrics_uri: str) -> TerminationSummary:
    headline = {name: float(value) for name in HEADLINE_METRICS if (value := getattr(metrics, name)) is not None}
    return TerminationSummary(
        trial=metrics.trial,
        status="Succeeded",
        metrics=headline,
        best_epoch=metrics.best_epoch,
        metrics_uri=metrics_uri,
    )
