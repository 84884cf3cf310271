"""Scoring: predictions over a split, accuracy, per-class precision/recall/F1, the confusion matrix (rows
actual, columns predicted, in class order), its PNG, and the inference time per video.

Precision, recall or F1 of a class with nothing predicted (or no support) is 0.0, as in scikit-learn's
``zero_division=0``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorasweep_trainer.data import Sample
from lorasweep_trainer.results import ClassMetrics


@dataclass(frozen=True)
class Predictions:
    uris: list[str]
    labels: list[int]
    predicted: list[int]
    loss: float  # mean cross-entropy over the clips
    probabilities: list[list[float]] = field(default_factory=list)  # softmax of each clip's logits

    @property
    def accuracy(self) -> float:
        return accuracy(self.labels, self.predicted)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA; full fp32 on CPU (bf16 matmuls on CPU are slow and change results)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


Forward = Callable[[torch.Tensor], torch.Tensor]  # a batch of model inputs -> logits


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    forward: Forward,
    batches: Iterable[tuple[list[Sample], torch.Tensor, torch.Tensor]],
    device: torch.device,
) -> Predictions:
    """``forward`` runs the model on its inputs: pixels through the whole model, or cached encoder features
    through the pooler and head; ``model`` is put in eval mode first."""
    model.eval()
    uris: list[str] = []
    labels: list[int] = []
    predicted: list[int] = []
    probabilities: list[list[float]] = []
    loss_sum = 0.0
    for samples, inputs, batch_labels in batches:
        with autocast(device):
            logits = forward(inputs.to(device)).float()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch_labels.to(device), reduction="sum").item()
        uris += [sample.uri for sample in samples]
        labels += batch_labels.tolist()
        predicted += logits.argmax(-1).tolist()
        probabilities += logits.softmax(-1).tolist()
    return Predictions(uris, labels, predicted, loss_sum / max(1, len(labels)), probabilities)


def accuracy(labels: Sequence[int], predicted: Sequence[int]) -> float:
    if not labels:
        return 0.0
    return sum(int(a == b) for a, b in zip(labels, predicted, strict=True)) / len(labels)


def confusion_matrix(labels: Sequence[int], predicted: Sequence[int], num_classes: int) -> list[list[int]]:
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for actual, guess in zip(labels, predicted, strict=True):
        matrix[actual][guess] += 1
    return matrix


def per_class(matrix: list[list[int]], classes: Sequence[str]) -> dict[str, ClassMetrics]:
    report = {}
    for i, name in enumerate(classes):
        true_positive = matrix[i][i]
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[name] = ClassMetrics(precision=precision, recall=recall, f1=f1, support=support)
    return report


def macro_f1(report: dict[str, ClassMetrics]) -> float:
    return sum(item.f1 for item in report.values()) / len(report) if report else 0.0


@torch.no_grad()
def inference_ms_per_video(
    model: torch.nn.Module, forward: Forward, inputs: Sequence[torch.Tensor], device: torch.device
) -> float:
    """Mean ``forward`` time per clip at batch 1, after one warm-up forward, synchronised on CUDA."""
    if not inputs:
        return 0.0
    model.eval()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with autocast(device):
        forward(inputs[0].unsqueeze(0).to(device))
    sync()
    elapsed = 0.0
    for clip in inputs:
        batch = clip.unsqueeze(0).to(device)  # the transfer is data loading, not inference: keep it out
        sync()
        started = time.perf_counter()
        with autocast(device):
            forward(batch)
        sync()
        elapsed += time.perf_counter() - started
    return 1000.0 * elapsed / len(inputs)


def confusion_png(matrix: list[list[int]], classes: Sequence[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 1.1 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = list(range(len(classes)))
    axes.set_xticks(ticks, labels=list(classes), rotation=45, ha="right")
    axes.set_yticks(ticks, labels=list(classes))
    axes.set_xlabel("Predicted")
    axes.set_ylabel("Actual")
    axes.set_title(title)
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            colour = "white" if peak and value > peak / 2 else "black"
            axes.text(j, i, str(value), ha="center", va="center", color=colour)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
