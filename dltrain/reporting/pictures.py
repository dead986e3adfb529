"""Pictures of the data: a batch as the model receives it (`dltrain show`), eval's confusion
matrix and its most confident mistakes. matplotlib's object API, imported inside the
functions, as in plots.py, whose atomic writer they share."""

from __future__ import annotations

import math
from pathlib import Path

from dltrain.reporting.plots import DPI, save_figure

PANEL, HEADER, MIN_WIDTH = 1.6, 0.6, 6.0  # inches: one image and its caption, the title
CELL_VALUES_MAX = 20  # classes up to which the confusion picture prints its shares in cells


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of an image grid: about as many columns as rows, columns first."""
    columns = max(1, math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / columns)), columns


def grid_inches(rows: int, columns: int) -> tuple[float, float]:
    """The figure's size for a grid: PANEL per image, the title's HEADER on top."""
    return max(columns * PANEL, MIN_WIDTH), rows * PANEL + HEADER


def plot_images(
    images, captions: list[str], title: str, out: str | Path, empty: str = ""
) -> tuple[Path, tuple[int, int]]:
    """Images (N, C, H, W, values 0..1, on the CPU) in a grid, each with its caption under it;
    one channel is drawn gray, three as RGB; no images: the `empty` text. Returns (path,
    (rows, columns))."""
    import textwrap

    from matplotlib.figure import Figure

    rows, columns = grid_shape(len(images))
    width, height = grid_inches(rows, columns)
    # A title wider than a narrow grid is wrapped (about 9 characters an inch at its size).
    lines = textwrap.wrap(title, max(20, int(width * 9)))
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")  # the grid yields room
    fig.suptitle("\n".join(lines))
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax, image, caption in zip(axes, images, captions, strict=False):
        if image.shape[0] == 3:
            ax.imshow(image.permute(1, 2, 0).numpy())
        else:
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set(xticks=[], yticks=[])
        ax.set_xlabel(caption, fontsize="small")
    for ax in axes[len(images) :]:
        ax.set_axis_off()
    if not len(images):
        axes[0].text(0.5, 0.5, empty, ha="center", va="center", size="large")
    return save_figure(fig, out), (rows, columns)


def confusion_shares(confusion: list[list[int]]) -> list[list[float]]:
    """Each true class's row as shares of its samples (rows sum to 1; a class without
    samples in the split: a row of zeros)."""
    return [[count / sum(row) if sum(row) else 0.0 for count in row] for row in confusion]


def plot_confusion(confusion: list[list[int]], names: list[str], title: str, out) -> Path:
    """The confusion matrix normalized per true class, class names on both axes; the shares
    printed in the cells for up to CELL_VALUES_MAX classes."""
    from matplotlib.figure import Figure

    shares, classes = confusion_shares(confusion), len(names)
    side = min(max(6.0, 0.5 * classes + 2.5), 24.0)
    fig = Figure(figsize=(side + 1.5, side), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="share of the true class")
    size = "small" if classes <= CELL_VALUES_MAX else max(3, 8 * CELL_VALUES_MAX / classes)
    labels = [short_name(name) for name in names]
    ax.set_xticks(range(classes), labels, rotation=90, fontsize=size)
    ax.set_yticks(range(classes), labels, fontsize=size)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if classes <= CELL_VALUES_MAX:
        for (true, predicted), share in _cells(shares):
            color = "white" if share > 0.5 else "black"
            font = "x-small" if classes > 10 else "small"
            ax.text(
                predicted, true, f"{share:.2f}", ha="center", va="center", color=color, size=font
            )
    return save_figure(fig, out)


def _cells(shares: list[list[float]]):
    """The non-zero cells as ((row, column), share); zeros stay blank."""
    for true, row in enumerate(shares):
        for predicted, share in enumerate(row):
            if share >= 0.005:
                yield (true, predicted), share


def short_name(name: str, width: int = 14) -> str:
    """A class name cut to fit under an image or beside a matrix row."""
    return name if len(name) <= width else name[: width - 1] + "…"
