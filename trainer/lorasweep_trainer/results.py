"""What a trial leaves behind: metrics.json (schema ``lorasweep.metrics/v1``) and the termination
message the operator reads. Torch-free, shared by the trainer, the operator and the report.

Accuracies are fractions in [0, 1]. The confusion matrix has actual classes as rows and predicted
classes as columns, both in ``classes`` order.
"""

from __future__ import annotations

import json
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from lorasweep_trainer.config import TERMINATION_MESSAGE_LIMIT, ObjectiveMetric

METRICS_SCHEMA: Final = "lorasweep.metrics/v1"
METRICS_FILE = "metrics.json"
EVENT_LOG = "train.jsonl"  # one JSON object per line: step, epoch, test and corrupt-clip events
ADAPTER_FOLDER = "adapter"


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
    feature_cache: FeatureCacheUse | None = None
    cache: dict[str, int] | None = Field(default=None, description="cache shards hit/built/rejected, decodes")
    sweep_uid: str | None = Field(
        default=None, description="the sweep object the result belongs to (LORASWEEP_SWEEP_UID); None when run locally"
    )

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def objective(self, metric: ObjectiveMetric) -> float | None:
        value = getattr(self, metric)
        return None if value is None else float(value)

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
