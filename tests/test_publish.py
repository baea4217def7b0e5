"""Published run folders (`dynhp-bench publish`): read as the runs they came from, counted as done by a sweep."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pandas as pd
import pytest

from dynhp_bench.analysis import report
from dynhp_bench.cli.commands import main
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training.run_folder import (
    CHECKPOINT_FILE,
    EPOCHS_FILE,
    PUBLISHED_EPOCHS_FILE,
    RunFolder,
    complete_runs,
    publish_run,
    run_path,
)
from dynhp_bench.training.trainer import Runtime, train
from tests.test_report import make_run, sp


def _cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def _train(config: TrainConfig, data: Path, out: Path) -> Path:
    train(config, Runtime(data_dir=data, results_root=out, threads=1, device="cpu"))
    return run_path(out, config.run_id)


def test_a_published_run_keeps_its_results_and_leaves_the_checkpoint_behind(
    synthetic_root: Path, tmp_path: Path
) -> None:
    config = TrainConfig(strategy="hp", batch_size=64, epochs=2, profile="smoke", subset=256)
    source = RunFolder(_train(config, synthetic_root, tmp_path / "work"))
    assert (source.path / CHECKPOINT_FILE).is_file()
    published = RunFolder(publish_run(source, tmp_path / "published"))
    assert sorted(p.name for p in published.path.iterdir()) == [
        "COMPLETE", "config.json", PUBLISHED_EPOCHS_FILE, "summary.json",
    ]  # fmt: skip
    assert (
        gzip.decompress((published.path / PUBLISHED_EPOCHS_FILE).read_bytes())
        == (source.path / EPOCHS_FILE).read_bytes()
    )
    pd.testing.assert_frame_equal(published.read_epochs(), source.read_epochs())
    assert published.read_summary() == source.read_summary() and published.has_result()
    # Byte-stable: publishing again writes the same bytes (no time or name in the gzip header).
    first = (published.path / PUBLISHED_EPOCHS_FILE).read_bytes()
    publish_run(source, tmp_path / "published")
    assert (published.path / PUBLISHED_EPOCHS_FILE).read_bytes() == first


def test_an_unfinished_run_is_not_published(tmp_path: Path) -> None:
    make_run(tmp_path / "work", sp(epochs=2), errors=[3.0, 2.0], complete=False)
    with pytest.raises(Exception, match="not a complete run"):
        publish_run(RunFolder(run_path(tmp_path / "work", sp(epochs=2).run_id)), tmp_path / "published")


def test_report_reads_published_runs_as_the_runs_they_came_from(tmp_path: Path) -> None:
    make_run(tmp_path / "work", sp(epochs=3, seed=0), errors=[5.0, 3.0, 1.0])
    make_run(tmp_path / "work", sp(epochs=3, seed=1), errors=[5.0, 3.0, 2.0])
    assert _cli(["publish", "--results", str(tmp_path / "work"), "--out", str(tmp_path / "published")]) == 0
    tables = []
    for root in ("work", "published"):
        configs = report.configurations(report.index_runs(tmp_path / root).runs)
        tables.append(report.paper_table(configs, "mnist"))
    pd.testing.assert_frame_equal(*tables)
    assert _cli(["report", "--paper-tables", "--results", str(tmp_path / "published")]) == 0
    fig5 = pd.read_csv(tmp_path / "published" / "report" / "fig5_error.csv")
    assert not fig5.empty


def test_a_sweep_counts_published_runs_as_done_and_trains_only_what_is_missing(
    synthetic_root: Path, tmp_path: Path
) -> None:
    # As on a fresh clone: the published folder holds one of the sweep's two runs, no checkpoint and no journal.
    sweep = tmp_path / "two.toml"
    sweep.write_text(
        '[[groups]]\nname = "hp"\nparam = "gamma"\nvalues = [0.3, 0.5]\n'
        'settings = { strategy = "hp", batch_size = 64, subset = 256, epochs = 2 }\n',
        encoding="utf-8",
    )
    args = ["--file", str(sweep), "--profile", "smoke", "--data-dir", str(synthetic_root), "--quiet", "--no-estimate"]
    assert _cli(["sweep", *args, "--out", str(tmp_path / "work")]) == 0
    first, second = sorted(complete_runs(tmp_path / "work"), key=lambda f: f.path.name)
    publish_run(first, tmp_path / "published")
    kept = run_path(tmp_path / "published", first.path.name)
    before = {p.name: p.read_bytes() for p in kept.iterdir()}
    assert _cli(["sweep", *args, "--out", str(tmp_path / "published")]) == 0
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before  # not trained again, not touched
    trained = RunFolder(run_path(tmp_path / "published", second.path.name))
    assert trained.has_result() and (trained.path / EPOCHS_FILE).is_file() and not trained.is_published
    assert trained.read_summary()["final_error_pct"] == second.read_summary()["final_error_pct"]
    # Published in place: the new run takes the published form, the one already published is left as it was.
    epochs = trained.read_epochs()
    published = tmp_path / "published"
    assert _cli(["publish", "--results", str(published), "--out", str(published)]) == 0
    assert trained.is_published and {p.name: p.read_bytes() for p in kept.iterdir()} == before
    pd.testing.assert_frame_equal(trained.read_epochs(), epochs)


def test_the_paper_table_takes_the_default_settings_not_a_calibrations_variants(tmp_path: Path) -> None:
    make_run(tmp_path, sp(epochs=3), errors=[5.0, 3.0, 2.0])
    make_run(tmp_path, sp(epochs=3, ema_decay=0), errors=[5.0, 3.0, 1.0])
    make_run(tmp_path, sp(epochs=3, bias_init="zeros"), errors=[5.0, 3.0, 0.5])
    configs = report.configurations(report.index_runs(tmp_path).runs)
    assert len(configs) == 3  # the variants are configurations of their own, never averaged with the default
    row = report.paper_table(configs, "mnist").set_index("method").loc["SP"]
    assert row["error_pct"] == 2.0 and row["seeds"] == 1


def test_the_mark_says_where_the_papers_value_lies_outside_two_standard_deviations(tmp_path: Path) -> None:
    # SP at 512: the paper's error is 1.42. Seeds 1.40 and 1.50 → mean 1.45, sd 0.0707: 1.42 is inside.
    # HP at 100: the paper's error is 1.41. Seeds 1.60 and 1.70 → mean 1.65, sd 0.0707: 1.41 is outside.
    for seed, (sp_error, hp_error) in enumerate(((1.40, 1.60), (1.50, 1.70))):
        make_run(tmp_path, sp(epochs=2, seed=seed), errors=[9.0, sp_error])
        hp = TrainConfig(strategy="hp", batch_size=100, epochs=2, profile="paper", seed=seed, ema_decay=0.999)
        make_run(tmp_path, hp, errors=[9.0, hp_error])
    table = report.paper_table(report.configurations(report.index_runs(tmp_path).runs), "mnist")
    rows = table.set_index("method")
    assert rows.loc["SP", "paper_error_outside_2sd"] is False
    assert rows.loc["HP", "paper_error_outside_2sd"] is True
    assert rows.loc["HP", "error_pct_std"] == pytest.approx(math.sqrt(0.005))
    dynhp = table[table["method"] == "DynHP"]["paper_error_outside_2sd"]
    assert dynhp.isna().all()  # no results: nothing to judge
    markdown = report.table_markdown(table, "mnist")
    assert "| HP | 100 | 1.65 ± 0.07" in markdown and "| 1.41†" in markdown and "| 1.42†" not in markdown
    assert "outside our mean ± 2 standard deviations" in markdown


def test_one_seed_gives_no_mark(tmp_path: Path) -> None:
    hp = TrainConfig(strategy="hp", batch_size=100, epochs=2, profile="paper", ema_decay=0.999)
    make_run(tmp_path, hp, errors=[9.0, 5.0])
    table = report.paper_table(report.configurations(report.index_runs(tmp_path).runs), "mnist")
    assert table.set_index("method").loc["HP", "paper_error_outside_2sd"] is None
    assert "1.41†" not in report.table_markdown(table, "mnist")
