"""The README's steps in order on one results folder, as a user takes them (issue 24).

Train (the first example: a full-data DynHP run), train at the smoke profile, sweep a paper sweep file at the smoke
profile, plan the smoke reproduction, report the paper's tables, then gate on a baseline. Shortened to run in well
under a minute: a synthetic MNIST and Fashion-MNIST of 2,100 training images each (the smoke profile takes the first
2,000), the first example at one epoch instead of the quick profile's 20, one thread, no estimates. Every command
must succeed on the folder the earlier ones left, a full-data run beside smoke runs included.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dynhp_bench.data.datasets import write_synthetic_dataset
from tests.test_damaged_inputs import run_cli

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--threads", "1", "--quiet"]


def test_the_readmes_steps_in_order_on_one_results_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    for seed, name in enumerate(("mnist", "fashion")):  # `reproduce` checks both before it plans
        write_synthetic_dataset(data, name, n_train=2100, n_test=200, seed=seed)
    monkeypatch.setenv("DYNHP_DATA", str(data))  # the README gives the data folder once, through $DYNHP_DATA
    results = tmp_path / "results"
    out = ["--out", str(results)]

    # "Train a run": dynhp-bench train --dataset mnist --strategy dynhp (full data), then --profile smoke.
    code, _, err = run_cli(["train", "--dataset", "mnist", "--strategy", "dynhp", "--epochs", "1", *QUIET, *out],
                           capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["train", "--profile", "smoke", *QUIET, *out], capsys)
    assert code == 0, err
    assert len(list((results / "runs").iterdir())) == 2

    # "Sweep a parameter": dynhp-bench sweep --file sweeps/table2_mnist.toml --profile smoke.
    table2 = str(ROOT / "sweeps" / "table2_mnist.toml")
    code, stdout, err = run_cli(["sweep", "--file", table2, "--profile", "smoke", "--workers", "1", "--no-estimate",
                                 "--threads", "1", *out], capsys)  # fmt: skip
    assert code == 0, err
    assert "7 of 7 trials done" in stdout
    assert "(reused: already complete)" in err  # the smoke train above is the sweep's DynHP α_bs 0.972 point
    assert len(list((results / "runs").iterdir())) == 8

    # "Reproduce the paper": the plan counts the sweep's runs as done.
    code, _, err = run_cli(["reproduce", "--profile", "smoke", "--plan-only", "--no-estimate", *out], capsys)
    assert code == 0, err
    assert "plan: 37 runs (74 epochs) left" in err  # 44 runs, 7 of them trained by the sweep

    # "Tables, figures and a CI gate": report --paper-tables, then check.
    code, _, err = run_cli(["report", "--paper-tables", "--results", str(results)], capsys)
    assert code == 0 and "error:" not in err, err
    report = results / "report"
    table = pd.read_csv(report / "table2_mnist.csv")
    assert table["status"].tolist() == ["ok"] * 7 and set(table["profile"]) == {"smoke"}
    competitors = pd.read_csv(report / "competitors_mnist.csv")
    assert sorted(zip(competitors["group"], competitors["profile"], strict=True)) == [
        ("dynhp", "quick"), ("dynhp", "smoke"), ("hp", "smoke"), ("sp", "smoke"),
    ]  # fmt: skip
    assert (report / "fig8_pareto_mnist.png").is_file()

    committed = str(ROOT / "results" / "baseline_smoke.json")
    code, _, err = run_cli(["check", "--baseline", committed, "--results", str(results)], capsys)
    assert code == 1 and "error:" not in err, err  # real MNIST's numbers, 36 of its configurations not run here
    mine = str(tmp_path / "baseline.json")
    code, stdout, err = run_cli(["check", "--baseline", mine, "--results", str(results), "--update"], capsys)
    assert code == 0 and "with 8 configurations" in stdout, err
    code, stdout, err = run_cli(["check", "--baseline", mine, "--results", str(results)], capsys)
    assert code == 0 and "all 24 checks passed (8 configurations × 3 metrics" in stdout, err
