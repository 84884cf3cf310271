"""PNG figures for the report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io

from lorasweep_operator.report import formatting as fmt
from lorasweep_operator.report.markdown import CONFUSION_FIGURE, CURVES_FIGURE, group_figure
from lorasweep_operator.report.model import Accuracy, GroupTable, Report, TrainingDynamics


def render_figures(report: Report) -> dict[str, bytes]:
    """File name -> PNG bytes: the best configuration's confusion matrix (where one was recorded), one accuracy
    plot per group, and the top configurations' training curves (where they have a history)."""
    import matplotlib

    matplotlib.use("Agg")
    figures = {}
    square = [len(row) for row in report.best.confusion_matrix] == [len(report.classes)] * len(report.classes)
    if report.classes and square:
        figures[CONFUSION_FIGURE] = _confusion(report)
    if report.dynamics is not None and report.dynamics.plotted:
        figures[CURVES_FIGURE] = _curves(report.dynamics)
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


def _curves(dynamics: TrainingDynamics) -> bytes:
    import matplotlib.pyplot as plt

    rows = {row.configuration: row for row in dynamics.rows}
    figure, (accuracy, loss) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for index, key in enumerate(dynamics.plotted):
        row = rows[key]
        colour = f"C{index}"
        epochs = [e.epoch for e in row.epochs]
        accuracy.plot(epochs, [100 * e.val_accuracy for e in row.epochs], "o-", color=colour, label=f"{row.label} val")
        accuracy.plot(epochs, [100 * e.train_accuracy for e in row.epochs], "--", color=colour, alpha=0.6)
        best = next((e for e in row.epochs if e.epoch == row.best_epoch), None)
        if best is not None:
            accuracy.plot([best.epoch], [100 * best.val_accuracy], "*", color=colour, markersize=13)
        finite = [(e.epoch, e.train_loss) for e in row.epochs if e.train_loss is not None]
        loss.plot([e for e, _ in finite], [v for _, v in finite], "o-", color=colour, label=row.label)
    accuracy.set_xlabel("epoch")
    accuracy.set_ylabel("accuracy (%)")
    accuracy.set_ylim(0, 100)
    accuracy.grid(alpha=0.3)
    accuracy.set_title("validation (solid, ★ best epoch) and train (dashed)")
    accuracy.legend(fontsize="small", loc="lower right")
    loss.set_xlabel("epoch")
    loss.set_ylabel("train loss")
    loss.grid(alpha=0.3)
    loss.set_title("training loss")
    figure.suptitle(f"Training curves of the top {len(dynamics.plotted)} configurations")
    for axes in (accuracy, loss):
        axes.xaxis.get_major_locator().set_params(integer=True)
    return _png(figure)
