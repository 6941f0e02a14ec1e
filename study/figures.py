"""Matplotlib figures shared by the trial runs and the report (Agg backend, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_figure(matrix: np.ndarray, class_names: list[str] | tuple[str, ...], title: str) -> Figure:
    """Counts per true (rows) and predicted (columns) class, annotated."""
    matrix = np.asarray(matrix)
    size = max(4.0, 0.6 * len(class_names) + 2.5)
    figure, axes = plt.subplots(figsize=(size, size), dpi=100)
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black", fontsize=9)
    figure.tight_layout()
    return figure


def learning_curves_figure(histories: dict[str, dict[str, list[float]]], title: str) -> Figure:
    """Train and val accuracy per epoch for one or more labelled runs."""
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=100)
    for index, (label, history) in enumerate(histories.items()):
        colour = f"C{index % 10}"
        epochs = range(1, len(history.get("train_accuracy", [])) + 1)
        axes.plot(epochs, history.get("train_accuracy", []), "-o", color=colour, label=f"{label} train (fit)")
        axes.plot(epochs, history.get("val_accuracy", []), "--s", color=colour, label=f"{label} val")
    axes.set_xlabel("epoch")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def close(figure: Figure) -> None:
    plt.close(figure)
