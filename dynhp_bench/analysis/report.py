"""The paper's tables from run folders: DataFrame in, DataFrame out.

`index_runs` reads every complete run under a results root (unfinished folders are listed, never
read as results); `configurations` groups runs that differ only in their seed (mean, std, count);
`paper_table` lays one dataset's configurations out like the paper's Table 2 / 3, beside the paper's
own values (`reference_tables.csv`, shipped with the package) and ours minus the paper's.

Runs shorter than the paper's 2,000 epochs have a smaller training memory by construction, so every
table also carries the per-epoch mean memory, its Δ% against SP (comparable whatever the epochs) and
that mean over 2,000 epochs (what the run would use at the paper's length), which is what is set
against the paper's training memory.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from dynhp_bench.errors import ResultsError, SettingsError, shown
from dynhp_bench.memory import TRAINING_MEMORY_DEFINITION, TRAINING_MEMORY_UNIT
from dynhp_bench.models.registry import DEFAULT_ARCH
from dynhp_bench.settings.config import DIGEST_OMITTED_AT_DEFAULT
from dynhp_bench.training.run_folder import INFERENCE_FILE, RUNS_DIR, SUMMARY_FILE, RunFolder, complete_runs, read_json

PAPER_EPOCHS = 2000
METHODS = {"SP": "sp", "HP": "hp", "DynHP": "dynhp", "Dense": "dense"}
DATASET_NAMES = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}
TABLE_NUMBER = {"mnist": 2, "fashion": 3}
PAPER_TABLE_SWEEPS = {"mnist": "sweeps/table2_mnist.toml", "fashion": "sweeps/table3_fashion.toml"}
# A configuration: everything but the seed (other settings at their paper values are part of the match).
CONFIG_KEY = ["dataset", "strategy", "batch_size", "alpha_bs", "profile", "epochs", "lam", "gamma", "subset"]
# Settings that tell competitor configurations apart (None for the strategies that do not use them), and the
# architecture (None for the default MLP, so the keys of MLP configurations stay as they were).
EXTRA_KEY = [
    "validation_split", "prune_schedule", "prune_interval", "slope_min", "slope_max", "prune_rate",
    "reset_optimizer", "reset_biases", "normalize", "augment", "arch",
    "ema_decay", "bias_init", "growth_cadence", "growth_rounding", "growth_loss", "growth_variance",
    "growth_correction", "growth_smoothing", "lambda_scaling", "gate_draws",
]  # fmt: skip
# Settings of the key that count only when on: off reads as None, like a run written before they existed.
KEY_WHEN_ON = ("normalize", "augment")
# Readings and settings at the value every run had before they could be changed read as None (absent), so the keys
# of those runs (and of committed baselines) stay as they were.
KEY_LEGACY = {
    "gate_draws": "batch", "growth_cadence": "epoch", "growth_rounding": "ceil", "lambda_scaling": "divide_by_n",
    **{name: DIGEST_OMITTED_AT_DEFAULT[name] for name in (
        "ema_decay", "bias_init", "growth_loss", "growth_variance", "growth_correction", "growth_smoothing",
    )},
}  # fmt: skip
# Settings a run may leave unset (a strategy that does not use them, a full-data run's subset): the index holds them
# as the Python values summary.json gave (None, 2000, 0.972), for pandas would read [None, 2000] as [nan, 2000.0].
OPTIONAL_SETTINGS = ["alpha_bs", "lam", "gamma", "subset", *EXTRA_KEY, "n_train"]
METRICS = ["final_error_pct", "model_size_mb", "training_memory_mb", "mean_memory_mb", "nonzero_params", "wall_s"]
OPTIONAL_METRICS = ["nonzero_params"]  # absent from runs written before it existed
RUN_LENGTH = ["profile", "epochs", "subset"]


def reference_tables() -> pd.DataFrame:
    """The paper's Tables 2-3 (a copy of shared/paper/reference_tables.csv inside the package)."""
    text = resources.files("dynhp_bench.analysis").joinpath("reference_tables.csv").read_text(encoding="utf-8")
    frame = pd.read_csv(io.StringIO(text))
    frame["strategy"] = frame["method"].map(METHODS)
    return frame


@dataclass(frozen=True)
class RunIndex:
    """Complete runs, one row each (settings and summary), and the unfinished run folders."""

    runs: pd.DataFrame
    incomplete: list[Path]


def index_runs(results_root: Path) -> RunIndex:
    """Read every run folder under `results_root`; a root with no complete run is a ResultsError."""
    rows = []
    for folder in complete_runs(results_root):
        try:
            rows.append(_summary_row(folder))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ResultsError(
                f"{folder.path / 'summary.json'} is damaged ({type(exc).__name__}: {exc}); expected the summary "
                "`dynhp-bench train` writes (train the run again with --force, or remove its folder)"
            ) from None
    runs_dir = Path(results_root) / RUNS_DIR
    incomplete = (
        sorted(p for p in runs_dir.iterdir() if p.is_dir() and not RunFolder(p).is_complete)
        if runs_dir.is_dir()
        else []
    )
    if not rows:
        raise ResultsError(
            f"no complete runs under {Path(results_root) / RUNS_DIR}; expected run folders written by "
            f"`dynhp-bench train`, `sweep` or `reproduce`"
        )
    return RunIndex(_index_frame(rows), incomplete)


def _index_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """The index's rows as a DataFrame whose optional settings keep the types the run folders gave them."""
    frame = pd.DataFrame(rows)
    for name in OPTIONAL_SETTINGS:
        frame[name] = pd.Series([row[name] for row in rows], index=frame.index, dtype=object)
    return frame


def inference_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The inference measurements (`bench --inference`) of the runs that have them, one row per runtime."""
    rows = []
    for run in runs.itertuples():
        path = Path(run.run_dir) / INFERENCE_FILE
        if path.is_file():
            measurements = read_json(path)
            if not isinstance(measurements, list) or not all(isinstance(m, dict) for m in measurements):
                raise ResultsError(f"{path} is damaged; expected the list of measurements `bench --inference` writes")
            for measured in measurements:
                rows.append({"run_id": run.run_id, "dataset": run.dataset, "final_error_pct": run.final_error_pct,
                             **measured})  # fmt: skip
    return pd.DataFrame(rows)


def _summary_row(folder: RunFolder) -> dict[str, object]:
    """One run's row of the index from its summary.json (a damaged one raises KeyError, TypeError or ValueError)."""
    summary = folder.read_summary()
    settings = summary.get("settings", {})
    if not isinstance(settings, dict):
        raise TypeError("settings is not an object")
    row = {
        "run_id": str(summary["run_id"]),
        "run_dir": str(folder.path),
        "dataset": settings.get("dataset", summary.get("dataset")),
        "strategy": settings.get("strategy", summary.get("strategy")),
        "batch_size": _count("batch_size", settings.get("batch_size", summary.get("batch_size_initial"))),
        "alpha_bs": settings.get("alpha_bs"),
        "profile": settings.get("profile", summary.get("profile")),
        "epochs": _count("epochs", summary["epochs"]),
        "lam": settings.get("lambda"),
        "gamma": settings.get("gamma"),
        "subset": settings.get("subset"),
        **{name: _key_value(name, settings.get(name)) for name in EXTRA_KEY},
        "seed": _count("seed", summary["seed"], low=0),
        "n_train": summary.get("n_train"),
        # Runs written before a metric existed (nonzero_params) read it as NaN.
        **{metric: float(summary.get(metric, math.nan)) for metric in OPTIONAL_METRICS},
        **{metric: float(summary[metric]) for metric in METRICS if metric not in OPTIONAL_METRICS},
    }
    for name in ("dataset", "strategy", "profile"):
        if not isinstance(row[name], str):
            raise TypeError(f"{name} is {row[name]!r}, not a name")
    for name in ("alpha_bs", "lam", "gamma", "subset", "n_train"):
        value = row[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TypeError(f"{name} is {shown(value)}, not a number")
    for name in EXTRA_KEY:  # configurations are keyed by them: one value each, not an array or an object
        if not isinstance(row[name], str | int | float | bool | None):
            raise TypeError(f"{name} is {shown(row[name])}, not a setting's value")
    for metric in METRICS:
        if metric not in OPTIONAL_METRICS and not math.isfinite(row[metric]):  # type: ignore[arg-type]
            raise ValueError(f"{metric} is {row[metric]}")
    return row


def _count(name: str, value: object, *, low: int = 1) -> int:
    """A count of summary.json as written (int() would read 0.5 epochs as 0, then a setting never typed)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} is {shown(value)}, not an integer ≥ {low}")
    return value


def configurations(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: each metric's mean and std over its seeds, and the number of seeds."""
    runs = runs.assign(**{name: runs[name].astype(object) for name in EXTRA_KEY if name in runs})
    for name in EXTRA_KEY:
        if name not in runs:
            runs = runs.assign(**{name: None})
    grouped = runs.groupby(CONFIG_KEY + EXTRA_KEY, dropna=False, sort=True)
    frame = grouped[METRICS].mean().join(grouped[METRICS].std(ddof=1).fillna(0.0).add_suffix("_std"))
    frame["seeds"] = grouped.size()
    frame["run_dirs"] = grouped["run_dir"].agg(lambda dirs: ";".join(sorted(dirs)))
    frame = frame.reset_index()
    # The group keys come back from pandas re-inferred ([None, 2000] as [nan, 2000.0]): take each configuration's
    # settings from its first run instead, as the run folders gave them (a setting a strategy does not use: None).
    first = runs.assign(_group=grouped.ngroup().to_numpy()).drop_duplicates("_group").sort_values("_group")
    for column in ("alpha_bs", "lam", "gamma", "subset", *EXTRA_KEY):
        frame[column] = pd.Series([v if _present(v) else None for v in first[column]], dtype=object)
    return frame


def select(
    configs: pd.DataFrame, *, dataset: str, strategy: str, batch_size: int, alpha_bs: float | None
) -> pd.Series | None:
    """The configuration matching a paper row at the paper's λ and γ, every other setting that tells configurations
    apart at its default (so a calibration's variants beside the default runs are never taken for them): the one with
    most epochs, then seeds."""
    mlp = configs["arch"].map(lambda v: not _present(v)) if "arch" in configs else True  # the paper's are MLPs
    match = configs[
        mlp
        & (configs["dataset"] == dataset)
        & (configs["strategy"] == strategy)
        & (configs["batch_size"] == batch_size)
        & configs["lam"].map(lambda v: v is None or math.isclose(v, 0.01))
        & configs["gamma"].map(lambda v: v is None or math.isclose(v, 0.5))
        & configs["alpha_bs"].map(lambda v: _same_alpha(v, alpha_bs))
    ]
    match = match[[_at_defaults(row) for row in match.to_dict("records")]]
    if match.empty:
        return None
    return match.sort_values(["epochs", "seeds"], ascending=False).iloc[0]


def _at_defaults(config: dict[str, Any]) -> bool:
    """Whether a configuration's settings outside `CONFIG_KEY` are those `train` resolves by default for it."""
    from dynhp_bench.settings.config import resolve_config

    given: dict[str, object] = {name: config[name] for name in ("dataset", "strategy", "profile")}
    given |= {"batch_size": int(config["batch_size"]), "epochs": int(config["epochs"])}
    if _present(config["alpha_bs"]):
        given["alpha_bs"] = float(config["alpha_bs"])
    if _present(config["subset"]):
        given["subset"] = int(config["subset"])  # type: ignore[call-overload]
    wanted = resolve_config(given)
    return all(_same(config[k], _key_value(k, getattr(wanted, k))) for k in EXTRA_KEY if k in config)


def _arch_key(arch: object) -> object:
    """An architecture as configurations are keyed: None for the MLP (runs written before `arch` existed too)."""
    return None if arch in (None, DEFAULT_ARCH) else arch


def _same_alpha(value: float | None, wanted: float | None) -> bool:
    if wanted is None or (isinstance(wanted, float) and math.isnan(wanted)):
        return value is None
    return value is not None and round(float(value), 6) == round(float(wanted), 6)


def _delta_pct(value: float, reference: float) -> float:
    return (value - reference) / reference * 100 if reference and not math.isnan(reference) else math.nan


def paper_table(configs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Table 2 (mnist) or 3 (fashion): the paper's rows, our numbers beside the paper's."""
    reference = reference_tables()
    reference = reference[reference["dataset"] == dataset]
    rows = []
    for ref in reference.itertuples():
        alpha = None if pd.isna(ref.alpha_bs) else float(ref.alpha_bs)
        found = select(configs, dataset=dataset, strategy=ref.strategy, batch_size=int(ref.batch_size), alpha_bs=alpha)
        row: dict[str, object] = {
            "method": ref.method,
            "batch_size": int(ref.batch_size),
            "alpha_bs": alpha,
            "status": "ok" if found is not None else "missing",
            "produced_by": PAPER_TABLE_SWEEPS[dataset],
            "paper_error_pct": ref.error_pct,
            "paper_error_delta_pct": ref.error_delta_pct,
            "paper_model_size_mb": ref.model_size_mb,
            "paper_model_size_delta_pct": ref.model_size_delta_pct,
            "paper_training_memory_mb": ref.training_memory_mb,
            "paper_training_memory_delta_pct": ref.training_memory_delta_pct,
        }
        if found is not None:
            row.update(
                {
                    "profile": found["profile"],
                    "epochs": int(found["epochs"]),
                    "seeds": int(found["seeds"]),
                    "error_pct": found["final_error_pct"],
                    "error_pct_std": found["final_error_pct_std"],
                    "model_size_mb": found["model_size_mb"],
                    "model_size_mb_std": found["model_size_mb_std"],
                    "training_memory_mb": found["training_memory_mb"],
                    "training_memory_mb_std": found["training_memory_mb_std"],
                    "mean_memory_mb": found["mean_memory_mb"],
                    "training_memory_at_2000_mb": found["mean_memory_mb"] * PAPER_EPOCHS / 1000,
                }
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in OURS_COLUMNS:
        if column not in table:
            table[column] = math.nan
    sp = table[(table["method"] == "SP") & (table["status"] == "ok")]
    sp_row = sp.iloc[0] if not sp.empty else None
    table["error_delta_pct"] = [
        _delta_pct(v, sp_row["error_pct"]) if sp_row is not None else math.nan for v in table["error_pct"]
    ]
    table["model_size_delta_pct"] = [
        _delta_pct(v, sp_row["model_size_mb"]) if sp_row is not None else math.nan for v in table["model_size_mb"]
    ]
    table["training_memory_delta_pct"] = [
        _delta_pct(v, sp_row["mean_memory_mb"]) if sp_row is not None else math.nan for v in table["mean_memory_mb"]
    ]
    # Rounded to the paper's digits (2 for error, 3 for MB), so the CSV reads 40.95, not 40.949999999999996.
    table["error_minus_paper"] = (table["error_pct"] - table["paper_error_pct"]).round(2)
    table["model_size_minus_paper"] = (table["model_size_mb"] - table["paper_model_size_mb"]).round(3)
    table["training_memory_minus_paper"] = (
        table["training_memory_at_2000_mb"] - table["paper_training_memory_mb"]
    ).round(3)
    # The paper's value against ours ± 2 standard deviations over seeds (training memory at the paper's 2,000
    # epochs, its spread scaled alike); None where one seed gives no spread to judge by.
    memory_std_at_2000 = table["training_memory_mb_std"] * PAPER_EPOCHS / table["epochs"]
    for name, ours, spread in (
        ("error", table["error_pct"], table["error_pct_std"]),
        ("model_size", table["model_size_mb"], table["model_size_mb_std"]),
        ("training_memory", table["training_memory_at_2000_mb"], memory_std_at_2000),
    ):
        paper = table[f"paper_{name}_mb" if name != "error" else "paper_error_pct"]
        table[f"paper_{name}_outside_2sd"] = [
            _outside(p, mean, std, seeds)
            for p, mean, std, seeds in zip(paper, ours, spread, table["seeds"], strict=True)
        ]
    return table[TABLE_COLUMNS]


def _outside(paper: float, mean: float, std: float, seeds: float) -> bool | None:
    """Whether `paper` lies outside mean ± 2·std (None with fewer than two seeds or no result)."""
    if not _present(mean) or not _present(seeds) or seeds < 2:
        return None
    return bool(abs(paper - mean) > 2 * std)


OURS_COLUMNS = [
    "profile", "epochs", "seeds", "error_pct", "error_pct_std", "model_size_mb", "model_size_mb_std",
    "training_memory_mb", "training_memory_mb_std", "mean_memory_mb", "training_memory_at_2000_mb",
]  # fmt: skip
TABLE_COLUMNS = [
    "method", "batch_size", "alpha_bs", "status", "profile", "epochs", "seeds",
    "error_pct", "error_pct_std", "error_delta_pct", "paper_error_pct", "paper_error_delta_pct", "error_minus_paper",
    "model_size_mb", "model_size_mb_std", "model_size_delta_pct", "paper_model_size_mb", "paper_model_size_delta_pct",
    "model_size_minus_paper",
    "training_memory_mb", "training_memory_mb_std", "mean_memory_mb", "training_memory_delta_pct",
    "training_memory_at_2000_mb", "paper_training_memory_mb", "paper_training_memory_delta_pct",
    "training_memory_minus_paper", "paper_error_outside_2sd", "paper_model_size_outside_2sd",
    "paper_training_memory_outside_2sd", "produced_by",
]  # fmt: skip


def dataset_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 1: the datasets' properties, and how many training images the results used."""
    rows = []
    for key, name in DATASET_NAMES.items():
        used = sorted({int(n) for n in runs.loc[runs["dataset"] == key, "n_train"].dropna()})
        rows.append(
            {
                "dataset": name,
                "training_images": 60_000,
                "test_images": 10_000,
                "image_size_pixels": "28×28",
                "channels": 1,
                "training_images_used": ", ".join(f"{n:,}" for n in used) if used else "none",
            }
        )
    return pd.DataFrame(rows)


def frame_markdown(frame: pd.DataFrame, title: str) -> str:
    """A plain Markdown table of a DataFrame, under a heading."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([f"# {title}", "", header, rule, *body]) + "\n"


def _cell(value: float, std: float, seeds: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    text = f"{value:.{digits}f}"
    if seeds and seeds > 1:
        text += f" ± {std:.{digits}f}"
    return text


MARK = "†"


def _mark(outside: object) -> str:
    return MARK if outside is True else ""


def _pct(value: float) -> str:
    return "" if value is None or math.isnan(value) else f" ({value:+.0f}%)"


def table_markdown(table: pd.DataFrame, dataset: str) -> str:
    """The table in the paper's form (value (Δ% vs SP)), with the paper's values and a footnote."""
    lines = [
        f"# Table {TABLE_NUMBER[dataset]}: {DATASET_NAMES[dataset]}",
        "",
        "| method | batch / α_bs | error % (Δ) | paper | model size MB (Δ) | paper | training memory "
        f"{TRAINING_MEMORY_UNIT} (per-epoch memory MB, Δ) | paper (2,000 epochs) | profile, epochs, seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        config = (
            f"{row.alpha_bs:.3f}" if row.alpha_bs is not None and not pd.isna(row.alpha_bs) else str(row.batch_size)
        )
        if row.method == "SP":  # the reference: no Δ against itself, as in the paper
            row = row._replace(
                error_delta_pct=math.nan, model_size_delta_pct=math.nan, training_memory_delta_pct=math.nan
            )
        if row.status == "missing":
            lines.append(
                f"| {row.method} | {config} | missing | {row.paper_error_pct:.2f} | missing | "
                f"{row.paper_model_size_mb:.3f} | missing | {row.paper_training_memory_mb:.3f} | "
                f"run `dynhp-bench sweep --file {row.produced_by}` |"
            )
            continue
        lines.append(
            f"| {row.method} | {config} "
            f"| {_cell(row.error_pct, row.error_pct_std, row.seeds, 2)}{_pct(row.error_delta_pct)} "
            f"| {row.paper_error_pct:.2f}{_mark(row.paper_error_outside_2sd)}{_pct(row.paper_error_delta_pct)} "
            f"| {_cell(row.model_size_mb, row.model_size_mb_std, row.seeds, 3)}{_pct(row.model_size_delta_pct)} "
            f"| {row.paper_model_size_mb:.3f}{_mark(row.paper_model_size_outside_2sd)}"
            f"{_pct(row.paper_model_size_delta_pct)} "
            f"| {_cell(row.training_memory_mb, row.training_memory_mb_std, row.seeds, 3)} "
            f"({row.mean_memory_mb:.3f}/epoch){_pct(row.training_memory_delta_pct)} "
            f"| {row.paper_training_memory_mb:.3f}{_mark(row.paper_training_memory_outside_2sd)}"
            f"{_pct(row.paper_training_memory_delta_pct)} "
            f"| {row.profile}, {int(row.epochs)}, {int(row.seeds)} |"
        )
    epochs = table["epochs"].dropna()
    lines.append("")
    lines.append(
        "Δ: difference from SP in %, as in the paper. Ours: mean ± standard deviation over the seeds (the last "
        f"column's count). {MARK}: the paper's value lies outside our mean ± 2 standard deviations (judged with 2 "
        f"seeds or more). Model size: the final network's weights and biases. {TRAINING_MEMORY_DEFINITION}"
    )
    if not epochs.empty and epochs.min() < PAPER_EPOCHS:
        span = f"{int(epochs.min())}" if epochs.min() == epochs.max() else f"{int(epochs.min())}–{int(epochs.max())}"
        lines.append(
            f"Runs here have {span} epochs, not the paper's {PAPER_EPOCHS:,}: "
            "training memory is shown as computed and as a per-epoch mean, and its Δ% is taken on the per-epoch "
            "mean so that it stays comparable with the paper's. The CSV's `training_memory_at_2000_mb` is the "
            "per-epoch mean over 2,000 epochs, set against the paper's value."
        )
    return "\n".join(lines) + "\n"


# Datasets the paper's tables leave out: each gets a table of its own with no paper column.
OWN_TABLE_DATASETS = {"cifar10": "CIFAR-10"}
OWN_TABLE_NOTE = (
    "Not in the paper's Tables 2-3: the later version of the paper reports CIFAR-10, but its numbers are not in our "
    "references, so there is no paper column. Δ: difference from SP of the same architecture and run length, in %, "
    f"training memory's on the per-epoch memory. {TRAINING_MEMORY_DEFINITION}"
)
OWN_TABLE_COLUMNS = [
    "method", "configuration", "arch", "augment", "normalize", "profile", "epochs", "subset", "seeds",
    "error_pct", "error_pct_std", "error_delta_pct", "model_size_mb", "model_size_mb_std", "model_size_delta_pct",
    "training_memory_mb", "training_memory_mb_std", "mean_memory_mb", "training_memory_delta_pct",
]  # fmt: skip
_STRATEGY_ORDER = {"dense": 0, "sp": 1, "hp": 2, "dynhp": 3}


def own_table(configs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """One row per configuration of `dataset` (SP, HP, DynHP, then the others), each with its Δ% against the SP
    configuration of the same architecture and run length (the one with most seeds); empty without runs."""
    part = configs[configs["dataset"] == dataset].copy()
    part["arch"] = part["arch"].fillna("mlp") if "arch" in part else "mlp"
    part["order"] = part["strategy"].map(_STRATEGY_ORDER).fillna(len(_STRATEGY_ORDER))
    part = part.sort_values(["arch", "profile", "epochs", "order", "batch_size", "alpha_bs"], na_position="first")
    rows = []
    for config in part.to_dict("records"):
        same = part[(part["arch"] == config["arch"]) & (part["strategy"] == "sp")]
        same = same[[all(_same(r[k], config[k]) for k in RUN_LENGTH) for r in same.to_dict("records")]]
        sp = same.sort_values("seeds").iloc[-1] if not same.empty else None
        strategy = str(config["strategy"])
        rows.append({
            "method": next((m for m, key in METHODS.items() if key == strategy), strategy),
            "configuration": configuration_label(config),
            "arch": config["arch"],
            "augment": bool(config.get("augment")),
            "normalize": bool(config.get("normalize")),
            "profile": config["profile"], "epochs": int(config["epochs"]), "subset": config["subset"],
            "seeds": int(config["seeds"]),
            "error_pct": config["final_error_pct"], "error_pct_std": config["final_error_pct_std"],
            "error_delta_pct": _delta_vs(config, sp, "final_error_pct"),
            "model_size_mb": config["model_size_mb"], "model_size_mb_std": config["model_size_mb_std"],
            "model_size_delta_pct": _delta_vs(config, sp, "model_size_mb"),
            "training_memory_mb": config["training_memory_mb"],
            "training_memory_mb_std": config["training_memory_mb_std"],
            "mean_memory_mb": config["mean_memory_mb"],
            "training_memory_delta_pct": _delta_vs(config, sp, "mean_memory_mb"),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=OWN_TABLE_COLUMNS)


def _delta_vs(config: dict[str, Any], sp: pd.Series | None, metric: str) -> float:
    return math.nan if sp is None else _delta_pct(float(config[metric]), float(sp[metric]))


def own_table_markdown(table: pd.DataFrame, dataset: str) -> str:
    """`own_table` as Markdown: value ± std over seeds (Δ% vs SP), and the note saying why there is no paper column."""
    lines = [
        f"# {OWN_TABLE_DATASETS.get(dataset, dataset)}",
        "",
        f"| method | configuration | arch | augment, normalise | error % (Δ) | model size MB (Δ) | training memory "
        f"{TRAINING_MEMORY_UNIT} (per-epoch memory MB, Δ) | profile, epochs, seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        sp = row.method == "SP"  # the reference: no Δ against itself
        lines.append(
            f"| {row.method} | {row.configuration} | {row.arch} "
            f"| {'on' if row.augment else 'off'}, {'on' if row.normalize else 'off'} "
            f"| {_cell(row.error_pct, row.error_pct_std, row.seeds, 2)}{'' if sp else _pct(row.error_delta_pct)} "
            f"| {_cell(row.model_size_mb, row.model_size_mb_std, row.seeds, 3)}"
            f"{'' if sp else _pct(row.model_size_delta_pct)} "
            f"| {_cell(row.training_memory_mb, row.training_memory_mb_std, row.seeds, 3)} "
            f"({row.mean_memory_mb:.3f}/epoch){'' if sp else _pct(row.training_memory_delta_pct)} "
            f"| {row.profile}, {row.epochs}, {row.seeds} |"
        )
    return "\n".join([*lines, "", OWN_TABLE_NOTE]) + "\n"


def missing_rows(tables: dict[str, pd.DataFrame]) -> list[str]:
    """One line per missing paper configuration, naming the sweep file that produces it."""
    out = []
    for dataset, table in tables.items():
        for row in table[table["status"] == "missing"].itertuples():
            what = (
                f"α_bs {row.alpha_bs:.3f}"
                if row.alpha_bs is not None and not pd.isna(row.alpha_bs)
                else (f"batch {row.batch_size}")
            )
            out.append(f"{DATASET_NAMES[dataset]} {row.method} {what}: produced by {row.produced_by}")
    return out


def configuration_label(row: pd.Series | dict[str, object]) -> str:
    """A short name for a configuration in tables and figures: strategy, batch, α_bs, DyPrune's schedule."""
    label = f"{row['strategy']} b{int(row['batch_size'])}"  # type: ignore[call-overload]
    if _present(row["alpha_bs"]):
        label += f" α{float(row['alpha_bs']):g}"  # type: ignore[arg-type]
    if _present(row.get("prune_schedule")):
        label += f" {row['prune_schedule']}"
    return label


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _key_value(name: str, value: object) -> object:
    if name == "arch":
        return _arch_key(value)
    if name in KEY_LEGACY:
        return None if value is None or value == KEY_LEGACY[name] else value
    return None if name in KEY_WHEN_ON and not value else value


def _same(value: object, wanted: object) -> bool:
    if not _present(wanted):
        return not _present(value)
    if not _present(value):
        return False
    if isinstance(wanted, bool) or isinstance(value, bool):
        return bool(value) == bool(wanted)
    if isinstance(wanted, int | float):
        return math.isclose(float(value), float(wanted), rel_tol=1e-9)  # type: ignore[arg-type]
    return str(value) == str(wanted)


COMPETITOR_COLUMNS = [
    "group", "strategy", "batch_size", "alpha_bs", "prune_schedule", "profile", "epochs", "subset", "seeds",
    "final_error_pct", "final_error_pct_std", "model_size_mb", "model_size_mb_std", "nonzero_params",
    "nonzero_params_std", "training_memory_mb", "training_memory_mb_std", "wall_s", "wall_s_std", "run_dirs",
]  # fmt: skip


def competitor_entries(path: Path) -> list[tuple[str, dict[str, object]]]:
    """(group name, settings) of each point of a competitors sweep file (the swept value set as a setting)."""
    from dynhp_bench.sweep.spec import read_sweep_file, setting_name, value_setting

    spec = read_sweep_file(path)
    return [
        (group.name if len(group.values) == 1 else f"{group.name} {value}",
         {**group.settings, setting_name(group.param): value_setting(group.param, value)})
        for group in spec.groups
        for value in group.values
    ]  # fmt: skip


def competitors_table(configs: pd.DataFrame, entries: list[tuple[str, dict[str, object]]]) -> pd.DataFrame:
    """One row per competitor × run length (profile, epochs, subset) with results: mean and std over seeds.

    `entries` are (name, settings) pairs as a competitors sweep file's groups give them; a configuration
    matches when every setting that tells configurations apart is what `train` resolves for the entry at
    that run length (so the paper's λ and γ, DyPrune's default window and its validation split count).
    """
    from dynhp_bench.settings.config import resolve_config

    rows = []
    lengths = configs[RUN_LENGTH].drop_duplicates().itertuples(index=False)
    for profile, epochs, subset in lengths:
        for name, settings in entries:
            length = {"profile": profile, "epochs": int(epochs), "subset": None if not _present(subset) else subset}
            try:
                wanted = resolve_config({**settings, **length})
            except SettingsError as exc:  # the run length came from summary.json: name the one it came from
                runs = configs[[all(_same(row[k], v) for k, v in length.items()) for _, row in configs.iterrows()]]
                summary = Path(str(runs["run_dirs"].iloc[0]).split(";")[0]) / SUMMARY_FILE
                raise ResultsError(
                    f"{summary}: its run length ({exc}) is not one `dynhp-bench train` makes; expected the summary "
                    "it writes (train the run again with --force, or remove its folder)"
                ) from None
            match = configs[
                configs.apply(
                    lambda row, w=wanted: all(
                        _same(row[k], _key_value(k, getattr(w, k))) for k in CONFIG_KEY + EXTRA_KEY if k in row.index
                    ),
                    axis=1,
                )
            ]
            for _, row in match.iterrows():
                rows.append({"group": name, **{c: row.get(c) for c in COMPETITOR_COLUMNS if c != "group"}})
    return pd.DataFrame(rows, columns=COMPETITOR_COLUMNS)


def competitors_markdown(table: pd.DataFrame, dataset: str) -> str:
    """The competitors table as Markdown: one section per run length, mean ± std over seeds."""
    lines = [f"# Competitors: {DATASET_NAMES.get(dataset, dataset)}", ""]
    if table.empty:
        lines.append(f"No results yet: run `dynhp-bench sweep --file sweeps/competitors_{dataset}.toml`.")
        return "\n".join(lines) + "\n"
    for (profile, epochs, subset), part in table.groupby(RUN_LENGTH, dropna=False, sort=False):
        data = "full training set" if not _present(subset) else f"first {int(subset):,} training images"
        lines += [
            f"## {profile} profile, {int(epochs)} epochs, {data}",
            "",
            "| strategy | configuration | seeds | error % | model size MB | non-zero params | "
            "training memory MB | wall s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in part.itertuples():
            seeds = int(row.seeds)
            lines.append(
                f"| {row.group} | {configuration_label(row._asdict())} | {seeds} "
                f"| {_cell(row.final_error_pct, row.final_error_pct_std, seeds, 2)} "
                f"| {_cell(row.model_size_mb, row.model_size_mb_std, seeds, 3)} "
                f"| {_cell(row.nonzero_params, row.nonzero_params_std, seeds, 0)} "
                f"| {_cell(row.training_memory_mb, row.training_memory_mb_std, seeds, 4)} "
                f"| {_cell(row.wall_s, row.wall_s_std, seeds, 1)} |"
            )
        lines.append("")
    lines.append(
        "Mean ± standard deviation over seeds. Model size: the weights and biases the final network holds "
        "(dense storage of the surviving neurons); non-zero params: those of them not zero (DyPrune's "
        f"unstructured sparsity). {TRAINING_MEMORY_DEFINITION} "
        "DyPrune trains on the training set minus its validation split."
    )
    return "\n".join(lines) + "\n"
