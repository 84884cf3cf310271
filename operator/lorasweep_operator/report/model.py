"""The typed report: what the builder computes and the renderers lay out.

Every number the markdown shows lives here, so tests check the report's content without parsing
markdown, and the markdown renderer only formats.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lorasweep_operator.report.stats import Interval
from lorasweep_trainer.config import Goal

ParamValue = float | int | str | bool | None


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Accuracy(Frozen):
    """An accuracy on one split: mean over seeds, its spread, and the 95% Wilson interval for the split size."""

    mean: float
    std: float | None = Field(None, description="sample standard deviation across seeds; None for one seed")
    n: int = Field(description="clips in the split")
    interval: Interval
    seeds: int = 1


class ClassResult(Frozen):
    precision: float
    recall: float
    f1: float
    support: int


class Configuration(Frozen):
    """One point of the search space: its trials differ only in their seed."""

    key: str = Field(description="the first trial's id: stable and unique within the sweep")
    trials: list[str]
    label: str = Field(description="what a reader calls it: the variant, or 'baseline'")
    group: str | None
    variant: str | None
    is_baseline: bool
    params: dict[str, ParamValue] = Field(description="metrics.json params without the seed")
    seeds: list[int]
    objective: float | None = Field(description="mean of the objective metric over seeds")
    objective_std: float | None = None
    train: Accuracy
    val: Accuracy
    test: Accuracy
    best_epochs: list[int]
    epochs: int
    trainable_parameters: int
    total_parameters: int
    per_class: dict[str, ClassResult] = Field(description="test split, averaged over seeds")
    confusion_matrix: list[list[int]] = Field(description="test split, summed over seeds")
    inference_ms_per_video: float
    train_seconds: float = Field(description="mean over seeds")
    adapter_uris: dict[str, str] = Field(default_factory=dict, description="trial -> its adapter folder, where found")


class AdapterRef(Frozen):
    """The adapter to use: of the best configuration's trial (seed) with the best objective."""

    trial: str
    uri: str


class GroupRow(Frozen):
    configuration: str = Field(description="Configuration.key")
    label: str
    is_baseline: bool
    values: dict[str, ParamValue] = Field(description="the parameters this group varies")
    val: Accuracy
    test: Accuracy
    delta_val: float | None = Field(description="val - baseline val, as a fraction")
    delta_test: float | None
    val_within_noise: bool | None = Field(description="val interval overlaps the baseline's")
    trainable_parameters: int


class GroupTable(Frozen):
    name: str
    varied: list[str] = Field(description="params that differ between the rows")
    rows: list[GroupRow]
    spread: float = Field(description="max - min validation accuracy across the rows")
    finding: str
    noise: str


class EfficiencyRow(Frozen):
    label: str
    trainable_parameters: int
    fraction_of_model: float
    val: Accuracy | None
    test: Accuracy | None


class Methodology(Frozen):
    fixed: dict[str, ParamValue]
    varied: list[str]
    search: dict[str, list[str]] = Field(description="group -> the labels of its configurations")
    trials: int
    configurations: int
    seeds: list[int]
    failed_trials: dict[str, str] = Field(default_factory=dict, description="trial -> why it failed")
    stopped_trials: dict[str, str] = Field(
        default_factory=dict, description="trial -> why it stopped early (early stopping); not ranked"
    )
    total_train_seconds: float
    mean_train_seconds: float
    wall_seconds: float | None = Field(description="first start to last finish, None when timestamps are unusable")


class Reproducibility(Frozen):
    git_commits: list[str]
    seeds: list[int]
    models: list[str]
    devices: list[str]
    classes: list[str]
    videos_per_class: int
    train: int
    val: int
    test: int
    same_split: bool | None = Field(description="all trials recorded the same split; None when none recorded it")
    split_digest: str | None
    started_at: str
    finished_at: str


class EpochPoint(Frozen):
    epoch: int
    train_loss: float | None = Field(description="None where the trainer recorded NaN or nothing")
    train_accuracy: float
    val_accuracy: float


Trend = Literal["still rising", "peaked early", "peaked near the end", "no history"]


class Dynamics(Frozen):
    """One configuration's training curve (its first seed's history, as recorded in metrics.json)."""

    configuration: str = Field(description="Configuration.key")
    label: str
    trial: str = Field(description="the trial whose history this is")
    epochs: list[EpochPoint]
    planned_epochs: int
    best_epoch: int
    trend: Trend
    note: str


class TrainingDynamics(Frozen):
    rows: list[Dynamics] = Field(description="the ranked configurations' curves, best first")
    plotted: list[str] = Field(description="Configuration.key of the curves in the figure")
    findings: list[str]


class SplitData(Frozen):
    name: str = Field(description="train, val or test")
    clips: int = Field(description="clips the split was planned with")
    corrupt: int = Field(description="of them, corrupt and skipped")
    by_class: dict[str, int] = Field(description="class (or NTU action, where classes are not known) -> clips")


class DataSummary(Frozen):
    classes: list[str]
    videos_per_class: int
    splits: list[SplitData]
    corrupt_clips: list[str] = Field(description="every clip a trial skipped as corrupt, sorted")
    balance_by: Literal["class", "action", "test only"] = Field(
        description="what by_class counts: classes (the sweep's class map was given), NTU actions (the split's "
        "clip names), or only the test split's classes (from the confusion matrix)"
    )
    findings: list[str]


class Report(Frozen):
    sweep: str
    generated_at: str
    model: str
    objective: str
    goal: Goal
    classes: list[str]
    summary: list[str] = Field(description="executive summary, one sentence each")
    methodology: Methodology
    ranked: list[Configuration] = Field(description="every configuration, best first by the objective")
    top: list[Configuration] = Field(description="the top-10 table")
    best: Configuration
    best_adapter: AdapterRef | None = Field(default=None, description="None when no adapter of it was found")
    baseline: Configuration | None
    groups: list[GroupTable]
    efficiency: list[EfficiencyRow]
    recommendations: list[str]
    reproducibility: Reproducibility
    warnings: list[str] = Field(description="inconsistencies found in the trials' metrics")
    dynamics: TrainingDynamics | None = None
    data: DataSummary | None = None


REPORT_SUMMARY_LIMIT = 4096  # the kubelet's limit for a termination message


class ReportSummary(BaseModel):
    """What `lorasweep report` leaves in its termination message: the operator reads a report Job's outcome
    (and status.reportUri) from it, so it needs no storage access of its own."""

    status: Literal["Written", "Failed"]
    report_uri: str | None = None
    trials: int = Field(0, description="trials with metrics in the report")
    best: str | None = Field(None, description="the best configuration's label")
    reason: str | None = None
    message: str | None = None

    def encode(self) -> str:
        text = self.model_dump_json(exclude_none=True)
        if len(text.encode()) > REPORT_SUMMARY_LIMIT:
            text = self.model_copy(update={"message": (self.message or "")[:200]}).model_dump_json(exclude_none=True)
        return text

    @classmethod
    def decode(cls, text: str) -> ReportSummary:
        return cls.model_validate_json(text)
