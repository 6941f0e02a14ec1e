"""Matplotlib figures shared by the trial runs and the report (no pyplot, so no display needed).

Every trial logs two confusion matrices, its learning curves and its momentum curve. Laying out
and drawing the static parts (tick labels, axis labels, tight_layout) costs most of the time, so
trials use renderers that draw those once per process and then only redraw what changes
(blitting): `trial_confusion_renderer(class_names)`, `trial_curves_renderer(epochs)` and
`trial_momentum_renderer(grid, decades)` return RGBA arrays.
The report makes ordinary figures with `confusion_figure` and `learning_curves_figure`.

Class names may be in any script: `label_fonts(names)` adds installed fonts that have the characters
Matplotlib's default font lacks (it falls back glyph by glyph), and where no installed font has them,
says once per process which Debian font package draws them instead of Matplotlib's warning per glyph.
"""

from __future__ import annotations

import functools
import math
import sys
import unicodedata
import warnings

import numpy as np
from matplotlib import font_manager, rcParams
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.ticker import MaxNLocator, NullLocator

# A confusion matrix stays readable with counts in its cells up to this many classes, and with
# class names on its axes up to the next; beyond, the figure shows the pattern only and the
# JSON beside it keeps every count and name.
MAX_ANNOTATED_CLASSES = 30
MAX_LABELLED_CLASSES = 80
# At 100 dpi: at most 1200 x 1200 px whatever the class count (200 classes once gave 12250 px).
MAX_FIGURE_INCHES = 12.0


# Debian's packages for the scripts DejaVu Sans lacks: CJK, and the others Noto covers.
CJK_FONT_PACKAGE = "fonts-noto-cjk"
OTHER_SCRIPTS_FONT_PACKAGE = "fonts-noto-core"
_CJK_BLOCKS = ((0x2E80, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF), (0x20000, 0x3FFFF))
_warned_missing: set[str] = set()


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):  # a font file FreeType cannot read offers nothing
        return frozenset()


@functools.cache
def _installed_fonts() -> tuple[tuple[str, str], ...]:
    """(family, file) of every font Matplotlib found, one per file."""
    # Last Resort (bundled with Matplotlib) maps every character to a box naming its block: no real glyph.
    return tuple(sorted({entry.fname: entry.name for entry in font_manager.fontManager.ttflist
                         if not entry.name.startswith("Last Resort")}.items()))


def label_fonts(texts) -> list[str]:
    """The font families to draw `texts` with: Matplotlib's default, then installed fonts for the characters
    it lacks. Characters no installed font has are named once per process on stderr, with the package to
    install; Matplotlib's own warning per missing glyph is then silenced (it would repeat on every draw)."""
    family = rcParams["font.family"][0]
    default = rcParams["font.sans-serif"][0] if family == "sans-serif" else family
    families = [default]
    wanted = {ord(c) for c in "".join(str(t) for t in texts) if not unicodedata.category(c).startswith(("C", "Z"))}
    missing = wanted - _charmap(font_manager.findfont(default))
    for path, family in _installed_fonts():
        if not missing:
            break
        found = missing & _charmap(path)
        if found and family not in families:
            families.append(family)
            missing -= found
    unseen = "".join(sorted(chr(code) for code in missing if chr(code) not in _warned_missing))
    if unseen:
        _warned_missing.update(unseen)
        cjk = any(low <= ord(c) <= high for c in unseen for low, high in _CJK_BLOCKS)
        package = CJK_FONT_PACKAGE if cjk else OTHER_SCRIPTS_FONT_PACKAGE
        print(f"warning: no installed font has the characters {unseen!r} of the class names, so figures draw them "
              f"as boxes; install one, e.g. apt-get install {package} (Debian, Ubuntu).", file=sys.stderr, flush=True)
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
    return families


class _Confusion:
    """A laid-out confusion-matrix figure: counts per true (rows) and predicted (columns) class."""

    def __init__(self, class_names: list[str] | tuple[str, ...]):
        names = [str(name) for name in class_names]
        count = len(names)
        size = min(max(4.0, 0.6 * count + 2.5), MAX_FIGURE_INCHES)
        self.figure = Figure(figsize=(size, size), dpi=100)
        self.axes = self.figure.add_subplot()
        self.image = self.axes.imshow(np.zeros((count, count)), cmap="Blues", vmin=0, vmax=1)
        if count <= MAX_LABELLED_CLASSES:
            fontsize = 10 if count <= MAX_ANNOTATED_CLASSES else 6
            families = label_fonts(names)
            self.axes.set_xticks(range(count), names, rotation=45 if count <= MAX_ANNOTATED_CLASSES else 90,
                                 ha="right" if count <= MAX_ANNOTATED_CLASSES else "center", fontsize=fontsize,
                                 fontfamily=families)
            self.axes.set_yticks(range(count), names, fontsize=fontsize, fontfamily=families)
            unlabelled = ""
        else:
            self.axes.set_xticks([])
            self.axes.set_yticks([])
            unlabelled = f" ({count} classes; names and counts in the JSON)"
        self.axes.set_xlabel("predicted class" + unlabelled)
        self.axes.set_ylabel("true class" + unlabelled)
        self.title = self.axes.set_title("Confusion matrix")
        annotated = count <= MAX_ANNOTATED_CLASSES
        self.cells = {(row, column): self.axes.text(column, row, "", ha="center", va="center", fontsize=9)
                      for row in range(count) for column in range(count)} if annotated else {}
        self.shape = (count, count)

    def fill(self, matrix, title: str) -> None:
        matrix = np.asarray(matrix)
        if matrix.shape != self.shape:
            raise ValueError(f"a confusion matrix of shape {matrix.shape} does not fit "
                             f"{self.shape[0]} class names")
        highest = int(matrix.max()) if matrix.size else 0
        self.image.set_data(matrix)
        self.image.set_clim(0, max(highest, 1))
        for (row, column), cell in self.cells.items():
            count = matrix[row, column]
            cell.set_text(str(count))
            cell.set_color("white" if count > highest / 2 else "black")
        self.title.set_text(title)


def _style_curves_axes(axes) -> None:
    axes.set_xlabel("epoch")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.02)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)


def confusion_figure(matrix: np.ndarray, class_names: list[str] | tuple[str, ...], title: str) -> Figure:
    """Counts per true (rows) and predicted (columns) class, annotated."""
    confusion = _Confusion(class_names)
    confusion.fill(matrix, title)
    confusion.figure.tight_layout()
    return confusion.figure


def learning_curves_figure(histories: dict[str, dict[str, list[float]]], title: str) -> Figure:
    """Train and val accuracy per epoch for one or more labelled runs."""
    figure = Figure(figsize=(7, 4.2), dpi=100)
    axes = figure.add_subplot()
    for index, (label, history) in enumerate(histories.items()):
        colour = f"C{index % 10}"
        epochs = range(1, len(history.get("train_accuracy", [])) + 1)
        axes.plot(epochs, history.get("train_accuracy", []), "-o", color=colour, label=f"{label} train (fit)")
        axes.plot(epochs, history.get("val_accuracy", []), "--s", color=colour, label=f"{label} val")
    _style_curves_axes(axes)
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


class _BlitRenderer:
    """Renders `figure` once without `changing` artists, then redraws only those per call."""

    def __init__(self, figure: Figure, changing: list[Artist]):
        self.figure = figure
        self.changing = changing
        self.canvas = FigureCanvasAgg(figure)
        figure.tight_layout()
        for artist in changing:
            artist.set_animated(True)  # left out of canvas.draw(), drawn by render()
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(figure.bbox)

    def render(self) -> np.ndarray:
        self.canvas.restore_region(self.background)
        for artist in self.changing:
            self.figure.draw_artist(artist)
        return np.array(self.canvas.buffer_rgba())


class ConfusionRenderer(_BlitRenderer):
    """Confusion matrices for one list of class names, as RGBA arrays."""

    def __init__(self, class_names: tuple[str, ...]):
        self.confusion = _Confusion(class_names)
        spines = list(self.confusion.axes.spines.values())  # drawn over the image, as in a full draw
        super().__init__(self.confusion.figure,
                         [self.confusion.image, *self.confusion.cells.values(), self.confusion.title, *spines])

    def __call__(self, matrix, title: str) -> np.ndarray:
        self.confusion.fill(matrix, title)
        return self.render()


class CurvesRenderer(_BlitRenderer):
    """One run's train (fit) and val accuracy over a fixed range of epochs, as RGBA arrays."""

    def __init__(self, epochs: int):
        figure = Figure(figsize=(7, 4.2), dpi=100)
        axes = figure.add_subplot()
        (self.train_line,) = axes.plot([], [], "-o", color="C0", label="train (fit)")
        (self.val_line,) = axes.plot([], [], "--s", color="C1", label="val")
        _style_curves_axes(axes)
        # A fixed x range keeps the static parts valid; a run that stopped early ends short of it.
        axes.set_xlim(0.5, epochs + 0.5)
        self.title = axes.set_title("Learning curves")
        legend = axes.legend(fontsize=8, loc="best")
        super().__init__(figure, [self.train_line, self.val_line, legend, self.title])

    def __call__(self, history: dict[str, list[float]], title: str) -> np.ndarray:
        train = history.get("train_accuracy", [])
        val = history.get("val_accuracy", [])
        self.train_line.set_data(range(1, len(train) + 1), train)
        self.val_line.set_data(range(1, len(val) + 1), val)
        self.title.set_text(title)
        return self.render()


class MomentumCurveRenderer(_BlitRenderer):
    """One trial's val and train-eval accuracy against momentum, log axis on 1 − momentum.

    The axis runs from momentum 0 (1 − m = 1) to 1 − m = 10^-decades and labels every momentum of
    the grid (the trials share it; a trial's own momentum is the vertical line, its value in the
    title). The recalibrated (PreciseBN) accuracies, with statistics re-estimated on the training
    data at the final weights, are horizontal lines. The legend sits below the axes, where it
    covers no data.
    """

    def __init__(self, grid: tuple[float, ...], decades: int):
        figure = Figure(figsize=(7, 5.0), dpi=100)
        axes = figure.add_subplot()
        momentum_axis(axes, decades, labelled=grid)
        axes.set_ylabel("accuracy")
        axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
        (self.val_line,) = axes.plot([], [], "-o", color="C1", label="val")
        (self.train_eval_line,) = axes.plot([], [], "-s", color="C0", label="train (inference mode)")
        self.recalibrated_val = axes.axhline(np.nan, color="C1", linestyle=":", label="val, recalibrated BN")
        self.recalibrated_train = axes.axhline(np.nan, color="C0", linestyle=":",
                                               label="train (inference), recalibrated BN")
        self.own = axes.axvline(np.nan, color="0.3", linestyle="--", label="own momentum")
        self.title = axes.set_title("Momentum curve")
        self.legend = axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3,
                                  frameon=False)
        super().__init__(figure, [self.val_line, self.train_eval_line, self.recalibrated_val,
                                  self.recalibrated_train, self.own, self.title])

    def __call__(self, curve: dict, title: str) -> np.ndarray:
        """`curve` in the format of `study.contract.MOMENTUM_CURVE_ATTR`."""
        complement = [1.0 - m for m in curve["momentum"]]
        self.val_line.set_data(complement, curve["val_accuracy"])
        self.train_eval_line.set_data(complement, curve["train_eval_accuracy"])
        recalibrated = curve["recalibrated"]
        self.recalibrated_val.set_ydata([recalibrated["val_accuracy"]] * 2)
        self.recalibrated_train.set_ydata([recalibrated["train_eval_accuracy"]] * 2)
        self.own.set_xdata([1.0 - curve["own_momentum"]] * 2)
        self.title.set_text(title)
        return self.render()


def momentum_decades(momenta) -> int:
    """How many decades of 1 − momentum an axis needs to show these momenta (at least 3: 0.999)."""
    return max([3, *(math.ceil(-math.log10(1.0 - m) - 1e-9) for m in momenta if m < 1)])


def momentum_axis(axes, decades: int, which: str = "x", labelled: tuple[float, ...] = ()) -> None:
    """Lay out `axes`' x (or y) axis for momenta: log on 1 − momentum from 0 to 1 − 10^-decades,
    momentum growing to the right (or upwards), ticks at 0, 0.9, 0.99, ..., or at 0 and every
    momentum of `labelled` (e.g. the grid) where given."""
    axis, set_scale, set_lim, set_ticks, set_label = (
        (axes.xaxis, axes.set_xscale, axes.set_xlim, axes.set_xticks, axes.set_xlabel) if which == "x"
        else (axes.yaxis, axes.set_yscale, axes.set_ylim, axes.set_yticks, axes.set_ylabel))
    set_scale("log")
    set_lim(1.5, 10.0 ** -decades / 1.5)
    if labelled:
        momenta = sorted(set(labelled) | {0.0})
        set_ticks([1.0 - m for m in momenta], [f"{m:g}" for m in momenta], fontsize=8)
        axis.set_minor_locator(NullLocator())
    else:
        set_ticks([10.0 ** -k for k in range(decades + 1)], ["0"] + [f"0.{'9' * k}" for k in range(1, decades + 1)])
    set_label("bn_momentum (log axis on 1 − momentum)")


@functools.lru_cache(maxsize=4)
def trial_momentum_renderer(grid: tuple[float, ...], decades: int) -> MomentumCurveRenderer:
    """The momentum-curve renderer for a grid and an axis down to 1 − m = 10^-decades, shared by the trials."""
    return MomentumCurveRenderer(grid, decades)


@functools.lru_cache(maxsize=4)
def trial_confusion_renderer(class_names: tuple[str, ...]) -> ConfusionRenderer:
    """The confusion renderer for these class names, shared by the trials of a process."""
    return ConfusionRenderer(class_names)


@functools.lru_cache(maxsize=4)
def trial_curves_renderer(epochs: int) -> CurvesRenderer:
    """The learning-curves renderer for runs of up to `epochs` epochs, shared by the trials."""
    return CurvesRenderer(epochs)

