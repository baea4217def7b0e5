"""The paper's Figures 1-7: each one's plotted data as a DataFrame first (saved as CSV), then drawn.

Every series is a configuration's epochs.csv, averaged over its seeds epoch by epoch, taken from the
runs with the most epochs (see `report.select`). The "best" SP and HP configurations are the paper's:
SP at batch 512 (MNIST) / 128 (Fashion-MNIST), HP at 100 / 128.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from dynhp_bench.errors import ResultsError
from dynhp_bench.metrics import EpochRecord, memory_mb, model_bytes
from dynhp_bench.report import DATASET_NAMES, reference_tables, select
from dynhp_bench.results import EPOCHS_FILE, RunFolder, write_text_atomic

BEST_BATCH = {("mnist", "sp"): 512, ("fashion", "sp"): 128, ("mnist", "hp"): 100, ("fashion", "hp"): 128}
BATCH_GRID = (16, 32, 64, 100, 128, 256, 512)
LAYERS = ("input", "HL-1", "HL-2")
DATASETS = ("mnist", "fashion")


def epochs_of(config: pd.Series | None) -> pd.DataFrame:
    """A configuration's epochs.csv, averaged over its seeds epoch by epoch (empty if None)."""
    if config is None:
        return pd.DataFrame()
    frames = [_read_epochs(Path(run_dir)) for run_dir in str(config["run_dirs"]).split(";")]
    numeric = pd.concat(frames).select_dtypes("number")
    return numeric.groupby("epoch", as_index=False).mean()


def _read_epochs(run_dir: Path) -> pd.DataFrame:
    """A run's epochs.csv with every column a number; a damaged one is a ResultsError naming it."""
    frame = RunFolder(run_dir).read_epochs()
    path = run_dir / EPOCHS_FILE
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


def _plot(spec: FigureSpec, data: pd.DataFrame) -> Figure:
    """One line per series in each panel of the spec."""
    panels = spec.panels()
    if spec.panel_of is not None:
        data = data.assign(panel=spec.panel_of(data))
    columns = -(-len(panels) // spec.rows)
    figure, axes = plt.subplots(spec.rows, columns, figsize=(4.6 * columns, 3.6 * spec.rows), squeeze=False)
    for ax, (key, subtitle) in zip(axes.flat, panels, strict=False):
        part = data[data["panel" if spec.panel_of is not None else spec.panel] == key]
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # 11 α_bs values + SP + HP need > 10 colours
        for name, series in part.groupby("series", sort=False):
            ax.plot(series["epoch"], series[spec.y], _line_style(str(name)) if spec.sp_styles else "-", label=str(name))
        ax.set_title(subtitle)
        ax.set_xlabel("epoch")
        ax.set_ylabel(spec.ylabel)
        ax.grid(alpha=0.3)
        if part.empty:
            ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes, color="grey")
        else:
            many = part["series"].nunique() > 6
            ax.legend(fontsize="x-small" if many else "small", ncol=2 if many else 1)
    figure.suptitle(spec.title)
    figure.tight_layout()
    return figure


def _line_style(series: str) -> str:
    """Figure 7: SP's real memory solid black, its virtual memory dashed black."""
    if series == "SP virtual":
        return "k--"
    return "k-" if series.startswith("SP") else "-"


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
    sp_styles: bool = False


FIGURES: dict[str, FigureSpec] = {
    "fig1_active_neurons": FigureSpec(
        fig1_data, "panel", _by_dataset_and_layer, "neurons", "active neurons",
        "Figure 1: active neurons per layer, SP (Σ a_j) vs HP", rows=2,
        panel_of=lambda d: d["dataset"] + "/" + d["layer"],
    ),
    "fig2_memory": FigureSpec(
        fig2_data, "dataset", _by_dataset, "memory_mb", "memory per epoch (MB)", "Figure 2: memory per epoch, SP vs HP"
    ),
    "fig3_mnist_error": FigureSpec(
        lambda configs: batch_grid_data(configs, "mnist"), "strategy", _by_strategy, "test_error_pct",
        "test error (%)", "Figure 3: MNIST, SP and HP error by batch size",
    ),
    "fig4_fashion_error": FigureSpec(
        lambda configs: batch_grid_data(configs, "fashion"), "strategy", _by_strategy, "test_error_pct",
        "test error (%)", "Figure 4: Fashion-MNIST, SP and HP error by batch size",
    ),
    "fig5_error": FigureSpec(
        fig5_data, "dataset", _by_dataset, "test_error_pct", "test error (%)",
        "Figure 5: DynHP error by α_bs, with SP and HP best",
    ),
    "fig6_batch_size": FigureSpec(
        fig6_data, "dataset", _by_dataset, "batch_size", "batch size (samples)", "Figure 6: DynHP batch size by α_bs"
    ),
    "fig7_memory": FigureSpec(
        fig7_data, "dataset", _by_dataset, "memory_mb", "memory per epoch (MB)",
        "Figure 7: memory per epoch; SP real (solid) and virtual (dashed)", sp_styles=True,
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
