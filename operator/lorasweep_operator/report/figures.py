"""PNG figures for the report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io

from lorasweep_operator.report import formatting as fmt
from lorasweep_operator.report.markdown import CONFUSION_FIGURE, group_figure
from lorasweep_operator.report.model import Accuracy, GroupTable, Report


def render_figures(report: Report) -> dict[str, bytes]:
    """File name -> PNG bytes: the best configuration's confusion matrix and one accuracy plot per group."""
    import matplotlib

    matplotlib.use("Agg")
    figures = {CONFUSION_FIGURE: _confusion(report)}
    for group in report.groups:
        figures[group_figure(group.name)] = _group(group)
    return figures


def _png(figure: object) -> bytes:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    assert isinstance(figure, Figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _confusion(report: Report) -> bytes:
    import matplotlib.pyplot as plt

    matrix = report.best.confusion_matrix
    classes = report.classes
    size = max(3.5, 0.9 * len(classes) + 1.5)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(len(classes)), labels=classes, rotation=30, ha="right")
    axes.set_yticks(range(len(classes)), labels=classes)
    axes.set_xlabel("Predicted")
    axes.set_ylabel("Actual")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            colour = "white" if peak and value > peak / 2 else "black"
            axes.text(j, i, str(value), ha="center", va="center", color=colour)
    axes.set_title(f"{report.best.label}: test confusion matrix")
    return _png(figure)


def _group(group: GroupTable) -> bytes:
    import matplotlib.pyplot as plt

    labels = [
        ", ".join(fmt.param_value(k, v) for k, v in row.values.items()) + ("\n(baseline)" if row.is_baseline else "")
        for row in group.rows
    ]
    positions = list(range(len(group.rows)))
    figure, axes = plt.subplots(figsize=(max(4.0, 1.3 * len(labels) + 1.5), 3.8))
    for offset, split, colour in ((-0.1, "val", "tab:blue"), (0.1, "test", "tab:orange")):
        values: list[Accuracy] = [getattr(row, split) for row in group.rows]
        means = [100 * v.mean for v in values]
        below = [max(0.0, 100 * (v.mean - v.interval.low)) for v in values]
        above = [max(0.0, 100 * (v.interval.high - v.mean)) for v in values]
        axes.errorbar(
            [p + offset for p in positions],
            means,
            yerr=[below, above],
            fmt="o",
            capsize=4,
            color=colour,
            label=f"{split} (n={values[0].n})",
        )
    axes.set_xticks(positions, labels=labels)
    axes.set_xlabel(", ".join(fmt.param_label(k) for k in group.varied))
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title(f"{group.name}: accuracy with 95% Wilson intervals")
    return _png(figure)
