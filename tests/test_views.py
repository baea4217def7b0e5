"""The terminal views at 80 columns: the key fields (epoch, time left, error, bars, configuration names, paper
values) survive; times read h:mm:ss and are labelled for what they are."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import pytest
from rich.console import Console

from dynhp_bench.analysis import report
from dynhp_bench.analysis.baseline import Verdict
from dynhp_bench.cli import views
from dynhp_bench.memory import TRAINING_MEMORY_UNIT
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.sweep import Snapshot, TrialView, WorkerPlan, command_line_spec, expand, parse_storage
from dynhp_bench.training.record import EpochRecord
from dynhp_bench.training.trainer import Runtime
from tests.test_report import make_run

WIDTH = 80


def _terminal() -> Console:
    return Console(file=io.StringIO(), width=WIDTH, force_terminal=True, color_system=None)


def _text(renderable: object) -> str:
    plain = Console(file=io.StringIO(), width=WIDTH, record=True)
    plain.print(renderable)
    return plain.export_text()


def _fits(text: str) -> list[str]:
    lines = text.splitlines()
    assert all(len(line) <= WIDTH for line in lines), text
    return lines


def _has_bar(line: str) -> bool:
    return any(part in line for part in "━╸╺")


def _record(epoch: int) -> EpochRecord:
    fields = {f.name: 0 for f in dataclasses.fields(EpochRecord)}
    fields.update(epoch=epoch, strategy="dynhp", dataset="mnist", test_error_pct=4.2134, batch_size=1024,
                  model_size_mb=0.812, memory_mb=1.0, variance_ratio=math.nan, batch_cap=None)  # fmt: skip
    return EpochRecord(**fields)


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0:00:00"), (59.6, "0:01:00"), (2591.2, "0:43:11"),
                                                (90061, "25:01:01"), (math.nan, "-:--:--")])  # fmt: skip
def test_clock_reads_hours_minutes_seconds(seconds: float, shown: str) -> None:
    assert views.clock(seconds) == shown


def test_train_progress_keeps_epoch_time_left_error_and_both_bars_at_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(views.time, "monotonic", lambda: now[0])
    progress = views.EpochProgress(20, enabled=True, header="mnist-dynhp-b16 (quick profile)", console=_terminal())
    with progress:
        now[0] += 30.0
        progress.update(_record(1))
        now[0] += 15.0
        progress.step(2, 30_000, 60_000)  # half-way through epoch 2
        lines = _fits(_text(progress.progress.get_renderable()))
    epoch_line, images_line = lines[0], lines[1]
    assert epoch_line.startswith("epoch") and "1/20" in epoch_line and _has_bar(epoch_line)
    # 45 s for 1.5 epochs: 30 s per epoch, 18.5 epochs left
    assert "left 0:09:15" in epoch_line and "elapsed 0:00:45" in epoch_line
    assert epoch_line.index("left") < epoch_line.index("elapsed")
    assert "30,000/60,000" in images_line and _has_bar(images_line)
    assert "error 4.21% · batch 1,024 · model 0.812 MB" in images_line
    assert "mnist-dynhp-b16" in progress.console.file.getvalue()  # the header, once training started


def test_the_run_header_waits_until_training_starts() -> None:
    progress = views.EpochProgress(2, enabled=True, header="HEADER", console=_terminal())
    with progress:
        pass  # an error before the first epoch: nothing but the error is printed
    assert "HEADER" not in progress.console.file.getvalue()


def test_run_summary_labels_training_memory_and_wall_time_at_80_columns() -> None:
    console = Console(file=io.StringIO(), width=WIDTH, record=True)
    summary = {"run_id": "mnist-dynhp-b16-a0.972-e20-s0-1234abcd", "final_error_pct": 2.5, "best_error_pct": 2.4,
               "best_epoch": 19, "model_size_mb": 0.5, "model_bytes": 512_000, "training_memory_mb": 0.02,
               "epochs": 20, "mean_memory_mb": 1.0, "batch_size_initial": 16, "batch_size_final": 1024,
               "active_final": [700, 200, 90], "wall_s": 2591.2, "peak_rss_bytes": 300 * 2**20}  # fmt: skip
    views.print_run_summary(summary, Path("results/runs/x"), console=console)
    text = "\n".join(_fits(console.export_text()))
    assert f"0.020 {TRAINING_MEMORY_UNIT} (Σ of 20 epochs'" in text and "1.000 MB on average" in text
    assert "0:43:11" in text and "2591.2" not in text
    assert "mnist-dynhp-b16-a0.972-e20-s0-1234abcd" in text


def test_run_summary_shows_the_non_zero_parameters_when_the_run_recorded_them() -> None:
    summary = {"run_id": "mnist-dyprune-b128-e20-s0-1234abcd", "final_error_pct": 2.5, "best_error_pct": 2.4,
               "best_epoch": 19, "model_size_mb": 1.041, "model_bytes": 1_066_440, "training_memory_mb": 0.02,
               "epochs": 20, "mean_memory_mb": 1.0, "batch_size_initial": 128, "batch_size_final": 128,
               "active_final": [784, 300, 100], "wall_s": 60.0, "peak_rss_bytes": 300 * 2**20}  # fmt: skip
    for recorded, shown in ((13_974, "13,974"), (None, "—")):
        console = Console(file=io.StringIO(), width=WIDTH, record=True)
        with_count = summary if recorded is None else {**summary, "nonzero_params": recorded}
        views.print_run_summary(with_count, Path("results/runs/x"), console=console)
        row = next(line for line in _fits(console.export_text()) if "non-zero parameters" in line)
        assert shown in row


def _plan(tmp_path: Path) -> WorkerPlan:
    settings = {"strategy": "dynhp", "profile": "quick", "dataset": "fashion"}
    spec = command_line_spec("alpha_bs", range_text=None, values="0.971,0.972,0.973", settings=settings, trials=None,
                             sampler=None, name="fig4")  # fmt: skip
    sweep = expand(spec, overrides=settings)
    return WorkerPlan(sweep, parse_storage(None, tmp_path), Runtime(results_root=tmp_path))


def _view(plan: WorkerPlan, index: int, state: str, error: float | None) -> TrialView:
    group = plan.sweep.groups[0]
    point = group.points[index]
    return TrialView(study=group.study, group=group.name, param=group.param, number=index, state=state,
                     value=str(point.value), seed=None, run_ids=(point.run_id,), final_error_pct=error,
                     training_memory_mb=None if error is None else 0.0123, note="")  # fmt: skip


def test_sweep_progress_keeps_both_bars_counts_and_the_run_at_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    monkeypatch.setattr(views.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(views, "epochs_done", lambda root, run_id: 5)
    plan = _plan(tmp_path)
    running = plan.sweep.groups[0].points[1].run_id
    progress = views.SweepProgress(plan, enabled=True, console=_terminal())
    with progress:
        progress.update(Snapshot(3, 0, 0, 0, (), ()))
        now[0] = 600.0
        trials = (_view(plan, 0, "COMPLETE", 12.5), _view(plan, 1, "RUNNING", None))
        progress.update(Snapshot(3, 1, 1, 0, (running,), trials))
        lines = _fits(_text(progress.progress.get_renderable()))
    assert lines[0].startswith("trials") and "1/3" in lines[0] and _has_bar(lines[0])
    assert "left 0:20:00" in lines[0] and "elapsed 0:10:00" in lines[0]  # 10 min per trial, 2 left
    assert "running 1" in lines[0]
    assert "5/20" in lines[1] and running in lines[1] and _has_bar(lines[1])
    printed = progress.console.file.getvalue()
    assert "trial 1/3 complete" in printed and "error 12.50 %" in printed


def test_sweep_summary_names_the_dataset_and_flags_a_tie(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    trials = (_view(plan, 0, "COMPLETE", 12.5), _view(plan, 1, "COMPLETE", 12.5), _view(plan, 2, "COMPLETE", 13.0))
    console = Console(file=io.StringIO(), width=WIDTH, record=True)
    views.print_sweep_summary(plan, Snapshot(3, 3, 0, 0, (), trials), console=console)
    text = console.export_text()
    assert "(fashion)" in text
    assert "tie: 0.971, 0.972" in text.replace("\n", " ").replace("  ", " ") or "tie:" in text


def test_check_table_keeps_whole_configuration_names_and_lists_only_failures(tmp_path: Path) -> None:
    names = [f"fashion-dynhp-b16-a0.9{70 + i}-quick" for i in range(11)]
    verdicts = [Verdict(name, "training_memory_mb", 0.0123, 0.0124, 0.0130, "pass") for name in names]
    verdicts[3] = dataclasses.replace(verdicts[3], measured=0.0200, status="regressed")
    console = Console(file=io.StringIO(), width=WIDTH, record=True)
    views.print_check(verdicts, Path("results/baseline_smoke.json"), console=console)
    text = "\n".join(_fits(console.export_text()))
    assert names[3] in text and "regressed" in text
    assert names[0] not in text  # a passing check is not listed
    everything = Console(file=io.StringIO(), width=WIDTH, record=True)
    views.print_check(verdicts, Path("b.json"), show_all=True, console=everything)
    listed = "\n".join(_fits(everything.export_text()))
    assert all(name in listed for name in names)


def test_all_passing_checks_print_one_line() -> None:
    verdicts = [Verdict(f"mnist-sp-b{b}-smoke", m, 1.0, 1.0, 1.1, "pass") for b in (16, 32) for m in ("a", "b")]
    console = Console(file=io.StringIO(), width=WIDTH, record=True)
    views.print_check(verdicts, Path("b.json"), console=console)
    lines = [line for line in console.export_text().splitlines() if line.strip()]
    assert lines == ["all 4 checks passed (2 configurations × 2 metrics; --all lists them)"]


def test_paper_table_keeps_the_papers_values_at_80_columns(tmp_path: Path) -> None:
    make_run(tmp_path, TrainConfig(strategy="sp", batch_size=512, profile="smoke", epochs=2), errors=[3.0, 2.0])
    table = report.paper_table(report.configurations(report.index_runs(tmp_path).runs), "mnist")
    console = Console(file=io.StringIO(), width=WIDTH, record=True)
    views.print_paper_table(table, "mnist", console=console)
    text = "\n".join(_fits(console.export_text()))
    sp = table[table["method"] == "SP"].iloc[0]
    for value in (f"{sp.paper_error_pct:.2f}", f"{sp.paper_model_size_mb:.3f}", f"{sp.paper_training_memory_mb:.3f}"):
        assert value in text
    assert f"{2.0 - sp.paper_error_pct:+.2f}" in text  # ours minus the paper's, rounded
    assert "…" not in text
    for row in table.itertuples():
        assert f"{row.paper_error_pct:.2f}" in text


def _rendered(text: str, width: int, *, terminal: bool = True) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, force_terminal=terminal, color_system=None)
    views.print_lines(console, text)
    return console.export_text()


def _sweep_lines(plan: WorkerPlan) -> list[str]:
    """The header and one trial line of each kind, with the paper's names and run ids."""
    group = plan.sweep.groups[0]
    done = dataclasses.replace(_view(plan, 2, "COMPLETE", 12.5), reused_runs=1)
    search = dataclasses.replace(done, seed=None, run_ids=tuple(p.run_id for p in group.points), reused_runs=2)
    failed = dataclasses.replace(_view(plan, 1, "FAIL", None), note="its worker stopped sending heartbeats")
    header = views.sweep_header("reproduce", groups=10, trials=48, runs=44, workers=2, threads=None,
                                storage="results/study.journal")  # fmt: skip
    given = views.sweep_header("table3_fashion", groups=3, trials=13, runs=13, workers=2, threads=1,
                               storage="results/study.journal")  # fmt: skip
    return [header, given, views.trial_line(done, 47, 48), views.trial_line(search, 3, 20),
            views.trial_line(failed, 0, 48)]  # fmt: skip


def test_sweep_lines_fit_80_columns_as_written(tmp_path: Path) -> None:
    lines = [line for text in _sweep_lines(_plan(tmp_path)) for line in _rendered(text, 200).splitlines()]
    # the search trial's three run ids are one list: it alone may run past 80 columns (wrapped below)
    long = [line for line in lines if len(line) > WIDTH]
    assert len(long) == 1 and long[0].startswith("  runs "), long
    header = _rendered(_sweep_lines(_plan(tmp_path))[0], 200)
    assert header.splitlines() == [
        "sweep reproduce: 10 groups, 48 trials over 44 runs (shared runs train once)",
        "  2 workers; torch threads per run: 1 below batch 256, else the free cores ÷ 2",
        "  studies in results/study.journal",
    ]
    assert "(s)" not in header  # "1 worker(s) × 1 below batch 256 …" read badly


def test_sweep_lines_wrap_at_spaces_at_80_columns(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    note = "a failure whose message is long: " + "word " * 40 + "and a path /very/long/results/runs/" + "x" * 30
    failed = dataclasses.replace(_view(plan, 1, "FAIL", None), note=note)
    header = views.sweep_header("a-very-long-sweep-name-" * 3, groups=1, trials=2, runs=2, workers=1, threads=None,
                                storage="/home/someone/projects/dynhp-bench/results/studies/study.journal")  # fmt: skip
    for text in [*_sweep_lines(plan), views.trial_line(failed, 0, 2), header]:
        shown = _rendered(text, WIDTH)
        assert all(len(line) <= WIDTH for line in shown.splitlines()), shown
        assert shown.split() == text.split(), "a word was broken across lines"  # rich wraps at spaces only


def test_off_a_terminal_each_sweep_line_stays_whole(tmp_path: Path) -> None:
    text = views.trial_line(dataclasses.replace(_view(_plan(tmp_path), 1, "FAIL", None), note="word " * 40), 0, 2)
    assert _rendered(text, WIDTH, terminal=False).splitlines() == text.splitlines()  # logs: grep finds one line
