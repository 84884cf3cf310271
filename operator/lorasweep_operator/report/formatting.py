"""How numbers read in the report, shared by the builder's sentences and the markdown renderer."""

from __future__ import annotations

from lorasweep_operator.report.model import Accuracy, ParamValue
from lorasweep_operator.report.stats import Interval

PARAM_LABELS = {
    "learning_rate": "LR",
    "lora_rank": "Rank",
    "lora_alpha": "Alpha",
    "lora_dropout": "Dropout",
    "epochs": "Epochs",
    "batch_size": "Batch size",
    "gradient_accumulation_steps": "Gradient accumulation",
    "weight_decay": "Weight decay",
    "frames_per_clip": "Frames per clip",
    "seed": "Seed",
}


def param_label(name: str) -> str:
    return PARAM_LABELS.get(name, name.replace("_", " ").capitalize())


def scientific(value: float) -> str:
    """1e-3, 7.5e-4: how people write learning rates."""
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def param_value(name: str, value: ParamValue) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if name == "learning_rate" or (isinstance(value, float) and value != 0 and abs(value) < 1e-3):
        return scientific(float(value))
    if name == "lora_dropout":
        return f"{value:.2f}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}"


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def interval(value: Interval) -> str:
    return f"{100 * value.low:.1f}–{100 * value.high:.1f}"


def accuracy(value: Accuracy) -> str:
    """``83.33% (66.4–92.7)``, or ``80.00% ± 2.10 (…)`` across seeds."""
    spread = f" ± {100 * value.std:.2f}" if value.std is not None else ""
    return f"{percent(value.mean)}{spread} ({interval(value.interval)})"


def points(delta: float) -> str:
    return f"{100 * delta:+.1f} points"


def count(value: int) -> str:
    return f"{value:,}"


def plural(value: int, noun: str, many: str | None = None) -> str:
    """``1 trial``, ``2 trials``; ``many`` for irregular plurals."""
    return f"{value} {noun if value == 1 else many or noun + 's'}"
