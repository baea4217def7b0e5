"""The evaluation calibration's table (docs/fidelity.md, "Evaluation and biases"), from its run folders.

`sweeps/calibrate_eval.toml` trains SP at batch 512 and HP at batch 100 on MNIST at the paper profile, biases drawn
(normal) or 0 (zeros), each with the parameter average on (ema_decay 0.999). Every run therefore gives two readings
of one trained network: `final_error_pct` (evaluated with the average) and `final_error_raw_pct` (the trained
parameters themselves, exactly what the same run without the average gives). This script lays the four readings per
strategy out beside the paper's Table 2, per seed and as mean ± standard deviation.

    python benchmarks/calibration_eval.py --results results/calibrate_eval --out docs

writes `calibration_eval.csv` (one row per run and reading) and `calibration_eval_table.{csv,md}` under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dynhp_bench.analysis.report import reference_tables
from dynhp_bench.training.run_folder import complete_runs

READINGS = {"final_error_raw_pct": "raw", "final_error_pct": "ema 0.999"}


def runs_frame(results: Path) -> pd.DataFrame:
    """One row per run and evaluation: strategy, bias_init, evaluation, seed, error %, model size MB, epochs."""
    rows = []
    for folder in complete_runs(results):
        summary = folder.read_summary()
        settings = summary["settings"]
        for key, evaluation in READINGS.items():
            rows.append({
                "strategy": settings["strategy"], "batch_size": settings["batch_size"],
                "bias_init": settings.get("bias_init") or "normal", "evaluation": evaluation,
                "seed": summary["seed"], "epochs": summary["epochs"], "error_pct": summary[key],
                "model_size_mb": summary["model_size_mb"], "training_memory_mb": summary["training_memory_mb"],
                "run_id": summary["run_id"],
            })  # fmt: skip
    return pd.DataFrame(rows).sort_values(["strategy", "bias_init", "evaluation", "seed"], ignore_index=True)


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds of each strategy × bias × evaluation, beside the paper's Table 2 error."""
    paper = reference_tables()
    paper = paper[(paper["dataset"] == "mnist") & paper["strategy"].isin(["sp", "hp"])]
    paper_error = dict(zip(paper["strategy"], paper["error_pct"], strict=True))
    grouped = frame.groupby(["strategy", "batch_size", "bias_init", "evaluation"], sort=True)
    out = grouped["error_pct"].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"mean": "error_pct", "std": "error_pct_std", "count": "seeds"})
    out["error_pct_std"] = out["error_pct_std"].fillna(0.0)
    out["paper_error_pct"] = out["strategy"].map(paper_error)
    out["minus_paper"] = (out["error_pct"] - out["paper_error_pct"]).round(3)
    out["model_size_mb"] = grouped["model_size_mb"].mean().to_numpy()
    out["per_seed"] = grouped["error_pct"].agg(lambda s: ", ".join(f"{v:.2f}" for v in s)).to_numpy()
    return out


def markdown(out: pd.DataFrame) -> str:
    """The table as Markdown."""
    lines = [
        "| strategy | biases | evaluation | error % (mean ± sd) | seeds | per seed | paper | ours − paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in out.itertuples():
        lines.append(
            f"| {row.strategy.upper()} b{row.batch_size} | {row.bias_init} | {row.evaluation} "
            f"| {row.error_pct:.3f} ± {row.error_pct_std:.3f} | {row.seeds} | {row.per_seed} "
            f"| {row.paper_error_pct:.2f} | {row.minus_paper:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/calibrate_eval"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    frame = runs_frame(args.results)
    out = table(frame)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "calibration_eval.csv", index=False)
    out.to_csv(args.out / "calibration_eval_table.csv", index=False)
    (args.out / "calibration_eval_table.md").write_text(markdown(out), encoding="utf-8")
    print(markdown(out))


if __name__ == "__main__":
    main()
