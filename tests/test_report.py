"""Tables, figures and the CI gate on hand-made run folders with known values."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from dynhp_bench.analysis import figures, report
from dynhp_bench.cli.commands import main
from dynhp_bench.memory import batch_bytes, memory_mb, to_mb
from dynhp_bench.settings.config import TrainConfig, resolve_config
from dynhp_bench.training.record import EpochRecord
from dynhp_bench.training.run_folder import RunFolder, run_path
from dynhp_bench.training.trainer import Runtime, summarize, train

FULL_BYTES = 1_066_440


def make_run(
    root: Path,
    config: TrainConfig,
    *,
    errors: list[float],
    model_bytes: list[int] | None = None,
    batches: list[int] | None = None,
    expected_active: tuple[float, float, float] = (700.0, 250.0, 80.0),
    complete: bool = True,
    nonzero: int = 266_610,
) -> Path:
    """Write a run folder as `train` would, with the given per-epoch values."""
    n = len(errors)
    model_bytes = model_bytes or [FULL_BYTES] * n
    batches = batches or [config.batch_size] * n
    records = []
    for i in range(n):
        records.append(
            EpochRecord(
                epoch=i + 1, strategy=config.strategy, dataset=config.dataset, seed=config.seed,
                batch_size=batches[i], train_loss=1.0, train_penalty=0.1, test_error_pct=errors[i],
                validation_loss=math.nan, nonzero_params=nonzero,
                active_0=784, active_1=300, active_2=100, expected_active_0=expected_active[0],
                expected_active_1=expected_active[1], expected_active_2=expected_active[2],
                model_bytes=model_bytes[i], batch_bytes=batch_bytes(batches[i], config.sample_bytes),
                memory_mb=memory_mb(model_bytes[i], batch_bytes(batches[i], config.sample_bytes)),
                model_size_mb=to_mb(model_bytes[i]),
                trainable_params=0, footprint_bytes=0, variance_ratio=math.nan, batch_cap=None, steps=1,
                wall_s=0.1, peak_rss_bytes=0,
            )
        )  # fmt: skip
    folder = RunFolder(run_path(root, config.run_id))
    folder.start({"run_id": config.run_id, "settings": config.to_dict()})
    for record in records:
        folder.append_epoch(record)
    if complete:
        folder.finish(summarize(config, records, n_train=60_000, wall_s=1.0))
    return folder.path


def sp(**kw: object) -> TrainConfig:
    settings = {"strategy": "sp", "batch_size": 512, "profile": "paper", **kw}
    settings.setdefault("ema_decay", 0.999 if settings["profile"] == "paper" else None)  # the profiles' defaults
    return TrainConfig(**settings)  # type: ignore[arg-type]


def test_sp_row_reproduces_the_papers_1041_and_5219(tmp_path: Path) -> None:
    make_run(tmp_path, sp(epochs=2000), errors=[1.42] * 2000)
    table = report.paper_table(report.configurations(report.index_runs(tmp_path).runs), "mnist")
    row = table[table["method"] == "SP"].iloc[0]
    assert row["status"] == "ok" and row["epochs"] == 2000 and row["seeds"] == 1
    assert round(row["model_size_mb"], 3) == 1.041 and row["model_size_minus_paper"] == pytest.approx(0.0, abs=5e-4)
    assert round(row["training_memory_mb"], 3) == 5.219
    assert row["training_memory_at_2000_mb"] == pytest.approx(row["training_memory_mb"])
    assert row["error_minus_paper"] == pytest.approx(0.0)
    assert (table[table["method"] == "DynHP"]["status"] == "missing").all()


def test_deltas_are_against_our_sp_row_and_short_runs_compare_per_epoch(tmp_path: Path) -> None:
    make_run(tmp_path, sp(epochs=10), errors=[2.0] * 10)
    hp_bytes = [FULL_BYTES - 100_000 * i for i in range(10)]
    hp = TrainConfig(strategy="hp", batch_size=100, epochs=10, profile="paper", ema_decay=0.999)
    make_run(tmp_path, hp, errors=[3.0] * 10, model_bytes=hp_bytes)
    table = report.paper_table(report.configurations(report.index_runs(tmp_path).runs), "mnist").set_index("method")
    assert table.loc["HP", "error_delta_pct"] == pytest.approx(50.0)
    assert table.loc["HP", "model_size_mb"] == pytest.approx(to_mb(hp_bytes[-1]))
    assert table.loc["HP", "model_size_delta_pct"] == pytest.approx((hp_bytes[-1] - FULL_BYTES) / FULL_BYTES * 100)
    hp_mean = sum(memory_mb(b, batch_bytes(100, 3136)) for b in hp_bytes) / 10
    sp_mean = memory_mb(FULL_BYTES, batch_bytes(512, 3136))
    assert table.loc["HP", "training_memory_delta_pct"] == pytest.approx((hp_mean - sp_mean) / sp_mean * 100)
    assert table.loc["HP", "training_memory_at_2000_mb"] == pytest.approx(hp_mean * 2)
    markdown = report.table_markdown(table.reset_index(), "mnist")
    assert "Runs here have 10 epochs" in markdown and "| SP | 512 | 2.00 |" in markdown


def test_several_seeds_give_mean_and_std(tmp_path: Path) -> None:
    make_run(tmp_path, sp(epochs=3, seed=0), errors=[5.0, 3.0, 1.0])
    make_run(tmp_path, sp(epochs=3, seed=1), errors=[5.0, 3.0, 2.0])
    configs = report.configurations(report.index_runs(tmp_path).runs)
    assert len(configs) == 1
    assert configs.iloc[0]["seeds"] == 2
    assert configs.iloc[0]["final_error_pct"] == pytest.approx(1.5)
    assert configs.iloc[0]["final_error_pct_std"] == pytest.approx(math.sqrt(0.5))
    markdown = report.table_markdown(report.paper_table(configs, "mnist"), "mnist")
    assert "1.50 ± 0.71" in markdown


def test_the_longest_profile_is_chosen_and_other_settings_do_not_match(tmp_path: Path) -> None:
    make_run(tmp_path, sp(epochs=2, profile="smoke"), errors=[9.0, 8.0])
    make_run(tmp_path, sp(epochs=4, profile="quick"), errors=[9.0, 8.0, 7.0, 6.0])
    make_run(tmp_path, sp(epochs=9, lam=0.5), errors=[1.0] * 9)  # not the paper's λ
    table = report.paper_table(report.configurations(report.index_runs(tmp_path).runs), "mnist")
    row = table[table["method"] == "SP"].iloc[0]
    assert (row["profile"], row["epochs"], row["error_pct"]) == ("quick", 4, 6.0)


def test_architectures_are_configurations_of_their_own_and_only_the_mlp_fills_the_paper_table(tmp_path: Path) -> None:
    make_run(tmp_path, sp(epochs=3), errors=[5.0, 3.0, 1.0])
    make_run(tmp_path, sp(epochs=3, arch="resnet20"), errors=[5.0, 3.0, 9.0])
    configs = report.configurations(report.index_runs(tmp_path).runs)
    assert len(configs) == 2 and configs["seeds"].tolist() == [1, 1]
    assert [v for v in configs["arch"] if isinstance(v, str)] == ["resnet20"]  # the MLP's is None (unset)
    row = report.paper_table(configs, "mnist").set_index("method").loc["SP"]
    assert row["error_pct"] == 1.0


def test_unfinished_runs_are_listed_not_read(tmp_path: Path) -> None:
    make_run(tmp_path, sp(epochs=2), errors=[1.0, 1.0])
    unfinished = make_run(tmp_path, sp(epochs=3), errors=[1.0, 1.0], complete=False)
    index = report.index_runs(tmp_path)
    assert len(index.runs) == 1 and index.incomplete == [unfinished]


def test_figure_data_follow_their_inputs(tmp_path: Path) -> None:
    make_run(tmp_path, sp(epochs=3), errors=[3.0, 2.0, 1.0], expected_active=(600.0, 200.0, 50.0))
    hp_bytes = [FULL_BYTES, 900_000, 800_000]
    hp = TrainConfig(strategy="hp", batch_size=100, epochs=3, profile="paper", ema_decay=0.999)
    make_run(tmp_path, hp, errors=[4.0, 3.0, 2.5], model_bytes=hp_bytes)
    make_run(tmp_path, TrainConfig(strategy="dynhp", alpha_bs=0.972, epochs=3, profile="paper", ema_decay=0.999),
             errors=[6.0, 4.0, 2.0], batches=[16, 19, 23])  # fmt: skip
    make_run(tmp_path, sp(batch_size=64, epochs=3), errors=[7.0, 6.0, 5.0])
    configs = report.configurations(report.index_runs(tmp_path).runs)

    fig1 = figures.fig1_data(configs)
    sp_input = fig1[(fig1["series"] == "SP") & (fig1["layer"] == "input")]
    assert sp_input["neurons"].tolist() == [600.0] * 3
    assert fig1[(fig1["series"] == "HP") & (fig1["layer"] == "HL-1")]["neurons"].tolist() == [300] * 3
    fig2 = figures.fig2_data(configs)
    assert fig2[fig2["series"] == "HP"]["memory_mb"].tolist() == pytest.approx(
        [memory_mb(b, batch_bytes(100, 3136)) for b in hp_bytes]
    )
    fig3 = figures.batch_grid_data(configs, "mnist")
    assert sorted(fig3.loc[fig3["strategy"] == "SP", "series"].unique()) == ["batch 512", "batch 64"]
    assert fig3.loc[fig3["strategy"] == "HP", "series"].unique().tolist() == ["batch 100"]
    assert fig3[fig3["series"] == "batch 64"]["test_error_pct"].tolist() == [7.0, 6.0, 5.0]
    fig6 = figures.fig6_data(configs)
    assert fig6["batch_size"].tolist() == [16, 19, 23] and set(fig6["series"]) == {"α_bs 0.972"}
    fig5 = figures.fig5_data(configs)
    assert fig5[fig5["series"] == "α_bs 0.972"]["test_error_pct"].tolist() == [6.0, 4.0, 2.0]
    fig7 = figures.fig7_data(configs)
    virtual = fig7[fig7["series"] == "SP virtual"]["memory_mb"].iloc[0]
    by_hand = 4 * (600 * 200 + 200 + 200 * 50 + 50 + 50 * 10 + 10) + batch_bytes(512, 3136)
    assert virtual == pytest.approx(by_hand / 1024 / 1000)
    written = figures.write_figures(configs, tmp_path / "report")
    for name, (png, rows) in written.items():
        assert png.is_file() and (tmp_path / "report" / f"{name}.csv").is_file()
        assert len(pd.read_csv(tmp_path / "report" / f"{name}.csv")) == rows


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_report_on_partial_results_warns_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, sp(epochs=2), errors=[2.0, 1.0])
    code, _, err = _run_cli(["report", "--paper-tables", "--results", str(tmp_path)], capsys)
    assert code == 0
    assert "MNIST DynHP α_bs 0.971: produced by sweeps/table2_mnist.toml" in err
    table2 = pd.read_csv(tmp_path / "report" / "table2_mnist.csv")
    assert table2["status"].tolist() == ["ok"] + ["missing"] * 6
    for name in ("table1_datasets", "table2_mnist", "table3_fashion"):
        assert (tmp_path / "report" / f"{name}.csv").is_file() and (tmp_path / "report" / f"{name}.md").is_file()
    assert len(list((tmp_path / "report").glob("fig[1-7]_*.png"))) == 7
    assert (tmp_path / "report" / "fig8_pareto_mnist.png").is_file()


def _smoke(strategy: str) -> TrainConfig:
    return resolve_config({"strategy": strategy, "profile": "smoke"})


def test_settings_read_back_from_run_folders_keep_their_types_in_a_mixed_results_folder(tmp_path: Path) -> None:
    make_run(tmp_path, _quick("sp", 512, epochs=2), errors=[9.0, 2.0])  # full data: subset None
    make_run(tmp_path, _smoke("sp"), errors=[9.0, 3.0])  # the first 2,000 images: subset 2000
    make_run(tmp_path, _smoke("dyprune"), errors=[9.0, 4.0])
    runs = report.index_runs(tmp_path).runs
    configs = report.configurations(runs)
    for frame in (runs, configs):
        assert sorted(frame["subset"], key=str) == [2000, 2000, None]
        assert all(type(v) is int for v in frame["subset"] if v is not None)  # not 2000.0
        assert all(v is None or type(v) is int for v in frame["validation_split"])
        assert sorted(v for v in frame["validation_split"] if v is not None) == [333]  # a sixth of 2,000
    entries = report.competitor_entries(Path(__file__).parents[1] / "sweeps" / "competitors_mnist.toml")
    table = report.competitors_table(configs, entries)  # it resolves the settings at each run length
    assert sorted(zip(table["group"], table["profile"], strict=True)) == [
        ("dyprune-dynamic", "smoke"), ("sp", "quick"), ("sp", "smoke"),
    ]  # fmt: skip


def test_report_paper_tables_on_full_data_and_smoke_runs_together_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path, _quick("dynhp", 16, epochs=2), errors=[9.0, 2.0])  # the README's first example, shortened
    make_run(tmp_path, _smoke("sp"), errors=[9.0, 3.0])
    code, _, err = _run_cli(["report", "--paper-tables", "--results", str(tmp_path)], capsys)
    assert code == 0 and "error:" not in err, err
    frame = pd.read_csv(tmp_path / "report" / "competitors_mnist.csv")
    assert sorted(zip(frame["group"], frame["profile"], strict=True)) == [("dynhp", "quick"), ("sp", "smoke")]


def test_report_without_results_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_cli(["report", "--paper-tables", "--results", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: no complete runs under")


def test_check_passes_on_its_own_results_and_fails_on_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    run = make_run(results, sp(epochs=2), errors=[2.0, 1.0])
    make_run(
        results,
        TrainConfig(strategy="hp", batch_size=100, epochs=2, profile="paper", ema_decay=0.999),
        errors=[3.0, 2.0],
    )
    baseline = tmp_path / "baseline.json"
    assert _run_cli(["check", "--baseline", str(baseline), "--results", str(results), "--update"], capsys)[0] == 0
    document = json.loads(baseline.read_text())
    assert len(document["configurations"]) == 2
    assert document["configurations"][0]["tolerance"]["error_pp"] == 1.0
    code, out, _ = _run_cli(["check", "--baseline", str(baseline), "--results", str(results)], capsys)
    assert code == 0 and "all 6 checks passed" in out

    summary = json.loads((run / "summary.json").read_text())
    summary["final_error_pct"] += 1.5  # beyond the 1.0 pp tolerance
    (run / "summary.json").write_text(json.dumps(summary))
    junit = tmp_path / "junit.xml"
    code, out, err = _run_cli(
        ["check", "--baseline", str(baseline), "--results", str(results), "--junit", str(junit)], capsys
    )
    assert code == 1 and "regressed" in out and "1 of 6 checks failed" in err
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("6", "1")
    failure = suite.find("testcase[@name='final_error_pct']/failure")
    assert failure is not None and "regressed" in failure.get("message", "")


def test_check_fails_on_a_missing_configuration_and_passes_an_improvement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    run = make_run(results, sp(epochs=2), errors=[2.0, 1.0])
    baseline = tmp_path / "baseline.json"
    _run_cli(["check", "--baseline", str(baseline), "--results", str(results), "--update"], capsys)
    summary = json.loads((run / "summary.json").read_text())
    summary["final_error_pct"] = 0.5
    (run / "summary.json").write_text(json.dumps(summary))
    code, out, _ = _run_cli(["check", "--baseline", str(baseline), "--results", str(results)], capsys)
    assert code == 0 and "improved" in out
    other = tmp_path / "other"
    make_run(other, sp(epochs=2, seed=5), errors=[2.0, 1.0])
    code, out, _ = _run_cli(["check", "--baseline", str(baseline), "--results", str(other)], capsys)
    assert code == 0, "a different seed of the same configuration is the same configuration"
    make_run(
        other, TrainConfig(strategy="hp", batch_size=100, epochs=2, profile="paper", ema_decay=0.999), errors=[1.0, 1.0]
    )
    document = json.loads(baseline.read_text())
    document["configurations"][0]["key"]["batch_size"] = 256
    document["configurations"][0]["name"] = "renamed"
    baseline.write_text(json.dumps(document))
    code, out, _ = _run_cli(["check", "--baseline", str(baseline), "--results", str(other)], capsys)
    assert code == 1 and "missing" in out


def test_a_malformed_baseline_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, sp(epochs=2), errors=[2.0, 1.0])
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    code, _, err = _run_cli(["check", "--baseline", str(bad), "--results", str(tmp_path)], capsys)
    assert code == 2 and "is not a dynhp-bench baseline" in err


def _quick(strategy: str, batch_size: int, **kw: object) -> TrainConfig:
    settings = {"strategy": strategy, "batch_size": batch_size, "profile": "quick", "epochs": 3, **kw}
    return TrainConfig(**settings)  # type: ignore[arg-type]


def test_competitors_table_takes_the_sweep_files_configurations_with_mean_and_std(tmp_path: Path) -> None:
    make_run(tmp_path, _quick("sp", 512, seed=0), errors=[9.0, 5.0, 2.0])
    make_run(tmp_path, _quick("sp", 512, seed=1), errors=[9.0, 5.0, 3.0])
    make_run(tmp_path, _quick("sp", 16), errors=[9.0, 5.0, 1.0])  # not a competitor: another batch size
    make_run(tmp_path, _quick("dyprune", 128, seed=0), errors=[9.0, 5.0, 4.0], nonzero=50_000)
    make_run(tmp_path, _quick("dyprune", 128, seed=1), errors=[9.0, 5.0, 4.0], nonzero=60_000)
    make_run(tmp_path, _quick("dyprune", 128, prune_schedule="static"), errors=[9.0, 5.0, 6.0], nonzero=10_000)
    make_run(tmp_path, _quick("dyprune", 128, slope_max=0.5), errors=[9.0, 9.0, 9.0])  # not the file's window
    configs = report.configurations(report.index_runs(tmp_path).runs)
    entries = report.competitor_entries(Path(__file__).parents[1] / "sweeps" / "competitors_mnist.toml")
    assert [name for name, _ in entries] == ["dense", "sp", "hp", "dynhp", "dyprune-dynamic", "dyprune-static"]
    table = report.competitors_table(configs, entries).set_index("group")
    assert list(table.index) == ["sp", "dyprune-dynamic", "dyprune-static"]
    assert table.loc["sp", "final_error_pct"] == 2.5
    assert table.loc["sp", "final_error_pct_std"] == pytest.approx(math.sqrt(0.5))
    assert table.loc["dyprune-dynamic", "nonzero_params"] == 55_000
    assert table.loc["dyprune-dynamic", "nonzero_params_std"] == pytest.approx(math.sqrt(50_000_000))
    assert table.loc["dyprune-static", "seeds"] == 1
    # Σ over 3 epochs of (model + batch) bytes / 1024 / 1000 / 1000.
    expected_memory = 3 * memory_mb(FULL_BYTES, batch_bytes(128, 3136)) / 1000
    assert table.loc["dyprune-static", "training_memory_mb"] == pytest.approx(expected_memory)
    markdown = report.competitors_markdown(table.reset_index(), "mnist")
    assert "## quick profile, 3 epochs, full training set" in markdown
    assert "| sp | sp b512 | 2 | 2.50 ± 0.71 |" in markdown


def test_pareto_front_keeps_the_configurations_nothing_beats_on_both_error_and_memory(tmp_path: Path) -> None:
    make_run(tmp_path, _quick("sp", 16), errors=[9.0, 5.0])
    make_run(tmp_path, _quick("sp", 128), errors=[9.0, 3.0])
    make_run(tmp_path, _quick("dyprune", 128, prune_schedule="static"), errors=[9.0, 2.0])  # same memory, lower
    make_run(tmp_path, _quick("sp", 512), errors=[9.0, 4.0])  # more memory, more error than dyprune: dominated
    make_run(tmp_path, _quick("dense", 512), errors=[9.0, 1.5])  # most memory, least error: on the front
    make_run(tmp_path, _quick("sp", 16, epochs=5), errors=[1.0] * 5)  # another run length: not plotted
    configs = report.configurations(report.index_runs(tmp_path).runs)
    data = figures.pareto_data(configs, "mnist")
    assert data["label"].tolist() == ["sp b16", "dyprune b128 static", "sp b128", "dense b512", "sp b512"]
    assert data.set_index("label")["pareto"].to_dict() == {
        "sp b16": True, "dyprune b128 static": True, "sp b128": False, "dense b512": True, "sp b512": False,
    }  # fmt: skip
    assert set(data["series"]) == {"sp", "dyprune (static)", "dense"}
    png, rows = figures.write_pareto(configs, "mnist", tmp_path / "report")
    assert rows == 5 and png.stat().st_size > 10_000
    on_disk = pd.read_csv(tmp_path / "report" / "fig8_pareto_mnist.csv")
    assert on_disk["pareto"].tolist() == data["pareto"].tolist()


def test_report_writes_the_competitors_tables_and_figure_8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, _quick("sp", 512), errors=[9.0, 2.0])
    make_run(tmp_path, _quick("dyprune", 128), errors=[9.0, 3.0], nonzero=1_000)
    assert _run_cli(["report", "--results", str(tmp_path)], capsys)[0] == 0
    out = tmp_path / "report"
    frame = pd.read_csv(out / "competitors_mnist.csv")
    assert frame["group"].tolist() == ["sp", "dyprune-dynamic"]
    assert frame["nonzero_params"].tolist() == [266_610, 1_000]
    assert (out / "competitors_mnist.md").is_file() and (out / "fig8_pareto_mnist.png").is_file()
    assert not (out / "competitors_fashion.csv").exists(), "no Fashion-MNIST runs, no Fashion-MNIST table"


def test_ours_minus_the_papers_is_rounded_to_the_papers_digits(tmp_path: Path) -> None:
    make_run(tmp_path, sp(epochs=2), errors=[3.0, 2.37])  # 2.37 − 1.42 is 0.9500000000000002 in floats
    table = report.paper_table(report.configurations(report.index_runs(tmp_path).runs), "mnist")
    row = table[table["method"] == "SP"].iloc[0]
    assert row["error_minus_paper"] == 0.95
    assert "0.9500000" not in table.to_csv(index=False)


# --- unusable baselines and damaged run folders (issue 10) -----------------------------------------------------------


def _baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, dict[str, object]]:
    results = tmp_path / "results"
    make_run(results, sp(epochs=2), errors=[2.0, 1.0])
    baseline = tmp_path / "baseline.json"
    assert _run_cli(["check", "--baseline", str(baseline), "--results", str(results), "--update"], capsys)[0] == 0
    return results, baseline, json.loads(baseline.read_text())


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda d: d.update(configurations=[]), "holds no configurations"),
        (lambda d: d.pop("configurations"), "holds no configurations"),
        (lambda d: d["configurations"][0].update(final_error_pct=math.nan), "final_error_pct=nan"),
        (lambda d: d["configurations"][0].update(model_size_mb="big"), "model_size_mb='big'"),
        (lambda d: d["configurations"][0]["tolerance"].update(error_pp=math.inf), "error_pp=inf"),
        (lambda d: d["configurations"][0]["tolerance"].pop("training_memory_rel"), "training_memory_rel=None"),
        (lambda d: d["configurations"][0]["key"].pop("epochs"), "its key lacks epochs"),
        (lambda d: d["configurations"][0]["key"].update(alpha_bs="x"), "alpha_bs='x'"),
        (lambda d: d["configurations"].append(7), "configuration 2 is not an object"),
    ],
)
def test_an_empty_or_partly_unreadable_baseline_fails_the_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: object, fragment: str
) -> None:
    results, baseline, document = _baseline(tmp_path, capsys)
    damage(document)  # type: ignore[operator]
    baseline.write_text(json.dumps(document))
    code, out, err = _run_cli(["check", "--baseline", str(baseline), "--results", str(results)], capsys)
    assert code == 2 and err.count("\n") == 1 and str(baseline) in err and fragment in err, err
    assert "passed" not in out


def test_a_nan_measured_metric_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results, baseline, _ = _baseline(tmp_path, capsys)
    (run,) = (results / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    summary["final_error_pct"] = math.nan
    (run / "summary.json").write_text(json.dumps(summary))
    code, out, err = _run_cli(["check", "--baseline", str(baseline), "--results", str(results)], capsys)
    assert code != 0 and "passed" not in out and str(run / "summary.json") in err


@pytest.mark.parametrize(
    "summary_text",
    ['{"run_id": "x"}', "[1, 2]", '{"run_id": "x", "epochs": "many", "seed": 0}', '{"settings": 3}', "{half"],
)
def test_report_and_check_on_a_damaged_summary_are_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], summary_text: str
) -> None:
    results, baseline, _ = _baseline(tmp_path, capsys)
    (run,) = (results / "runs").iterdir()
    (run / "summary.json").write_text(summary_text)
    for argv in (["report", "--results", str(results)], ["check", "--baseline", str(baseline), "--results",
                                                          str(results)]):  # fmt: skip
        code, _, err = _run_cli(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and str(run / "summary.json") in err, err
    assert not (results / "report").exists()


@pytest.mark.parametrize("epochs_text", ["", "epoch,oops\n1,2\n", "garbage\x00\xff", "epoch\n"])
def test_a_damaged_epochs_csv_leaves_no_half_written_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], epochs_text: str
) -> None:
    results = tmp_path / "results"
    make_run(results, sp(epochs=2), errors=[2.0, 1.0])
    out = tmp_path / "report"
    assert _run_cli(["report", "--paper-tables", "--results", str(results), "--out", str(out)], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    run = make_run(results, sp(epochs=3), errors=[3.0, 2.0, 1.0])  # a new result: the report would change
    (run / "epochs.csv").write_text(epochs_text, encoding="latin-1")
    code, _, err = _run_cli(["report", "--paper-tables", "--results", str(results), "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and str(run / "epochs.csv") in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "the earlier report is untouched"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder is left"


@pytest.mark.parametrize("text", ['{"a": 1}', "[1, 2]", "7"])
def test_a_damaged_inference_json_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    run = make_run(tmp_path, sp(epochs=2), errors=[2.0, 1.0])
    (run / "inference.json").write_text(text)
    code, _, err = _run_cli(["report", "--results", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and str(run / "inference.json") in err and "Traceback" not in err, err
    assert not (tmp_path / "report").exists()


def test_calibration_table_reads_every_reading_and_finds_the_cap(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path, threads=1, device="cpu")
    network = FULL_BYTES
    readings = {"epoch/ceil/data/examples": {}, "step/floor/objective/mean/bessel": {
        "growth_cadence": "step", "growth_rounding": "floor", "growth_loss": "objective",
        "growth_variance": "mean", "growth_correction": "bessel"}}  # fmt: skip
    alphas = {"epoch/ceil/data/examples": 0.5, "step/floor/objective/mean/bessel": 0.971}  # 0.971: a paper row
    for reading, settings in readings.items():
        config = TrainConfig(strategy="dynhp", epochs=4, batch_size=16, gamma=0.0, alpha_bs=alphas[reading],
                             budget_bytes=network + batch_bytes(40, 3136), **settings)  # fmt: skip
        train(config, runtime)
    data = figures.calibration_data(tmp_path)
    assert sorted(data["reading"].unique()) == sorted(readings)
    table = figures.calibration_table(data, at_epochs=(2, 4)).set_index("reading")
    for reading in readings:
        run = data[data["reading"] == reading].sort_values("epoch")
        # γ = 0 prunes nothing, so the cap is 40 throughout: the first epoch trained at batch 40.
        assert (run["cap_in_epoch"] == 40).all()
        at_cap = run.loc[run["batch_size"] == 40, "epoch"]
        got = table.loc[reading, "cap_epoch"]
        assert (got == at_cap.min()) if len(at_cap) else pd.isna(got)
        assert table.loc[reading, "batch_e4"] == run["batch_size"].iloc[3]
        assert table.loc[reading, "mean_memory_mb"] == pytest.approx(run["memory_mb"].mean())
    assert table.loc["epoch/ceil/data/examples", "batch_e2"] > 16, "Eq. 8 rounded up grows the batch every epoch"
    assert table.loc["epoch/ceil/data/examples", "cap_epoch"] <= 4, "the comparison should cover reaching the cap"
    # Table 2's DynHP row at α_bs 0.971: 1.50 % error, 0.572 MB, 5.165 (×1000 MB·epoch) over 2,000 epochs.
    paper = table.loc["step/floor/objective/mean/bessel"]
    assert (paper["paper_error_pct"], paper["paper_model_mb"]) == (1.50, 0.572)
    assert paper["paper_mean_memory_mb"] == pytest.approx(5.165 * 1000 / 2000)
    assert table.loc[["epoch/ceil/data/examples"], "paper_error_pct"].isna().all(), "α_bs 0.5 has no paper row"
    code, _, err = _run_cli(["report", "--results", str(tmp_path), "--calibration"], capsys)
    assert code == 0, err
    png = tmp_path / "report" / "calibration_batch_size.png"
    assert png.stat().st_size > 0
    assert len(pd.read_csv(png.with_suffix(".csv"))) == len(data)
    markdown = (tmp_path / "report" / "calibration_batch_size_table.md").read_text()
    assert "| mnist | step/floor/objective/mean/bessel | 0.971 | 4 |" in markdown
    assert "| 2.583 | 0.00 | 1.50 |" in markdown  # our mean memory, the paper's; our error, the paper's


def test_cifar10_runs_get_their_own_table_without_a_paper_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    network = 4 * (3072 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)  # 3,812,040 bytes
    cifar = {"dataset": "cifar10", "profile": "quick", "epochs": 2}
    for seed, error in ((0, 40.0), (1, 42.0)):
        make_run(tmp_path, TrainConfig(strategy="sp", batch_size=128, seed=seed, **cifar), errors=[50.0, error],
                 model_bytes=[network] * 2)  # fmt: skip
    make_run(tmp_path, TrainConfig(strategy="hp", batch_size=128, **cifar), errors=[50.0, 45.1],
             model_bytes=[network, network // 2])  # fmt: skip
    make_run(tmp_path, sp(epochs=2), errors=[2.0, 2.0])  # MNIST stays out of it
    table = report.own_table(report.configurations(report.index_runs(tmp_path).runs), "cifar10")
    assert table["method"].tolist() == ["SP", "HP"] and table["seeds"].tolist() == [2, 1]
    assert table["augment"].tolist() == [True, True] and table["arch"].tolist() == ["mlp", "mlp"]
    hp = table.iloc[1]
    assert hp["error_delta_pct"] == pytest.approx((45.1 - 41.0) / 41.0 * 100)
    assert hp["model_size_delta_pct"] == pytest.approx(-50.0)
    sp_epoch = (network + 128 * 12_288) / 1024 / 1000  # the batch term counts 4 × 3,072 bytes a sample
    hp_epochs = [(network + 128 * 12_288) / 1024 / 1000, (network // 2 + 128 * 12_288) / 1024 / 1000]
    assert table.iloc[0]["mean_memory_mb"] == pytest.approx(sp_epoch)
    assert hp["training_memory_delta_pct"] == pytest.approx((sum(hp_epochs) / 2 - sp_epoch) / sp_epoch * 100)
    assert not any(column.startswith("paper") for column in table.columns)
    with pytest.raises(SystemExit) as info:
        main(["report", "--results", str(tmp_path), "--out", str(tmp_path / "report")])
    assert info.value.code in (0, None), capsys.readouterr().err
    text = (tmp_path / "report" / "cifar10.md").read_text()
    assert "41.00 ± 1.41" in text and "45.10 (+10%)" in text and "numbers are not in our references" in text
    assert pd.read_csv(tmp_path / "report" / "cifar10.csv")["method"].tolist() == ["SP", "HP"]


def test_error_figures_leave_their_first_epochs_above_the_axis_and_keep_them_in_the_csv() -> None:
    epochs = list(range(1, 101))
    errors = [60.0, 20.0, 9.0, 4.0, 3.0] + [1.5] * 95  # epochs 1-5 are the first 5 %
    data = pd.DataFrame({"epoch": epochs, "series": "SP (batch 512)", "test_error_pct": errors, "dataset": "mnist"})
    figure = figures._plot(figures.FIGURES["fig5_error"], data)
    assert figure.axes[0].get_ylim() == pytest.approx((0.0, 1.5 * 1.08))
    memory = figures._plot(figures.FIGURES["fig2_memory"], data.rename(columns={"test_error_pct": "memory_mb"}))
    assert memory.axes[0].get_ylim() == pytest.approx((0.0, 60.0 * 1.08))  # only error figures settle
    assert figures._settling_epochs(data.head(20), figures.ERROR_SETTLING) == 1  # at least the first epoch


def _crowded_competitors(root: Path) -> None:
    """22 configurations at one run length as the quick competitors and figures give them: SP and HP at every batch
    (equal memory at small batches), DynHP at five α_bs on one spot, DyPrune twice, dense."""
    for batch in (16, 32, 64, 100, 128, 256, 512):
        make_run(root, _quick("sp", batch), errors=[9.0, 5.0, 2.0 + batch / 200])
        make_run(root, _quick("hp", batch), errors=[9.0, 5.0, 2.0 + batch / 200 + 0.01],
                 model_bytes=[FULL_BYTES, FULL_BYTES - 10, FULL_BYTES - 10])  # fmt: skip
    for alpha in (0.971, 0.972, 0.973, 0.974, 0.975):
        make_run(root, _quick("dynhp", 16, alpha_bs=alpha), errors=[9.0, 5.0, 1.9])
    for schedule in ("dynamic", "static"):
        make_run(root, _quick("dyprune", 128, prune_schedule=schedule), errors=[9.0, 5.0, 2.8], nonzero=9_000)
    make_run(root, _quick("dense", 512), errors=[9.0, 5.0, 1.8])


def test_figure_8_names_every_configuration_with_labels_that_do_not_collide(tmp_path: Path) -> None:
    _crowded_competitors(tmp_path)
    data = figures.pareto_data(report.configurations(report.index_runs(tmp_path).runs), "mnist")
    assert len(data) == 22
    figure = figures.plot_pareto(data, "mnist")
    ax = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    notes = [child for child in ax.get_children() if isinstance(child, figures.matplotlib.text.Annotation)]
    text = " ".join(note.get_text() for note in notes)
    merged = {"dynhp b16 α": "dynhp b16 α0.971–0.975 (5)", "dyprune b128": "dyprune b128 dynamic = static"}
    for label in data["label"]:  # every configuration is named: by its label, or merged with those on its spot
        assert label in text or any(label.startswith(k) and v in text for k, v in merged.items()), label
    assert len(notes) < len(data)  # configurations on one spot share one label (DynHP's five, SP/HP at batch 16)
    boxes = [note.get_window_extent(renderer) for note in notes]
    inside = ax.get_window_extent(renderer)
    for i, box in enumerate(boxes):
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
        for other in boxes[i + 1 :]:
            assert not box.overlaps(other), (notes[i].get_text(), "collides")
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert 3 <= len(ticks) <= 8 and len(set(ticks)) == len(ticks), ticks
    assert all(len(t) <= 6 for t in ticks), ticks  # 0.0125, not 0.0125000
    figures.plt.close(figure)


def test_tick_labels_take_the_fewest_digits_that_tell_them_apart() -> None:
    ticks = figures.DistinctTicks()
    assert ticks.format_ticks([0.0025, 0.003, 0.0035]) == ["0.0025", "0.003", "0.0035"]
    assert ticks.format_ticks([0.021809, 0.021812, 0.021815]) == ["0.021809", "0.021812", "0.021815"]
    assert ticks.format_ticks([0.01, 0.02, 0.05, 0.1]) == ["0.01", "0.02", "0.05", "0.1"]


def test_configurations_on_one_spot_share_one_short_label() -> None:
    def rows(*labels: tuple[str, int, float | None, str | None]) -> pd.DataFrame:
        frame = pd.DataFrame(labels, columns=["strategy", "batch_size", "alpha_bs", "prune_schedule"])
        frame["label"] = [report.configuration_label(row) for _, row in frame.iterrows()]
        return frame

    assert figures.group_label(rows(("sp", 16, None, None))) == "sp b16"
    assert figures.group_label(rows(("sp", 16, None, None), ("hp", 16, None, None))) == "hp b16 = sp b16"
    five = rows(*(("dynhp", 16, a, None) for a in (0.975, 0.971, 0.972, 0.973, 0.974)))
    assert figures.group_label(five) == "dynhp b16 α0.971–0.975 (5)"
    two = rows(("dyprune", 128, None, "static"), ("dyprune", 128, None, "dynamic"))
    assert figures.group_label(two) == "dyprune b128 dynamic = static"
