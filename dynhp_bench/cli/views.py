"""How things look in the terminal: the live progress displays (a training run's epochs, a sweep's trials) and the
rich tables every command prints. Commands in `cli.py` hand these their data; nothing here decides anything."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TaskID, TextColumn
from rich.table import Column, Table

from dynhp_bench.analysis import report
from dynhp_bench.analysis.baseline import Verdict
from dynhp_bench.analysis.bench import REFERENCE_PATHS, Target
from dynhp_bench.memory import TRAINING_MEMORY_UNIT, to_mb
from dynhp_bench.sweep import Snapshot, TrialView, WorkerPlan, epochs_done, group_results
from dynhp_bench.sweep.estimate import Estimate
from dynhp_bench.training.record import EpochRecord

# Tables are wide: off a terminal (logs, CI) rich would wrap them at 80 columns.
out_console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
BAR_WIDTH = 16


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss (wall times, time left)."""
    if not math.isfinite(seconds):
        return "-:--:--"
    whole = max(round(seconds), 0)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def duration(seconds: float) -> str:
    """A wall time to plan by: seconds, minutes, hours and minutes, or days."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        minutes = round(seconds / 60)
        return f"{minutes // 60} h {minutes % 60:02d} min"
    days = seconds / 86400
    return f"{days:.1f} days" if days < 100 else f"{days:,.0f} days"


def plan_line(runs_left: int, epochs_left: int, estimate: Estimate | None) -> str:
    """One line (at most 80 columns for fewer than 10,000 runs and 10 million epochs, or with a range fewer than
    1,000 runs and 100,000 epochs) telling what a sweep has left to train and, when estimated, how long it will
    take: up to (some runs get cheaper as they train), or a range from DynHP at its memory cap to DynHP at its
    initial batch (`Estimate.capped_wall_s`)."""
    if runs_left == 0:
        return "plan: nothing left to train"
    counts = f"plan: {runs_left:,} run{'s' * (runs_left != 1)} ({epochs_left:,} epochs) left"
    if estimate is None:
        return f"{counts} (--estimate times them)"
    workers = f"{estimate.workers} worker{'s' * (estimate.workers != 1)}"
    if estimate.capped_wall_s is not None and duration(estimate.capped_wall_s) != duration(estimate.wall_s):
        return f"{counts}: {duration(estimate.capped_wall_s)} to {duration(estimate.wall_s)} with {workers}"
    bound = "up to" if estimate.upper_bound else "about"
    return f"{counts}: {bound} {duration(estimate.wall_s)} with {workers}"


def _columns(*, label_width: int, count_width: int) -> tuple[ProgressColumn, ...]:
    """Label, bar, count, then a status that alone is cut short on a narrow terminal (the others never are)."""
    return (
        TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=label_width)),
        BarColumn(bar_width=BAR_WIDTH, table_column=Column(no_wrap=True, min_width=BAR_WIDTH)),
        TextColumn("{task.fields[count]}", table_column=Column(no_wrap=True, min_width=count_width)),
        TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
    )


class EpochProgress:
    """On a terminal: a bar over epochs (elapsed and time left) above a bar over the current epoch's images
    (last epoch's error, batch size, model size). Elsewhere (logs, CI): one plain line per epoch."""

    def __init__(self, epochs: int, *, enabled: bool, header: str = "", console: Console | None = None) -> None:
        self.console = console or err_console
        self.header = header  # printed once training has started, so that an error before it is one line alone
        self.epochs = epochs
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.progress = Progress(*_columns(label_width=6, count_width=13), console=self.console, disable=not self.live)
        self.epoch_task = self.progress.add_task("epoch", total=epochs, count=f"0/{epochs}", status="")
        self.step_task = self.progress.add_task("images", total=None, count="", status="")
        self.started = time.monotonic()
        self.done = 0  # epochs finished in this command (a resumed run starts part-way)
        self.first: int | None = None

    def __enter__(self) -> EpochProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def _times(self, epochs_done: float) -> str:
        elapsed = time.monotonic() - self.started
        left = elapsed / epochs_done * (self.epochs - (self.first or 1) + 1 - epochs_done) if epochs_done else math.nan
        return f"left {clock(left)} · elapsed {clock(elapsed)}"

    def _start(self, epoch: int) -> None:
        if self.first is None:
            self.first = epoch
            if self.header:
                self.console.print(self.header, highlight=False, soft_wrap=True)

    def step(self, epoch: int, images_done: int, images_total: int) -> None:
        """Progress within an epoch (the trainer calls this every half second or so)."""
        self._start(epoch)
        if not self.live:
            return
        fraction = images_done / max(images_total, 1)
        self.progress.update(self.step_task, total=images_total, completed=images_done,
                             count=f"{images_done:,}/{images_total:,}")  # fmt: skip
        self.progress.update(self.epoch_task, status=self._times(self.done + fraction))

    def update(self, record: EpochRecord) -> None:
        """One finished epoch."""
        self._start(record.epoch)
        self.done += 1
        status = (
            f"error {record.test_error_pct:.2f}% · batch {record.batch_size:,} · model {record.model_size_mb:.3f} MB"
        )
        if self.live:
            self.progress.update(self.epoch_task, completed=record.epoch, count=f"{record.epoch}/{self.epochs}",
                                 status=self._times(self.done))  # fmt: skip
            self.progress.update(self.step_task, completed=0, count="", status=status)
        elif self.enabled:
            self.console.print(
                f"epoch {record.epoch}/{self.epochs}  {status}  memory {record.memory_mb:.3f} MB  "
                f"{record.wall_s:.1f} s/epoch",
                highlight=False,
                soft_wrap=True,
            )


def _units_label(summary: dict[str, Any]) -> str:
    """What `active_final` counts: an MLP's layer inputs, a ResNet's inner channels per stage."""
    arch = summary.get("settings", {}).get("arch", "mlp")
    return "active neurons" if arch == "mlp" else "inner channels / stage"


def print_run_summary(summary: dict[str, Any], run_dir: Path, *, console: Console | None = None) -> None:
    """A finished run's key numbers, one per row."""
    table = Table(title=summary.get("run_id"), show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("final error", f"{summary['final_error_pct']:.2f} %"),
        ("best error", f"{summary['best_error_pct']:.2f} % (epoch {summary['best_epoch']})"),
        ("model size", f"{summary['model_size_mb']:.3f} MB  ({summary['model_bytes']:,} bytes)"),
        ("non-zero parameters", f"{summary['nonzero_params']:,}" if "nonzero_params" in summary else "—"),
        (
            "training memory",
            f"{summary['training_memory_mb']:.3f} {TRAINING_MEMORY_UNIT} (Σ of {summary['epochs']} epochs' memory "
            f"/ 1000; per epoch {summary['mean_memory_mb']:.3f} MB on average)",
        ),
        ("batch size", f"{summary['batch_size_initial']:,} → {summary['batch_size_final']:,}"),
        (_units_label(summary), " / ".join(str(a) for a in summary["active_final"])),
        ("wall time", clock(summary["wall_s"])),
        ("peak resident memory", f"{to_mb(summary['peak_rss_bytes']):.1f} MB"),
        ("run folder", str(run_dir)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    (console or out_console).print(table)


class SweepProgress:
    """On a terminal: a bar over trials (running, failed, left, time left) above one epoch bar per running run.
    Everywhere: a plain line per finished trial."""

    def __init__(self, plan: WorkerPlan, *, enabled: bool, console: Console | None = None) -> None:
        self.plan = plan
        self.console = console or err_console
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.epochs = {p.run_id: p.config.epochs for p in plan.sweep.points}
        self.progress = Progress(*_columns(label_width=6, count_width=7), console=self.console, disable=not self.live)
        self.trials_task = self.progress.add_task("trials", total=None, count="", status="")
        self.run_tasks: dict[str, TaskID] = {}
        self.seen: set[tuple[str, int]] | None = None
        self.finished = 0
        self.done_before = 0
        self.started = time.monotonic()

    def __enter__(self) -> SweepProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, snap: Snapshot) -> None:
        """Where the sweep stands now (the pool calls this every second or so)."""
        finished = [t for t in snap.trials if t.state in ("COMPLETE", "FAIL")]
        if self.seen is None:  # trials finished before this command started
            self.seen = {(t.study, t.number) for t in finished}
            self.finished = self.done_before = snap.done
            if snap.done and self.enabled:
                print_lines(self.console, f"resuming: {snap.done} of {snap.total} trials already done")
        for trial in finished:
            if (trial.study, trial.number) not in self.seen:
                self.seen.add((trial.study, trial.number))
                self.finished += int(trial.state == "COMPLETE")
                if self.enabled:
                    print_lines(self.console, trial_line(trial, self.finished, snap.total))
        if not self.live:
            return
        elapsed = time.monotonic() - self.started
        here = snap.done - self.done_before  # trials finished by this command: the pace of what is left
        left = elapsed / here * (snap.total - snap.done) if here > 0 else math.nan
        status = f"left {clock(left)} · elapsed {clock(elapsed)} · running {snap.running}"
        if snap.failed:
            status += f" · failed {snap.failed}"
        self.progress.update(self.trials_task, total=snap.total, completed=snap.done,
                             count=f"{snap.done}/{snap.total}", status=status)  # fmt: skip
        root = self.plan.runtime.results_root
        running = set(snap.running_runs)
        for run_id in list(self.run_tasks):
            if run_id not in running:
                self.progress.remove_task(self.run_tasks.pop(run_id))
        for run_id in running:
            if run_id not in self.run_tasks:
                self.run_tasks[run_id] = self.progress.add_task(
                    "  run", total=self.epochs.get(run_id), count="", status=run_id
                )
            done = epochs_done(root, run_id)
            self.progress.update(self.run_tasks[run_id], completed=done, count=f"{done}/{self.epochs.get(run_id)}")


def plural(count: int, noun: str) -> str:
    """``1 worker``, ``2 workers``."""
    return f"{count:,} {noun}{'s' * (count != 1)}"


def sweep_header(
    name: str, *, groups: int, trials: int, runs: int, workers: int, threads: int | None, storage: str
) -> str:
    """What a sweep is about to do, in lines that fit 80 columns for the paper's sweeps (longer names and paths
    wrap at their spaces): its groups and trials, its workers and their threads, where its studies are."""
    shared = f" over {runs:,} runs (shared runs train once)" if runs != trials else ""
    if threads is None:  # each run picks its own, as `train` does (threads.py)
        split = f" ÷ {workers}" if workers > 1 else ""
        how = f"{plural(workers, 'worker')}; torch threads per run: 1 below batch 256, else the free cores{split}"
    else:
        how = f"{plural(workers, 'worker')} × {plural(threads, 'torch thread')}"
    return "\n".join(
        [f"sweep {name}: {plural(groups, 'group')}, {plural(trials, 'trial')}{shared}", f"  {how}",
         f"  studies in {storage}"]
    )  # fmt: skip


def trial_line(trial: TrialView, count: int, total: int) -> str:
    """One finished trial: what it ran, then its result and its runs (or why it failed) on lines of their own, each
    within 80 columns for the paper's sweeps."""
    what = f"{trial.group}: {trial.param}={trial.value}" + ("" if trial.seed is None else f" seed {trial.seed}")
    runs = f"{'run' if len(trial.run_ids) == 1 else 'runs'} {', '.join(trial.run_ids)}"
    if trial.state == "COMPLETE" and trial.final_error_pct is not None:
        reused = ""
        if trial.reused_runs:
            reused = (
                " (reused: already complete)"
                if trial.reused_runs == len(trial.run_ids)
                else (f" ({trial.reused_runs} of {len(trial.run_ids)} runs reused: already complete)")
            )
        return (
            f"trial {count}/{total} complete  {what}\n"
            f"  error {trial.final_error_pct:.2f} %  training memory {trial.training_memory_mb:.4f} "
            f"{TRAINING_MEMORY_UNIT}\n"
            f"  {runs}{reused}"
        )
    return f"trial failed  {what}\n  {runs}\n  {trial.note or 'no reason recorded'}; its point is claimed again"


def print_lines(console: Console, text: str, *, markup: bool = False) -> None:
    """Print `text` on a terminal as rich wraps it, at spaces within the terminal's width (the terminal itself would
    break a line mid-word); elsewhere (logs, CI) each line whole, so that one message stays one line to search."""
    console.print(text, highlight=False, markup=markup, soft_wrap=not console.is_terminal)


def print_sweep_summary(plan: WorkerPlan, snap: Snapshot, *, console: Console | None = None) -> None:
    """Per group: trials done, the best value by error (ties named) and by training memory."""
    table = Table(title=f"sweep {plan.sweep.name}: {snap.done} of {snap.total} trials done", box=box.SIMPLE_HEAD)
    table.add_column("group (dataset)", no_wrap=True)
    table.add_column("done", no_wrap=True)
    table.add_column("best error")
    table.add_column(f"least training memory ({TRAINING_MEMORY_UNIT})")
    for result in group_results(plan, snap):
        group = result.group
        best, least = result.best_error, result.least_memory
        best_text = "—"
        if best is not None:
            tied = [p.value for p in result.points if round(p.final_error_pct, 2) == round(best.final_error_pct, 2)]
            best_text = f"{group.param}={best.value}: {best.final_error_pct:.2f} %"
            if len(tied) > 1:
                best_text += f" (tie: {', '.join(sorted(tied))})"
        dataset = group.points[0].config.dataset if group.points else ""
        table.add_row(
            f"{group.name} ({dataset})" if dataset else group.name,
            f"{result.done}/{group.size}",
            best_text,
            "—" if least is None else f"{group.param}={least.value}: {least.training_memory_mb:.4f}",
        )
    console = console or out_console
    console.print(table)
    studies = ", ".join(g.study for g in plan.sweep.groups)
    runs = Path(plan.runtime.results_root) / "runs"
    print_lines(console, f"runs in {runs}; studies {studies} in {plan.storage.shown}")


def _fmt(value: object, digits: int) -> str:
    return "missing" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def print_paper_table(table: pd.DataFrame, dataset: str, *, console: Console | None = None) -> None:
    """Our values beside the paper's, compact enough for 80 columns (the Δ% columns are in the CSV and Markdown)."""
    epochs = sorted({int(e) for e in table["epochs"].dropna()})
    seeds = sorted({int(e) for e in table["seeds"].dropna()})
    runs = f"{'/'.join(map(str, epochs)) or '–'} epochs, {'/'.join(map(str, seeds)) or '–'} seed(s)"
    view = Table(
        title=f"Table {report.TABLE_NUMBER[dataset]}: {report.DATASET_NAMES[dataset]} ({runs}; paper: 2,000 epochs)",
        caption=f"training memory in {TRAINING_MEMORY_UNIT}, ours scaled to 2,000 epochs",
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
    )
    headers = ("method", "batch\n/ α_bs", "error\n%", "paper", "ours −\npaper", "model\nMB", "paper",
               "training\nmemory", "paper")  # fmt: skip
    for column in headers:
        view.add_column(column, justify="right", no_wrap=True)
    for row in table.itertuples():
        config = (
            f"{row.alpha_bs:.3f}" if row.alpha_bs is not None and not pd.isna(row.alpha_bs) else str(row.batch_size)
        )
        minus = row.error_minus_paper
        view.add_row(
            row.method, config, _fmt(row.error_pct, 2), f"{row.paper_error_pct:.2f}",
            "" if pd.isna(minus) else f"{minus:+.2f}",
            _fmt(row.model_size_mb, 3), f"{row.paper_model_size_mb:.3f}",
            _fmt(row.training_memory_at_2000_mb, 3), f"{row.paper_training_memory_mb:.3f}",
        )  # fmt: skip
    (console or out_console).print(view)


def print_configurations(configs: pd.DataFrame, *, console: Console | None = None) -> None:
    """Every configuration found, mean over its seeds."""
    view = Table(
        title="Configurations (mean over seeds)",
        caption=f"training memory in {TRAINING_MEMORY_UNIT}",
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
    )
    for column in ("dataset", "strategy", "batch", "α_bs", "profile", "epochs", "seeds", "error\n%", "model\nMB",
                   "training\nmemory"):  # fmt: skip
        view.add_column(column, justify="right", no_wrap=True)
    for row in configs.itertuples():
        view.add_row(
            row.dataset, row.strategy, str(row.batch_size), "" if row.alpha_bs is None else f"{row.alpha_bs:g}",
            row.profile, str(row.epochs), str(row.seeds), f"{row.final_error_pct:.2f}", f"{row.model_size_mb:.3f}",
            f"{row.training_memory_mb:.3f}",
        )  # fmt: skip
    (console or out_console).print(view)


def print_bench(frame: pd.DataFrame, *, dataset: str, peak_gflops: float, checks: list[Target], step: str) -> None:
    """The bench table (seconds per epoch per case) and whether each speed target holds; `step` names the trainer
    cases' step as the title shows it."""
    caption = (
        "plain: nn.Sequential + Adam flushing subnormal floats to zero as the trainer does "
        "(the reference of × plain); plain_ieee: the same without flushing"
    )
    meaning = {"fast_torch": "on PyTorch operations without the compiled loops", "autograd": "on the autograd path"}
    for path, suffix in REFERENCE_PATHS.items():
        if frame["case"].str.endswith(suffix).any():
            caption += f"; *{suffix}: the same strategy {meaning[path]}, in the same rounds"
    table = Table(
        title=f"Seconds per epoch, {dataset}, matmul peak {peak_gflops:.0f} GFLOP/s, {step} step", caption=caption
    )
    # The case names are never cut short (sp_autograd and hp20_autograd differ at the end); headers wrap instead.
    table.add_column("case", justify="right", no_wrap=True, min_width=int(frame["case"].str.len().max()))
    for column in ("batch", "weights", "s/epoch", "FLOP limit s", "× plain", "× FLOP limit"):
        table.add_column(column, justify="right")
    for row in frame.itertuples():
        table.add_row(
            row.case, str(row.batch_size), f"{row.weights:,}", f"{row.epoch_s:.3f}", f"{row.flop_limit_s:.3f}",
            f"{row.vs_plain:.2f}", f"{row.vs_flop_limit:.1f}",
        )  # fmt: skip
    out_console.print(table)
    held = Table(title="Targets")
    for column in ("target", "measured", "holds"):
        held.add_column(column)
    for target in checks:
        held.add_row(target.name, f"{target.measured:.2f}", "yes" if target.holds else "NO")
    out_console.print(held)


def print_check(
    verdicts: list[Verdict], baseline: Path, *, show_all: bool = False, console: Console | None = None
) -> None:
    """The checks that failed or improved (every check with `show_all`), one row per configuration × metric, then
    a count."""
    console = console or out_console
    failed = [v for v in verdicts if v.failed]
    shown = verdicts if show_all else [v for v in verdicts if v.status != "pass"]
    if shown:
        table = Table(title=f"check against {baseline}", box=box.SIMPLE_HEAD, padding=(0, 0))
        table.add_column("configuration", no_wrap=True)
        for column in ("metric", "baseline", "now", "allowed", "verdict"):
            table.add_column(column, no_wrap=True, justify="left" if column in ("metric", "verdict") else "right")
        colours = {"pass": "green", "improved": "green", "regressed": "red", "missing": "red"}
        for v in shown:
            measured = "—" if v.measured is None else f"{v.measured:.4f}"
            table.add_row(
                v.configuration, METRIC_LABELS.get(v.metric, v.metric), f"{v.baseline:.4f}", measured,
                f"{v.allowed:.4f}", f"[{colours[v.status]}]{v.status}[/]",
            )  # fmt: skip
        console.print(table)
    configurations = len({v.configuration for v in verdicts})
    if failed:
        err_console.print(
            f"[red]{len(failed)} of {len(verdicts)} checks failed[/] ({configurations} configurations)",
            highlight=False,
        )
    else:
        metrics = len(verdicts) // max(configurations, 1)
        console.print(
            f"all {len(verdicts)} checks passed ({configurations} configurations × {metrics} metrics"
            + ("" if show_all else "; --all lists them")
            + ")",
            highlight=False,
        )


# Short names for the checked metrics, so the check table fits 80 columns.
METRIC_LABELS = {"final_error_pct": "error %", "model_size_mb": "model MB", "training_memory_mb": "train mem"}


def print_inference(frame: pd.DataFrame, *, threads: int, console: Console | None = None) -> None:
    """`bench --inference`: file bytes, batch-1 latency and batch-256 throughput per model and runtime."""
    table = Table(title=f"Inference on this CPU, {threads} thread(s), median call")
    for column in ("model", "runtime", "file bytes", "parameters", "layers", "µs/image batch 1", "images/s batch 256"):
        table.add_column(column, justify="right")
    for row in frame.itertuples():
        table.add_row(
            row.model, row.runtime, f"{row.file_bytes:,}", f"{row.parameters:,}", row.layers,
            f"{row.latency_batch1_us:.1f}", f"{row.throughput_batch256_per_s:,.0f}",
        )  # fmt: skip
    (console or out_console).print(table)
