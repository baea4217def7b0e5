"""The paper's Figures 1-7, and Figure 8 (error against training memory, the Pareto front), which is ours: each
one's plotted data as a DataFrame first (saved as CSV), then drawn.

Every series is a configuration's epochs.csv, averaged over its seeds epoch by epoch, taken from the
runs with the most epochs (see `report.select`). The "best" SP and HP configurations are the paper's:
SP at batch 512 (MNIST) / 128 (Fashion-MNIST), HP at 100 / 128.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.text
import matplotlib.ticker
import matplotlib.transforms
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dynhp_bench.analysis.report import (
    DATASET_NAMES,
    RUN_LENGTH,
    configuration_label,
    frame_markdown,
    reference_tables,
    select,
)
from dynhp_bench.data.datasets import input_shape
from dynhp_bench.errors import ResultsError
from dynhp_bench.memory import TRAINING_MEMORY_UNIT, batch_cap, memory_mb, model_bytes, sample_bytes
from dynhp_bench.settings.config import default_budget_bytes
from dynhp_bench.training.record import EpochRecord
from dynhp_bench.training.run_folder import RUNS_DIR, RunFolder, write_text_atomic

BEST_BATCH = {("mnist", "sp"): 512, ("fashion", "sp"): 128, ("mnist", "hp"): 100, ("fashion", "hp"): 128}
BATCH_GRID = (16, 32, 64, 100, 128, 256, 512)
LAYERS = ("input", "HL-1", "HL-2")
DATASETS = ("mnist", "fashion")
# Error figures put the first 5 % of epochs (at least the first) above their y axis: the CSV keeps every epoch.
ERROR_SETTLING = 0.05
FULL_NETWORK_BYTES = model_bytes([(784, 300), (300, 100), (100, 10)])


def epochs_of(config: pd.Series | None) -> pd.DataFrame:
    """A configuration's epochs.csv, averaged over its seeds epoch by epoch (empty if None)."""
    if config is None:
        return pd.DataFrame()
    frames = [_read_epochs(Path(run_dir)) for run_dir in str(config["run_dirs"]).split(";")]
    numeric = pd.concat(frames).select_dtypes("number")
    return numeric.groupby("epoch", as_index=False).mean()


def _read_epochs(run_dir: Path) -> pd.DataFrame:
    """A run's epochs.csv with every column a number; a damaged one is a ResultsError naming it."""
    folder = RunFolder(run_dir)
    frame = folder.read_epochs()
    path = folder.epochs_path
    missing = [c for c in EpochRecord.columns() if c not in frame.columns and c not in ("strategy", "dataset")]
    if missing:
        raise ResultsError(f"{path} is damaged: it lacks the column(s) {', '.join(missing)}")
    numbers = frame.drop(columns=[c for c in ("strategy", "dataset") if c in frame.columns])
    if not all(pd.api.types.is_numeric_dtype(numbers[c]) for c in numbers.columns) or frame.empty:
        raise ResultsError(f"{path} is damaged: expected one row of numbers per epoch, as `dynhp-bench train` writes")
    return frame


def _best(configs: pd.DataFrame, dataset: str, strategy: str) -> pd.DataFrame:
    found = select(configs, dataset=dataset, strategy=strategy, batch_size=BEST_BATCH[dataset, strategy], alpha_bs=None)
    return epochs_of(found)


def _alphas(dataset: str) -> list[float]:
    reference = reference_tables()
    return sorted(reference.loc[(reference["dataset"] == dataset) & (reference["method"] == "DynHP"), "alpha_bs"])


def _dynhp(configs: pd.DataFrame, dataset: str, alpha: float) -> pd.DataFrame:
    return epochs_of(select(configs, dataset=dataset, strategy="dynhp", batch_size=16, alpha_bs=alpha))


def fig1_data(configs: pd.DataFrame) -> pd.DataFrame:
    """Active neurons per layer vs epoch: SP's Σ a_j ("virtual") and HP's physical neurons."""
    rows = []
    for dataset in DATASETS:
        for strategy, column in (("sp", "expected_active_{}"), ("hp", "active_{}")):
            epochs = _best(configs, dataset, strategy)
            for k, layer in enumerate(LAYERS):
                for epoch, value in zip(epochs.get("epoch", []), epochs.get(column.format(k), []), strict=True):
                    rows.append({"dataset": dataset, "layer": layer, "series": strategy.upper(), "epoch": epoch,
                                 "neurons": value})  # fmt: skip
    return pd.DataFrame(rows, columns=["dataset", "layer", "series", "epoch", "neurons"])


def fig2_data(configs: pd.DataFrame) -> pd.DataFrame:
    """Memory per epoch (paper's MB), SP vs HP, both datasets."""
    rows = []
    for dataset in DATASETS:
        for strategy in ("sp", "hp"):
            epochs = _best(configs, dataset, strategy)
            for epoch, value in zip(epochs.get("epoch", []), epochs.get("memory_mb", []), strict=True):
                rows.append({"dataset": dataset, "series": strategy.upper(), "epoch": epoch, "memory_mb": value})
    return pd.DataFrame(rows, columns=["dataset", "series", "epoch", "memory_mb"])


def batch_grid_data(configs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Figures 3 / 4: test error vs epoch for SP and HP at each batch size of the paper's grid."""
    rows = []
    for strategy in ("sp", "hp"):
        for batch in BATCH_GRID:
            epochs = epochs_of(select(configs, dataset=dataset, strategy=strategy, batch_size=batch, alpha_bs=None))
            for epoch, value in zip(epochs.get("epoch", []), epochs.get("test_error_pct", []), strict=True):
                rows.append({"strategy": strategy.upper(), "series": f"batch {batch}", "epoch": epoch,
                             "test_error_pct": value})  # fmt: skip
    return pd.DataFrame(rows, columns=["strategy", "series", "epoch", "test_error_pct"])


def fig5_data(configs: pd.DataFrame) -> pd.DataFrame:
    """Test error vs epoch of DynHP for each α_bs, with SP and HP at their best batch."""
    return _dynhp_with_best(configs, "test_error_pct")


def fig6_data(configs: pd.DataFrame) -> pd.DataFrame:
    """Batch size vs epoch of DynHP for each α_bs."""
    rows = []
    for dataset in DATASETS:
        for alpha in _alphas(dataset):
            epochs = _dynhp(configs, dataset, alpha)
            for epoch, value in zip(epochs.get("epoch", []), epochs.get("batch_size", []), strict=True):
                rows.append({"dataset": dataset, "series": f"α_bs {alpha:.3f}", "epoch": epoch, "batch_size": value})
    return pd.DataFrame(rows, columns=["dataset", "series", "epoch", "batch_size"])


def fig7_data(configs: pd.DataFrame) -> pd.DataFrame:
    """Memory per epoch of DynHP per α_bs, HP best, SP best (real), and SP's virtual memory.

    SP's virtual memory counts the network its expected active neurons (Σ a_j per layer) would make,
    plus its batch: what SP would hold if its soft-pruned neurons were really gone.
    """
    frame = _dynhp_with_best(configs, "memory_mb")
    rows = []
    for dataset in DATASETS:
        epochs = _best(configs, dataset, "sp")
        for row in epochs.itertuples():
            widths = [row.expected_active_0, row.expected_active_1, row.expected_active_2, 10.0]
            virtual = model_bytes([(widths[i], widths[i + 1]) for i in range(3)])
            rows.append({"dataset": dataset, "series": "SP virtual", "epoch": row.epoch,
                         "memory_mb": memory_mb(round(virtual), row.batch_bytes)})  # fmt: skip
    return pd.concat([frame, pd.DataFrame(rows, columns=frame.columns)], ignore_index=True)


def _dynhp_with_best(configs: pd.DataFrame, column: str) -> pd.DataFrame:
    rows = []
    for dataset in DATASETS:
        series = [(f"α_bs {alpha:.3f}", _dynhp(configs, dataset, alpha)) for alpha in _alphas(dataset)]
        series += [(f"{s.upper()} (batch {BEST_BATCH[dataset, s]})", _best(configs, dataset, s)) for s in ("sp", "hp")]
        for name, epochs in series:
            for epoch, value in zip(epochs.get("epoch", []), epochs.get(column, []), strict=True):
                rows.append({"dataset": dataset, "series": name, "epoch": epoch, column: value})
    return pd.DataFrame(rows, columns=["dataset", "series", "epoch", column])


# Saturated colours that read on white, none used twice in a plot: up to 11 α_bs values or the 7 batch sizes.
# SP is always black and HP always red, so neither is ever mistaken for a swept series.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#000080", "#8b008b",
           "#b8860b", "#006d6d")  # fmt: skip
SP_COLOUR, HP_COLOUR = "black", "#d62728"


def _style(series: str, index: int) -> dict[str, object]:
    """Line style of one series: SP black (its virtual memory dashed), HP red dash-dot drawn over SP (where the
    two coincide, SP shows through HP's gaps), the others from the palette, under both."""
    if series.startswith("SP"):
        return {"color": SP_COLOUR, "linestyle": "--" if "virtual" in series else "-", "linewidth": 2.0, "zorder": 4}
    if series.startswith("HP"):
        return {"color": HP_COLOUR, "linestyle": "-.", "linewidth": 2.0, "zorder": 5}  # over SP: its gaps show SP
    return {"color": PALETTE[index % len(PALETTE)], "linestyle": "-", "linewidth": 1.2, "zorder": 2}


def _label(series: str) -> str:
    """A series name with mathtext for the symbols (the CSV keeps the plain name)."""
    return series.replace("α_bs", r"$\alpha_{\mathrm{bs}}$")


def _plot(spec: FigureSpec, data: pd.DataFrame) -> Figure:
    """One line per series in each panel of the spec; integer epochs, y from 0, the legend below the panel."""
    panels = spec.panels()
    if spec.panel_of is not None:
        data = data.assign(panel=spec.panel_of(data))
    columns = -(-len(panels) // spec.rows)
    key_column = "panel" if spec.panel_of is not None else spec.panel
    most_series = int(data.groupby(key_column)["series"].nunique().max()) if not data.empty else 0
    height = 3.2 + 0.22 * max(-(-most_series // 3), 1)  # room for the legend's rows below the panel
    figure, axes = plt.subplots(
        spec.rows, columns, figsize=(4.8 * columns, height * spec.rows), squeeze=False, layout="constrained"
    )
    for ax, (key, subtitle) in zip(axes.flat, panels, strict=False):
        part = data[data[key_column] == key]
        others = 0
        for name, series in part.groupby("series", sort=False):
            style = _style(str(name), others)
            others += not str(name).startswith(("SP", "HP"))
            ax.plot(series["epoch"], series[spec.y], label=_label(str(name)), **style)  # type: ignore[arg-type]
        ax.set_title(subtitle)
        ax.set_xlabel("epoch")
        ax.set_ylabel(spec.ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if spec.y_integer:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        # From 0: a change of 0.1 % must not look like a cliff, as an autoscaled axis makes it. Error curves leave
        # their first epochs above the axis (`settled_after`), so that 2,000 epochs near 1.5 % are not drawn flat
        # under epoch 1's 60 %.
        settled = part[part["epoch"] > _settling_epochs(part, spec.settled_after)] if not part.empty else part
        top = float(settled[spec.y].max()) if not settled.empty else 1.0
        ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)
        ax.grid(alpha=0.3)
        if part.empty:
            ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes, color="dimgrey")
        else:
            ax.legend(fontsize="x-small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    figure.suptitle(_label(spec.title))
    return figure


def _by_dataset() -> list[tuple[str, str]]:
    return [(d, DATASET_NAMES[d]) for d in DATASETS]


def _by_dataset_and_layer() -> list[tuple[str, str]]:
    return [(f"{d}/{layer}", f"{DATASET_NAMES[d]}, {layer}") for d in DATASETS for layer in LAYERS]


def _by_strategy() -> list[tuple[str, str]]:
    return [("SP", "SP"), ("HP", "HP")]


@dataclass(frozen=True)
class FigureSpec:
    """How one figure is computed and laid out: panels keyed by a column, one line per series."""

    compute: Callable[[pd.DataFrame], pd.DataFrame]
    panel: str
    panels: Callable[[], list[tuple[str, str]]]
    y: str
    ylabel: str
    title: str
    rows: int = 1
    panel_of: Callable[[pd.DataFrame], pd.Series] | None = None
    y_integer: bool = False  # counts (neurons, samples): no fractional ticks
    settled_after: float = 0.0  # the share of epochs (at least the first) left above the y axis; 0: none


def _settling_epochs(part: pd.DataFrame, share: float) -> int:
    """The epochs a panel leaves above its y axis: `share` of its longest series, at least one when share > 0."""
    if share <= 0 or part.empty:
        return 0
    return max(1, int(float(part["epoch"].max()) * share))


FIGURES: dict[str, FigureSpec] = {
    "fig1_active_neurons": FigureSpec(
        fig1_data, "panel", _by_dataset_and_layer, "neurons", "active neurons",
        r"Figure 1: active neurons per layer, SP ($\Sigma_j\,a_j$) vs HP", rows=2, y_integer=True,
        panel_of=lambda d: d["dataset"] + "/" + d["layer"],
    ),
    "fig2_memory": FigureSpec(
        fig2_data, "dataset", _by_dataset, "memory_mb", "memory per epoch (paper's MB)",
        "Figure 2: memory per epoch, SP vs HP",
    ),
    "fig3_mnist_error": FigureSpec(
        lambda configs: batch_grid_data(configs, "mnist"), "strategy", _by_strategy, "test_error_pct",
        "test error (%)", "Figure 3: MNIST, SP and HP error by batch size", settled_after=ERROR_SETTLING,
    ),
    "fig4_fashion_error": FigureSpec(
        lambda configs: batch_grid_data(configs, "fashion"), "strategy", _by_strategy, "test_error_pct",
        "test error (%)", "Figure 4: Fashion-MNIST, SP and HP error by batch size", settled_after=ERROR_SETTLING,
    ),
    "fig5_error": FigureSpec(
        fig5_data, "dataset", _by_dataset, "test_error_pct", "test error (%)",
        "Figure 5: DynHP error by α_bs, with SP and HP best", settled_after=ERROR_SETTLING,
    ),
    "fig6_batch_size": FigureSpec(
        fig6_data, "dataset", _by_dataset, "batch_size", "batch size (samples)", "Figure 6: DynHP batch size by α_bs",
        y_integer=True,
    ),
    "fig7_memory": FigureSpec(
        fig7_data, "dataset", _by_dataset, "memory_mb", "memory per epoch (paper's MB)",
        "Figure 7: memory per epoch; SP real (solid) and virtual (dashed)",
    ),
}  # fmt: skip


def write_figures(configs: pd.DataFrame, out_dir: Path) -> dict[str, tuple[Path, int]]:
    """Compute, save (CSV) and draw (PNG) every figure; returns name → (PNG path, rows of data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, spec in FIGURES.items():
        data = spec.compute(configs)
        write_text_atomic(out_dir / f"{name}.csv", data.to_csv(index=False))
        figure = _plot(spec, data)
        png = out_dir / f"{name}.png"
        figure.savefig(png, dpi=110)
        plt.close(figure)
        written[name] = (png, len(data))
    return written


PARETO_COLUMNS = [
    "label", "series", "strategy", "batch_size", "alpha_bs", "prune_schedule", "profile", "epochs", "subset", "seeds",
    "final_error_pct", "final_error_pct_std", "training_memory_mb", "training_memory_mb_std", "pareto",
]  # fmt: skip


def pareto_data(configs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Figure 8: final error and training memory of every configuration of `dataset` at one run length.

    Training memory grows with the epochs, so only configurations of the same profile, epochs and data are
    comparable: the run length with the most configurations is taken (then the longest). `pareto` marks
    the configurations no other beats on both error and memory (ties on memory go to the lower error).
    """
    part = configs[configs["dataset"] == dataset]
    if part.empty:
        return pd.DataFrame(columns=PARETO_COLUMNS)
    sizes = part.groupby(RUN_LENGTH, dropna=False).size().reset_index(name="n")
    best = sizes.sort_values(["n", "epochs"], ascending=False).iloc[0]
    same = (part["profile"] == best["profile"]) & (part["epochs"] == best["epochs"])
    same &= (
        part["subset"].map(lambda v: v is None or pd.isna(v))
        if pd.isna(best["subset"])
        else (part["subset"] == best["subset"])
    )
    part = part[same].copy()
    if "prune_schedule" not in part:
        part["prune_schedule"] = None
    part["label"] = [configuration_label(row) for _, row in part.iterrows()]
    part["series"] = [
        f"{row.strategy} ({row.prune_schedule})" if isinstance(row.prune_schedule, str) else row.strategy
        for row in part.itertuples()
    ]
    part = part.sort_values(["training_memory_mb", "final_error_pct"]).reset_index(drop=True)
    lowest = float("inf")
    front = []
    for error in part["final_error_pct"]:
        front.append(error < lowest)
        lowest = min(lowest, error)
    part["pareto"] = front
    return part[PARETO_COLUMNS]


class DistinctTicks(matplotlib.ticker.Formatter):
    """Tick labels with the fewest significant digits (2 to 6) that still tell the ticks apart: 0.0025 and 0.003,
    not 0.0025000 and 0.0030000."""

    def format_ticks(self, values: list[float]) -> list[str]:  # type: ignore[override]
        """All of an axis's labels at once, so that the digits are chosen for the set."""
        labels = [f"{v:.6g}" for v in values]
        for digits in range(2, 7):
            shorter = [f"{v:.{digits}g}" for v in values]
            if len(set(shorter)) == len(shorter):
                return shorter
        return labels

    def __call__(self, x: float, pos: int | None = None) -> str:
        """One label (the cursor readout)."""
        return f"{x:.4g}"


def _point_groups(data: pd.DataFrame, ax: plt.Axes, *, within_px: float = 6.0) -> list[list[int]]:
    """The rows of `data` drawn on one spot (within `within_px` of each other on screen), each group once."""
    xy = ax.transData.transform(data[["training_memory_mb", "final_error_pct"]].to_numpy(dtype=float))
    groups: list[list[int]] = []
    for i, point in enumerate(xy):
        near = [g for g in groups if any(((xy[j] - point) ** 2).sum() <= within_px**2 for j in g)]
        merged = [i, *(j for g in near for j in g)]
        groups = [g for g in groups if g not in near] + [sorted(merged)]
    return sorted(groups, key=lambda g: tuple(xy[g[0]]))


def group_label(rows: pd.DataFrame) -> str:
    """One label for configurations drawn on one spot: ``sp b16``, ``hp b16 = sp b16``, DyPrune's schedules
    together, ``dyprune b128 dynamic = static``, and DynHP's α_bs values as a range, ``dynhp b16 α0.971–0.975 (5)``."""
    parts = []
    for (strategy, batch), part in rows.groupby(["strategy", "batch_size"], sort=True):
        base = configuration_label({"strategy": strategy, "batch_size": batch, "alpha_bs": None})
        alphas = sorted(float(a) for a in part["alpha_bs"] if a is not None and not pd.isna(a))
        schedules = sorted({str(v) for v in part["prune_schedule"] if isinstance(v, str)})
        if len(alphas) > 2:
            parts.append(f"{base} α{alphas[0]:g}–{alphas[-1]:g} ({len(alphas)})")
        elif len(schedules) > 1 and len(schedules) == len(part):
            parts.append(f"{base} {' = '.join(schedules)}")
        else:
            parts += list(part["label"])
    return " = ".join(parts)


# Where a label may go, in points from its spot: close around it first, then further out (with a leader line).
_RINGS = (7, 14, 26, 40, 58)
_DIRECTIONS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))


def place_labels(
    ax: plt.Axes, spots: list[tuple[float, float]], texts: list[str], *, bold: list[bool]
) -> list[matplotlib.text.Annotation]:
    """Annotate each spot with its text where the text overlaps no marker (keeping twice as clear of the other
    spots' as of its own), no earlier label, and stays in the axes: the first free place, nearest first, with a
    leader line when it is not next to its spot; where none is free, the place with the least overlap. Returns
    the annotations."""
    figure = ax.figure
    renderer = figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    marker = 7.0 * figure.dpi / 72  # about half a marker, in pixels
    centres = ax.transData.transform(spots)

    def around(centre: object, radius: float) -> matplotlib.transforms.Bbox:
        x, y = centre  # type: ignore[misc]
        return matplotlib.transforms.Bbox.from_extents(x - radius, y - radius, x + radius, y + radius)

    # A label keeps clear of its own marker, and twice as far from the others', so that it reads as its spot's.
    others = [around(centre, 2 * marker) for centre in centres]
    labels: list[matplotlib.transforms.Bbox] = []
    placed = []
    for index, ((x, y), text, strong) in enumerate(zip(spots, texts, bold, strict=True)):
        occupied = [around(centres[index], marker), *others[:index], *others[index + 1 :], *labels]
        best: tuple[float, matplotlib.text.Annotation, matplotlib.transforms.Bbox] | None = None
        for ring in _RINGS:
            for dx, dy in _DIRECTIONS:
                scale = ring / (2**0.5 if dx and dy else 1.0)
                note = ax.annotate(
                    text, (x, y), textcoords="offset points", xytext=(dx * scale, dy * scale), fontsize="small",
                    ha={1: "left", 0: "center", -1: "right"}[dx], va={1: "bottom", 0: "center", -1: "top"}[dy],
                    fontweight="bold" if strong else "normal", zorder=6,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
                    arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6} if ring > _RINGS[0] else None,
                )  # fmt: skip
                box = note.get_window_extent(renderer)
                overlap = sum(_overlap(box, other) for other in occupied) + _outside(box, inside)
                if best is None or overlap < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (overlap, note, box)
                else:
                    note.remove()
                if overlap == 0:
                    break
            if best is not None and best[0] == 0:
                break
        if best is not None:  # always: every ring tries every direction
            labels.append(best[2])
            placed.append(best[1])
    return placed


def _overlap(a: matplotlib.transforms.Bbox, b: matplotlib.transforms.Bbox) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _outside(box: matplotlib.transforms.Bbox, inside: matplotlib.transforms.Bbox) -> float:
    return box.width * box.height - _overlap(box, inside)


def plot_pareto(data: pd.DataFrame, dataset: str) -> Figure:
    """Error against training memory, one colour and marker per strategy, the Pareto front drawn; every spot named
    (configurations drawn on one spot share one label; the front's in bold), labels placed not to collide."""
    figure, ax = plt.subplots(figsize=(9.5, 6.0), dpi=110)
    colours = plt.get_cmap("tab10").colors
    markers = "osD^vP*X"  # a marker per series too, so coinciding configurations stay visible
    for index, (series, part) in enumerate(data.groupby("series", sort=True)):
        ax.errorbar(
            part["training_memory_mb"], part["final_error_pct"], xerr=part["training_memory_mb_std"],
            yerr=part["final_error_pct_std"], fmt=markers[index % len(markers)], color=colours[index % len(colours)],
            label=str(series), capsize=3, markersize=9 - index % 4, alpha=0.85,
        )  # fmt: skip
    name = DATASET_NAMES.get(dataset, dataset)
    if data.empty:
        ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(f"Figure 8: {name}, error against training memory")
    else:
        first = data.iloc[0]
        seeds = sorted({int(s) for s in data["seeds"]})
        seeds_text = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        ax.set_title(
            f"Figure 8: {name}, error against training memory\n"
            f"{first['profile']} profile, {int(first['epochs'])} epochs, {seeds_text} seed(s); lower left is better",
            fontsize="medium",
        )
        spread = data["training_memory_mb"].max() / max(data["training_memory_mb"].min(), 1e-12)
        if spread > 20:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.xaxis.set_major_formatter(DistinctTicks())
        # Room around the points for their labels.
        ax.margins(x=0.12, y=0.12)
    front = data[data["pareto"]]
    if not front.empty:
        # The staircase that bounds what the front dominates, from above the first point to the right edge,
        # so that even a front of one configuration is drawn.
        (left, right), (bottom, top) = ax.get_xlim(), ax.get_ylim()
        xs, ys = [float(front["training_memory_mb"].iloc[0])], [top]
        for row in front.itertuples():
            xs += [row.training_memory_mb, row.training_memory_mb]
            ys += [ys[-1], row.final_error_pct]
        xs.append(right)
        ys.append(ys[-1])
        ax.plot(xs[:1] + xs[2:], ys[:1] + ys[2:], "k--", lw=1, label="Pareto front")
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
    ax.set_xlabel(f"training memory ({TRAINING_MEMORY_UNIT})")
    ax.set_ylabel("final test error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="strategy", frameon=False)
    figure.tight_layout()  # the axes are where they stay: the labels are placed in their final coordinates
    if not data.empty:
        groups = _point_groups(data, ax)
        spots = [(float(data["training_memory_mb"].iloc[g[0]]), float(data["final_error_pct"].iloc[g[0]]))
                 for g in groups]  # fmt: skip
        texts = [group_label(data.iloc[g]) for g in groups]
        place_labels(ax, spots, texts, bold=[bool(data["pareto"].iloc[g].any()) for g in groups])
    return figure


def write_pareto(configs: pd.DataFrame, dataset: str, out_dir: Path) -> tuple[Path, int]:
    """Compute, save (CSV) and draw (PNG) Figure 8 for one dataset; returns (PNG path, configurations)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = pareto_data(configs, dataset)
    write_text_atomic(out_dir / f"fig8_pareto_{dataset}.csv", data.to_csv(index=False))
    figure = plot_pareto(data, dataset)
    png = out_dir / f"fig8_pareto_{dataset}.png"
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return png, len(data)


# --- calibration of Eq. 8's readings (docs/fidelity.md) ----------------------------------------------------------

READING_SETTINGS = ("growth_cadence", "growth_rounding", "growth_loss", "growth_variance")
READING_OPTIONS = {"growth_correction": "none", "growth_smoothing": "none"}  # named only when not at default
CALIBRATION_COLUMNS = ["dataset", "reading", "alpha_bs", "epoch", "batch_size", "cap_in_epoch", "memory_mb",
                       "model_size_mb", "test_error_pct", "variance_ratio"]  # fmt: skip


def reading_name(settings: dict[str, object]) -> str:
    """A DynHP run's reading of Eq. 8 as cadence/rounding/F/S, then any non-default correction and smoothing,
    e.g. ``epoch/ceil/data/examples`` or ``step/nearest/data/mean/running``."""
    values = [str(settings.get(key) or "") for key in READING_SETTINGS]
    values += [
        str(value) for key, default in READING_OPTIONS.items() if (value := settings.get(key)) not in (None, default)
    ]
    return "/".join(values)


def calibration_data(results_root: Path) -> pd.DataFrame:
    """Every DynHP run's epochs under `results_root` (finished or not), labelled by reading and α_bs."""
    frames = []
    runs = Path(results_root) / RUNS_DIR
    for path in sorted(runs.iterdir()) if runs.is_dir() else []:
        folder = RunFolder(path)
        if not (path / "config.json").is_file() or not folder.epochs_path.is_file():
            continue
        settings = json.loads((path / "config.json").read_text())["settings"]
        epochs = folder.read_epochs()
        if settings.get("strategy") != "dynhp" or epochs.empty:
            continue
        # Eq. 10's cap in force while the epoch trained: the budget less the network the epoch trained.
        budget = int(settings["budget_bytes"])
        sample = sample_bytes(input_shape(settings["dataset"]))
        cap = [batch_cap(budget, int(held), sample) for held in epochs["model_bytes"]]
        frames.append(
            epochs.assign(
                dataset=settings["dataset"],
                reading=reading_name(settings),
                alpha_bs=settings["alpha_bs"],
                cap_in_epoch=cap,
            )
        )
    if not frames:
        return pd.DataFrame(columns=CALIBRATION_COLUMNS)
    return pd.concat(frames, ignore_index=True)[CALIBRATION_COLUMNS]


PAPER_EPOCHS = 2000  # the paper's runs: its training memory is the sum of 2,000 per-epoch memories (×1000)


def paper_dynhp_rows() -> pd.DataFrame:
    """The paper's DynHP rows (Tables 2-3) with their mean per-epoch memory (MB) over its 2,000 epochs."""
    paper = reference_tables()
    paper = paper[paper["strategy"] == "dynhp"]
    return paper.assign(mean_memory_mb=paper["training_memory_mb"] * 1000 / PAPER_EPOCHS)[
        ["dataset", "alpha_bs", "error_pct", "model_size_mb", "mean_memory_mb"]
    ]


def calibration_table(data: pd.DataFrame, at_epochs: tuple[int, ...] = (10, 50, 100)) -> pd.DataFrame:
    """Per dataset × reading × α_bs: epochs run, the first epoch trained at the cap of Eq. 10, the batch at
    `at_epochs` and at the last epoch, the mean per-epoch memory (MB) and the last epoch's error and model size,
    beside the paper's error, model size and mean per-epoch memory for that α_bs (empty where it has no row).

    The paper's mean is over 2,000 epochs and ours over the epochs run: early epochs hold the full network,
    so a short run's mean is comparable in direction only."""
    paper = paper_dynhp_rows()
    rows = []
    for (dataset, reading, alpha), run in data.groupby(["dataset", "reading", "alpha_bs"], sort=True):
        run = run.sort_values("epoch")
        cap_epochs = run.loc[run["batch_size"] >= run["cap_in_epoch"], "epoch"]
        batch_at = dict(zip(run["epoch"], run["batch_size"], strict=True))
        theirs = paper[(paper["dataset"] == dataset) & ((paper["alpha_bs"] - alpha).abs() < 1e-9)]
        row = theirs.iloc[0] if len(theirs) else None
        rows.append({
            "dataset": dataset, "reading": reading, "alpha_bs": alpha, "epochs": int(run["epoch"].max()),
            "cap_epoch": int(cap_epochs.min()) if len(cap_epochs) else None,
            **{f"batch_e{e}": batch_at.get(e) for e in at_epochs},
            "batch_last": int(run["batch_size"].iloc[-1]),
            "mean_memory_mb": float(run["memory_mb"].mean()),
            "paper_mean_memory_mb": None if row is None else float(row["mean_memory_mb"]),
            "final_error_pct": float(run["test_error_pct"].iloc[-1]),
            "paper_error_pct": None if row is None else float(row["error_pct"]),
            "final_model_mb": float(run["model_size_mb"].iloc[-1]),
            "paper_model_mb": None if row is None else float(row["model_size_mb"]),
        })  # fmt: skip
    return pd.DataFrame(rows)


def calibration_markdown(table: pd.DataFrame) -> str:
    """The calibration table as Markdown: MB to 3 decimals, error to 2, empty cells as "–"."""
    digits = {"alpha_bs": 3, "mean_memory_mb": 3, "paper_mean_memory_mb": 3, "final_error_pct": 2,
              "paper_error_pct": 2, "final_model_mb": 3, "paper_model_mb": 3}  # fmt: skip
    shown = table.astype(object).where(table.notna(), None)
    for column in shown.columns:
        places = digits.get(column)
        shown[column] = [
            "–"
            if value is None
            else f"{value:.{places}f}"
            if places is not None
            else f"{value:g}"
            if isinstance(value, float)
            else str(value)
            for value in shown[column]
        ]
    return frame_markdown(shown, "Calibration of Eq. 8: DynHP per reading and α_bs (ours, then the paper's)")


def write_calibration(results_root: Path, out_dir: Path, name: str = "calibration_batch_size") -> Path:
    """Figure of batch size vs epoch, one panel per dataset × reading, one line per α_bs; CSV beside it."""
    data = calibration_data(results_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / f"{name}.csv", data.to_csv(index=False))
    table = calibration_table(data)
    write_text_atomic(out_dir / f"{name}_table.csv", table.to_csv(index=False))
    write_text_atomic(out_dir / f"{name}_table.md", calibration_markdown(table))
    readings = sorted(data["reading"].unique()) or ["(none)"]
    figure, axes = plt.subplots(
        len(DATASETS), len(readings), figsize=(3.6 * len(readings), 3.4 * len(DATASETS)), squeeze=False, sharey=True
    )
    last_epoch = max(int(data["epoch"].max()) if not data.empty else 1, 10)
    for row, dataset in zip(axes, DATASETS, strict=True):
        budget_cap = batch_cap(
            default_budget_bytes(dataset, (300, 100)), FULL_NETWORK_BYTES, sample_bytes(input_shape(dataset))
        )
        alphas = sorted(data.loc[data["dataset"] == dataset, "alpha_bs"].unique())
        colours = plt.get_cmap("tab10").colors
        for ax, reading in zip(row, readings, strict=True):
            part = data[(data["dataset"] == dataset) & (data["reading"] == reading)]
            for alpha, run in part.groupby("alpha_bs", sort=True):
                colour = colours[alphas.index(alpha)]  # one colour per α_bs across the row's panels
                ax.plot(run["epoch"], run["batch_size"], ".-", color=colour, markersize=3, label=f"α_bs {alpha:.3f}")
            ax.axhline(budget_cap, color="grey", linestyle="--", linewidth=0.8, label="cap, full network")
            ax.set_yscale("log")
            ax.set_ylim(10, 1000)
            ax.set_xlim(0, last_epoch)
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5, integer=True))
            ax.set_title(f"{DATASET_NAMES[dataset]}\n{reading}", fontsize="small")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if part.empty:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.legend(fontsize="x-small", loc="best")
        row[0].set_ylabel("batch size (samples, log)")
    figure.suptitle("DynHP batch size vs epoch for each reading of Eq. 8 (cadence/rounding/F/S[/running])")
    figure.tight_layout()
    png = out_dir / f"{name}.png"
    figure.savefig(png, dpi=100)
    plt.close(figure)
    return png
