"""The `dynhp-bench` command line. Commands stay short; this is the one place errors become a line and an
exit status (2 for anything a user can cause, 130 for an interrupt)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, get_args

import pandas as pd
import torch
import typer
from rich.markup import escape

from dynhp_bench import __version__
from dynhp_bench.analysis import report
from dynhp_bench.analysis.baseline import compare, junit_xml, read_baseline, write_baseline
from dynhp_bench.analysis.bench import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_WARM_UP_EPOCHS,
    case_names,
    run_bench,
    targets,
    train_peak_rss_bytes,
)
from dynhp_bench.cli.views import (
    EpochProgress,
    SweepProgress,
    err_console,
    out_console,
    plan_line,
    print_bench,
    print_check,
    print_configurations,
    print_inference,
    print_lines,
    print_paper_table,
    print_run_summary,
    print_sweep_summary,
    sweep_header,
)
from dynhp_bench.data.datasets import load_dataset, resolve_data_dir
from dynhp_bench.errors import SHOWN_CHARS, DynhpError, Interrupted, ResultsError, SettingsError
from dynhp_bench.settings.config import (
    CHOICES,
    DEFAULT_PROFILE,
    MAX_BATCH_SIZE,
    MAX_SUBSET,
    PROFILES,
    check_count,
    resolve_config,
)
from dynhp_bench.sweep import (
    COMPETITOR_SWEEPS,
    PAPER_SWEEPS,
    SWEEPABLE,
    SWEEPS_DIR,
    PoolOutcome,
    Sweep,
    WorkerPlan,
    check_data,
    check_storage,
    combine,
    command_line_spec,
    expand,
    mask_url,
    max_workers,
    parse_seeds,
    parse_storage,
    read_sweep_file,
    run_pool,
    work,
)
from dynhp_bench.sweep.estimate import estimate as estimate_wall
from dynhp_bench.sweep.estimate import runs_left
from dynhp_bench.sweep.storage import DEFAULT_HEARTBEAT_S, GRACE_HEARTBEATS, repair_journal
from dynhp_bench.training import kernels
from dynhp_bench.training.run_folder import (
    CONFIG_FILE,
    RUNS_DIR,
    RunFolder,
    complete_runs,
    publish_run,
    run_path,
    staged_folder,
    write_text_atomic,
)
from dynhp_bench.training.threads import check_threads, split_threads
from dynhp_bench.training.trainer import DEVICES, Runtime, train

app = typer.Typer(
    name="dynhp-bench",
    help="Train, sweep and benchmark neural networks under a memory budget with Dynamic Hard Pruning (DynHP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

AMBIGUITIES = "Choices the paper leaves open"
DYPRUNE = "DyPrune (strategy dyprune)"


def _flags_show_no_type() -> None:
    """A flag takes no value, yet typer's rich help (0.29) prints it as `--quiet <bool>`: show no type for flags."""
    option = typer.core.TyperOption
    shown = option.display_type_rich

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    option.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()


def _choices(name: str) -> str:
    return " | ".join(CHOICES[name])


def _print_version(value: bool) -> None:
    if value:
        out_console.print(f"dynhp-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """dynhp-bench: reproduce, sweep and gate DynHP training runs."""


# `train` and `bench` both take it; `sweep` and `reproduce` copy it from `train` (`_with_train_options`).
StepOption = Annotated[
    str,
    typer.Option(
        help="Training step: fast (the hand-written MLP step where it covers the run, with compiled C loops where a"
        " C compiler is found) | fast_torch (the same on PyTorch operations alone) | autograd (the reference)"
    ),
]


@app.command("train")
def train_command(
    dataset: Annotated[str | None, typer.Option(help=f"{_choices('dataset')}", show_default="mnist")] = None,
    strategy: Annotated[str | None, typer.Option(help=f"{_choices('strategy')}", show_default="dynhp")] = None,
    arch: Annotated[str | None, typer.Option(help=f"Network: {_choices('arch')}", show_default="mlp")] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()), show_default="quick"),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs", show_default="the profile's")] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Batch size (DynHP: the initial one)", show_default="the paper's best per dataset"),
    ] = None,
    lambda_: Annotated[
        float | None, typer.Option("--lambda", help="L0 strength λ in (0, 1)", show_default="0.01")
    ] = None,
    gamma: Annotated[
        float | None, typer.Option(help="HP/DynHP activation threshold γ in [0, 1]", show_default="0.5")
    ] = None,
    alpha_bs: Annotated[
        float | None, typer.Option(help="DynHP smoothing α_bs in [0, 1]", show_default="0.972 mnist, 0.980 fashion")
    ] = None,
    budget_bytes: Annotated[
        int | None, typer.Option(help="DynHP memory budget C in bytes", show_default="the best SP epoch's memory")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed", show_default="0")] = None,
    subset: Annotated[int | None, typer.Option(help="Train on the first N training images only")] = None,
    hidden: Annotated[str | None, typer.Option(help="Hidden layer widths (--arch mlp)", show_default="300,100")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of settings (command-line options override it)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data root", show_default="$DYNHP_DATA, else ~/.cache/dynhp-bench/data")
    ] = None,
    out: Annotated[Path, typer.Option(help="Results root; the run lands in OUT/runs/RUN_ID/")] = Path("results"),
    threads: Annotated[
        int | None,
        typer.Option(help="Torch CPU threads", show_default="1 below batch 256, else the cores left free"),
    ] = None,
    device: Annotated[str, typer.Option(help=" | ".join(DEVICES))] = "auto",
    step: StepOption = "fast",
    force: Annotated[
        bool, typer.Option(help="Train afresh even if this run is complete or has a checkpoint to continue from")
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this folder from its checkpoint (settings come from its config.json)"),
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Write a checkpoint every K epochs", show_default="every 5 minutes")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No per-epoch progress")] = False,
    gate_draws: Annotated[
        str | None,
        typer.Option(
            help=f"{_choices('gate_draws')}: one gate draw per batch or per example",
            show_default="batch",
            rich_help_panel=AMBIGUITIES,
        ),
    ] = None,
    growth_cadence: Annotated[
        str | None,
        typer.Option(
            help=f"{_choices('growth_cadence')}: when Eq. 8 runs", show_default="epoch", rich_help_panel=AMBIGUITIES
        ),
    ] = None,
    growth_rounding: Annotated[
        str | None,
        typer.Option(
            help=f"{_choices('growth_rounding')}: Eq. 8's rounding", show_default="ceil", rich_help_panel=AMBIGUITIES
        ),
    ] = None,
    lambda_scaling: Annotated[
        str | None,
        typer.Option(
            help=f"{_choices('lambda_scaling')}: L0 charge λ·out/N or λ·out",
            show_default="divide_by_n",
            rich_help_panel=AMBIGUITIES,
        ),
    ] = None,
    validation_split: Annotated[
        int | None,
        typer.Option(
            help="Hold out the last N training images for a validation loss (any strategy; dyprune needs it)",
            show_default="dyprune: 10000, a sixth of --subset; others: none",
        ),
    ] = None,
    prune_schedule: Annotated[
        str | None,
        typer.Option(
            help=f"DyPrune: {_choices('prune_schedule')}: prune when the validation loss flattens, or every K epochs",
            show_default="dynamic",
            rich_help_panel=DYPRUNE,
        ),
    ] = None,
    prune_interval: Annotated[
        int | None,
        typer.Option(help="DyPrune static: prune after epochs t % K == 0", show_default="4", rich_help_panel=DYPRUNE),
    ] = None,
    slope_min: Annotated[
        float | None,
        typer.Option(help="DyPrune dynamic: lowest slope ratio that prunes", show_default="0", rich_help_panel=DYPRUNE),
    ] = None,
    slope_max: Annotated[
        float | None,
        typer.Option(
            help="DyPrune dynamic: highest slope ratio that prunes", show_default="0.05", rich_help_panel=DYPRUNE
        ),
    ] = None,
    prune_rate: Annotated[
        float | None,
        typer.Option(
            help="DyPrune: a fixed rate in [0, 1] instead of (ln(non-zero weights) − 6) / 10",
            show_default="the size-scaled rate",
            rich_help_panel=DYPRUNE,
        ),
    ] = None,
    reset_optimizer: Annotated[
        bool | None,
        typer.Option(
            "--reset-optimizer/--keep-optimizer",
            help="DyPrune: start Adam afresh at each pruning (as published) or keep its moments",
            show_default="reset",
            rich_help_panel=DYPRUNE,
        ),
    ] = None,
    reset_biases: Annotated[
        bool | None,
        typer.Option(
            "--reset-biases/--keep-biases",
            help="DyPrune: draw the biases again at each pruning (as the published code does by accident)",
            show_default="keep",
            rich_help_panel=DYPRUNE,
        ),
    ] = None,
    growth_loss: Annotated[
        str | None,
        typer.Option(
            help=f"{_choices('growth_loss')}: Eq. 8's F, the data loss or data loss + penalty",
            show_default="data",
            rich_help_panel=AMBIGUITIES,
        ),
    ] = None,
    growth_variance: Annotated[
        str | None,
        typer.Option(
            help=f"{_choices('growth_variance')}: Eq. 8's S, of per-example gradients or of their mean (S/B)",
            show_default="examples",
            rich_help_panel=AMBIGUITIES,
        ),
    ] = None,
    growth_correction: Annotated[
        str | None,
        typer.Option(
            help=f"{_choices('growth_correction')}: S as Balles et al.'s code, or times B/(B-1)",
            show_default="none",
            rich_help_panel=AMBIGUITIES,
        ),
    ] = None,
    growth_smoothing: Annotated[
        str | None,
        typer.Option(
            help=f"{_choices('growth_smoothing')}: S and F per step, or Balles et al.'s running averages (0.95)",
            show_default="none",
            rich_help_panel=AMBIGUITIES,
        ),
    ] = None,
    ema_decay: Annotated[
        float | None,
        typer.Option(
            help="Evaluate with an exponential moving average of the parameters (the L0 code: 0.999); 0: off",
            show_default="paper profile: 0.999; others: off",
        ),
    ] = None,
    bias_init: Annotated[
        str | None,
        typer.Option(
            help=f"{_choices('bias_init')}: the MLP's biases drawn from N(0, 0.01²), or 0 as in the L0 code",
            show_default="normal",
        ),
    ] = None,
    normalize: Annotated[
        bool | None,
        typer.Option(
            "--normalize/--no-normalize",
            help="Normalise each colour channel by the mean and standard deviation of the images trained on",
            show_default="cifar10: on; mnist, fashion: off",
        ),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            help="Augment training batches: random crop of the image padded by 4 pixels, horizontal flip",
            show_default="cifar10: on; mnist, fashion: off",
        ),
    ] = None,
) -> None:
    """Train one run and write its folder: config.json, epochs.csv, summary.json."""
    cli_values: dict[str, Any] = {
        "dataset": dataset, "arch": arch, "strategy": strategy, "profile": profile, "epochs": epochs,
        "batch_size": batch_size, "lam": lambda_, "gamma": gamma, "alpha_bs": alpha_bs, "budget_bytes": budget_bytes,
        "seed": seed, "subset": subset, "hidden": hidden, "gate_draws": gate_draws, "growth_cadence": growth_cadence,
        "growth_rounding": growth_rounding, "lambda_scaling": lambda_scaling, "validation_split": validation_split,
        "prune_schedule": prune_schedule, "prune_interval": prune_interval, "slope_min": slope_min,
        "slope_max": slope_max, "prune_rate": prune_rate, "reset_optimizer": reset_optimizer,
        "reset_biases": reset_biases, "growth_loss": growth_loss,
        "growth_variance": growth_variance, "growth_correction": growth_correction,
        "growth_smoothing": growth_smoothing, "ema_decay": ema_decay, "normalize": normalize, "augment": augment,
        "bias_init": bias_init,
    }  # fmt: skip
    if resume is not None:
        given = sorted(k for k, v in cli_values.items() if v is not None) + (["config"] if config else [])
        if given:
            raise SettingsError(
                f"--resume takes every setting from {resume / CONFIG_FILE}; drop --{given[0].replace('_', '-')}"
            )
        if not (resume / CONFIG_FILE).is_file():
            raise ResultsError(
                f"--resume={str(resume)!r} holds no {CONFIG_FILE}; expected a run folder OUT/runs/RUN_ID"
            )
        settings = RunFolder(resume).read_settings()
        out = resume.resolve().parent.parent
        if resume.resolve() != run_path(out, settings.run_id).resolve():
            raise ResultsError(f"{resume} is not the folder of run {settings.run_id}; expected OUT/runs/RUN_ID")
    else:
        settings = resolve_config(cli_values, settings_file=config)
    runtime = Runtime(
        data_dir=data_dir,
        results_root=out,
        threads=threads,
        device=device,
        checkpoint_every=checkpoint_every,
        step=step,
    )
    _note_step(runtime)
    header = f"[bold]{settings.run_id}[/]  ({settings.profile} profile, {settings.epochs} epochs)"
    with EpochProgress(settings.epochs, enabled=not quiet, header=header) as progress:
        result = train(settings, runtime, on_epoch=progress.update, on_step=progress.step, force=force)
    if result.skipped:
        err_console.print(f"already complete: {result.run_dir} (pass --force to train it again)")
    print_run_summary(result.summary, result.run_dir)


# --- sweeps ------------------------------------------------------------------------------------------------------

# train's options that fix a sweep's settings (and the runtime ones a sweep shares), reused as they are.
SETTING_OPTIONS = (
    "dataset", "arch", "strategy", "profile", "epochs", "batch_size", "lambda_", "gamma", "alpha_bs", "budget_bytes",
    "subset", "hidden", "gate_draws", "growth_cadence", "growth_rounding", "lambda_scaling", "validation_split",
    "prune_schedule", "prune_interval", "slope_min", "slope_max", "prune_rate", "reset_optimizer", "reset_biases",
    "growth_loss", "growth_variance", "growth_correction", "growth_smoothing", "ema_decay", "normalize", "augment",
    "bias_init",
)  # fmt: skip
RUNTIME_OPTIONS = ("config", "data_dir", "out", "device", "step")
FIXED_SETTINGS = "Fixed settings (as for train)"
STORAGE_ENV = "DYNHP_STORAGE"  # keeps a PostgreSQL password off the command line and out of shell history
MAX_HEARTBEAT_S = 3600
MAX_REPEATS = 1000
INTERRUPTED = "interrupted: the running trials were failed; run the same command again to finish the sweep"


def _with_train_options(names: Sequence[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command `train`'s options `names` as they are defined there; they arrive as one dict, `train_options`.

    Defining each option once keeps `train` and `sweep` from drifting apart (same flags, help and defaults).
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        source = inspect.signature(train_command, eval_str=True).parameters
        own = inspect.signature(func, eval_str=True)
        params = [p for p in own.parameters.values() if p.name != "train_options"]
        for name in names:
            param = source[name]
            base, info = get_args(param.annotation)
            if name in SETTING_OPTIONS and info.rich_help_panel is None:
                info = copy.copy(info)
                info.rich_help_panel = FIXED_SETTINGS
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[base, info]))

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            options = {name: kwargs.pop(name) for name in names}
            return func(**kwargs, train_options=options)

        del wrapper.__wrapped__  # Typer must read the signature below, not the wrapped function's
        wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


# The options `sweep` and `reproduce` share.
StorageOption = Annotated[
    str | None,
    typer.Option(
        help="Study storage: postgresql://USER:PASSWORD@HOST:PORT/DB, or a journal file path",
        show_default="OUT/study.journal",
        envvar=STORAGE_ENV,
    ),
]
WorkersOption = Annotated[int, typer.Option(help="Local worker processes")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help="Torch CPU threads in all, split between the workers",
        show_default="per run as for train, workers × threads ≤ cores",
    ),
]
HeartbeatOption = Annotated[
    int, typer.Option(help=f"PostgreSQL: seconds between heartbeats; {GRACE_HEARTBEATS} missed fail the trial")
]
QuietOption = Annotated[bool, typer.Option(help="No progress display")]
PlanOnlyOption = Annotated[
    bool,
    typer.Option(
        "--plan-only",
        help="Print the runs left and their expected wall time, then stop: nothing is trained or written",
    ),
]
EstimateOption = Annotated[
    bool,
    typer.Option(
        "--estimate/--no-estimate",
        help="Before training, time a few steps of each kind of run left and print the expected wall time",
    ),
]


@app.command("sweep")
@_with_train_options(SETTING_OPTIONS + RUNTIME_OPTIONS)
def sweep_command(
    param: Annotated[
        str | None, typer.Argument(help=f"The parameter to sweep: {' | '.join(SWEEPABLE)}", show_default=False)
    ] = None,
    *,
    range_: Annotated[
        str | None,
        typer.Option("--range", help="A:B[:STEP], both ends included; STEP defaults to one unit of the finest decimal"),
    ] = None,
    values: Annotated[str | None, typer.Option(help="Exact values v1,v2,…")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A sweep file, e.g. sweeps/table2_mnist.toml")] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Repeat each point with these seeds: 0,1,2", show_default="0")
    ] = None,
    trials: Annotated[
        int | None, typer.Option(help="Search: let the sampler pick this many points of --range instead of all")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="Search sampler: tpe | random", show_default="tpe")] = None,
    name: Annotated[str | None, typer.Option(help="Sweep name; studies are NAME.GROUP.PROFILE")] = None,
    storage: StorageOption = None,
    workers: WorkersOption = 1,
    threads: ThreadsOption = None,
    heartbeat_s: HeartbeatOption = DEFAULT_HEARTBEAT_S,
    quiet: QuietOption = False,
    estimate: EstimateOption = True,
    plan_only: PlanOnlyOption = False,
    train_options: dict[str, Any],
) -> None:
    """Run every point × seed of a grid once (or a sampler's search), resumable, with any number of workers."""
    options = dict(train_options)
    runtime_options = {key: options.pop(key) for key in RUNTIME_OPTIONS}
    settings = {("lambda" if k == "lambda_" else k): v for k, v in options.items() if v is not None}
    if file is not None:
        extra = [flag for flag, v in (("PARAM", param), ("--range", range_), ("--values", values),
                                      ("--trials", trials), ("--sampler", sampler)) if v is not None]  # fmt: skip
        if extra:
            raise SettingsError(f"{extra[0]} cannot be combined with --file; the sweep file names what it sweeps")
        spec = read_sweep_file(file)
        if name is not None:
            spec = dataclasses.replace(spec, name=name)
    elif param is None:
        raise SettingsError(
            f"no parameter to sweep; expected PARAM ({', '.join(SWEEPABLE)}) or --file sweeps/NAME.toml"
        )
    else:
        spec = command_line_spec(
            param, range_text=range_, values=values, settings=settings, trials=trials, sampler=sampler, name=name
        )
    try:
        sweep = expand(
            spec,
            overrides=settings,
            seeds=parse_seeds(seeds) if seeds is not None else None,
            settings_file=runtime_options["config"],
        )
    except SettingsError as exc:  # a setting the file gives, or one clashing with it: name the file
        if file is None or str(file) in str(exc):
            raise
        raise SettingsError(f"sweep file {str(file)!r}: {exc}") from None
    status = _run_sweep(sweep, runtime_options, storage=storage, workers=workers, threads=threads,
                        heartbeat_s=heartbeat_s, quiet=quiet, estimate=estimate,
                        plan_only=plan_only)  # fmt: skip
    if status:
        raise typer.Exit(status)


@app.command("reproduce")
@_with_train_options(("data_dir", "out", "device", "step"))
def reproduce_command(
    *,
    profile: Annotated[
        str, typer.Option(help="; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()))
    ] = DEFAULT_PROFILE,
    storage: StorageOption = None,
    workers: WorkersOption = 1,
    threads: ThreadsOption = None,
    heartbeat_s: HeartbeatOption = DEFAULT_HEARTBEAT_S,
    sweeps_dir: Annotated[
        Path, typer.Option(help="Folder of the paper's sweep files", show_default="sweeps/ beside the package")
    ] = SWEEPS_DIR,
    competitors: Annotated[
        bool,
        typer.Option(
            help="Also run the competitors (sweeps/competitors_*.toml: every strategy, DyPrune included, 3 seeds)"
        ),
    ] = False,
    quiet: QuietOption = False,
    estimate: EstimateOption = True,
    plan_only: PlanOnlyOption = False,
    train_options: dict[str, Any],
) -> None:
    """Run every sweep file the paper's tables and figures need (with --competitors, the competitors' too),
    skipping runs already complete."""
    names = [*PAPER_SWEEPS, *(COMPETITOR_SWEEPS.values() if competitors else ())]
    sweeps = [expand(read_sweep_file(sweeps_dir / f"{name}.toml"), overrides={"profile": profile}) for name in names]
    what = "the paper's tables and figures" + (" and the competitors" if competitors else "")
    sweep = combine(sweeps, name="reproduce", description=f"{what}, {profile} profile")
    status = _run_sweep(sweep, train_options, storage=storage, workers=workers, threads=threads,
                        heartbeat_s=heartbeat_s, quiet=quiet, estimate=estimate,
                        plan_only=plan_only)  # fmt: skip
    if plan_only:
        return
    results_root = Path(train_options["out"]).resolve()
    complete = len({p.run_id for p in sweep.points if RunFolder(run_path(results_root, p.run_id)).is_complete})
    out_console.print(
        f"{complete} runs of the {profile} profile are in {results_root / 'runs'}; "
        f"`dynhp-bench report` reads them from the results folder {results_root}"
    )
    if status:
        raise typer.Exit(status)


@app.command("sweep-worker", hidden=True)
def sweep_worker_command() -> None:
    """Run one sweep worker on the plan read from stdin (the `sweep` command starts these)."""
    plan = WorkerPlan.from_json(sys.stdin.read())
    try:
        work(plan)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _run_sweep(
    sweep: Sweep,
    runtime_options: dict[str, Any],
    *,
    storage: str | None,
    workers: int,
    threads: int | None,
    heartbeat_s: int,
    quiet: bool,
    estimate: bool = True,
    plan_only: bool = False,
) -> int:
    """Check everything, then run the pool with a progress display; return the exit status (0 when finished).

    With `plan_only`, print the runs left and their expected wall time and return 0 before the storage is
    opened: nothing is trained or written."""
    bound, why = max_workers()
    check_count("--workers", workers, low=1, high=bound, why=f" on this machine ({why})")
    check_threads(threads)
    check_count("--heartbeat-s", heartbeat_s, low=1, high=MAX_HEARTBEAT_S)
    out = Path(runtime_options["out"])
    runtime = Runtime(
        data_dir=runtime_options["data_dir"],
        results_root=out,
        threads=None if threads is None else split_threads(threads, workers),
        workers=workers,
        device=runtime_options["device"],
        step=runtime_options["step"],
    )
    runtime.torch_device()
    _note_step(runtime)
    check_data(sweep, runtime.data_dir)
    if plan_only:
        _print_plan(sweep, runtime, estimate=estimate)
        return 0
    target = parse_storage(storage, out)
    if target.journal is not None:
        note = repair_journal(target.journal)
        if note:
            print_lines(err_console, f"[yellow]warning:[/] {escape(note)}", markup=True)
    check_storage(target)
    plan = WorkerPlan(sweep, target, runtime, heartbeat_s=heartbeat_s)
    runs = len({p.run_id for p in sweep.points})
    trials = sum(g.size for g in sweep.groups)
    header = sweep_header(sweep.name, groups=len(sweep.groups), trials=trials, runs=runs, workers=workers,
                          threads=runtime.threads, storage=target.shown)  # fmt: skip
    print_lines(err_console, header)
    _print_plan(sweep, runtime, estimate=estimate)
    try:
        with SweepProgress(plan, enabled=not quiet) as progress:
            outcome = run_pool(plan, workers=workers, on_update=progress.update)
    except KeyboardInterrupt:
        print_lines(err_console, INTERRUPTED)
        raise
    print_sweep_summary(plan, outcome.final)
    return _sweep_status(outcome)


def _print_plan(sweep: Sweep, runtime: Runtime, *, estimate: bool) -> None:
    """The plan line: the runs and epochs left in the results root, and (with `estimate`) their measured wall time."""
    left = runs_left(sweep, runtime.results_root)
    wall = estimate_wall(left, runtime) if estimate and left else None
    epochs_left = sum(run.epochs_left for run in left)
    print_lines(err_console, plan_line(len(left), epochs_left, wall))


def _sweep_status(outcome: PoolOutcome) -> int:
    for ended in outcome.exits:
        if ended.returncode < 0:
            err_console.print(f"worker {ended.pid} was ended by signal {-ended.returncode}", highlight=False)
    codes = {ended.returncode for ended in outcome.exits}
    if 130 in codes:
        print_lines(err_console, INTERRUPTED)
        return 130
    if 2 in codes:
        return 2  # the worker printed its one-line error
    final = outcome.final
    if final.done < final.total:
        print_lines(
            err_console,
            f"sweep unfinished: {final.total - final.done} of {final.total} trials left; "
            "run the same command again to finish it",
        )
        return 1
    return 0


# --- results ---------------------------------------------------------------------------------------------------


@app.command("report")
def report_command(
    paper_tables: Annotated[
        bool, typer.Option("--paper-tables", help="Regenerate the paper's Tables 1-3 and Figures 1-7")
    ] = False,
    results: Annotated[Path, typer.Option(help="Results root holding runs/")] = Path("results"),
    out: Annotated[Path | None, typer.Option(help="Where the report lands", show_default="RESULTS/report")] = None,
    calibration: Annotated[
        bool,
        typer.Option(
            "--calibration",
            help="Also Eq. 8's calibration (docs/fidelity.md): DynHP's batch size vs epoch per reading, and its table",
        ),
    ] = False,
) -> None:
    """Summarise the runs, or regenerate the paper's tables and figures (--paper-tables).

    Without --paper-tables: every configuration, mean ± std over seeds. With it: Tables 1-3 and Figures 1-7
    as CSV, Markdown and PNG. With --calibration: every DynHP run's batch trajectory by reading of Eq. 8,
    finished runs or not (the calibration of docs/fidelity.md).
    Either way, CIFAR-10's runs get a table of their own (cifar10.csv / .md, no paper column: the paper's
    CIFAR-10 numbers are not in our references).
    """
    started = time.perf_counter()
    index = report.index_runs(results)
    out = out if out is not None else results / "report"
    final = out
    # All or nothing: every file is written into a temporary folder, moved into OUT only once all are written.
    with staged_folder(final) as out:
        configs = report.configurations(index.runs)
        written = [_save_csv(configs.drop(columns=["run_dirs"]), out / "configurations.csv")]
        inference = report.inference_table(index.runs)
        if not inference.empty:  # runs timed by `bench --inference`
            written.append(_save_csv(inference, out / "inference.csv"))
        if index.incomplete:
            err_console.print(
                f"[yellow]warning:[/] {len(index.incomplete)} unfinished run folder(s) not read as results: "
                + ", ".join(p.name for p in index.incomplete[:5])
                + (" …" if len(index.incomplete) > 5 else "")
            )
        if paper_tables:
            datasets = report.dataset_table(index.runs)
            written.append(_save_csv(datasets, out / "table1_datasets.csv"))
            written.append(out / "table1_datasets.md")
            write_text_atomic(written[-1], report.frame_markdown(datasets, "Table 1: datasets"))
            tables = {dataset: report.paper_table(configs, dataset) for dataset in report.TABLE_NUMBER}
            for dataset, table in tables.items():
                stem = f"table{report.TABLE_NUMBER[dataset]}_{dataset}"
                written.append(_save_csv(table, out / f"{stem}.csv"))
                written.append(out / f"{stem}.md")
                write_text_atomic(written[-1], report.table_markdown(table, dataset))
                print_paper_table(table, dataset)
            from dynhp_bench.analysis import figures  # matplotlib costs ~0.4 s at start-up: only `report` needs it

            try:
                drawn = figures.write_figures(configs, out)
            except OSError as exc:
                raise ResultsError(f"cannot write figures under {final}: {exc.strerror or exc}") from None
            written += [path for png, _ in drawn.values() for path in (png, png.with_suffix(".csv"))]
            empty = [name for name, (_, rows) in drawn.items() if rows == 0]
            missing = report.missing_rows(tables)
            if missing or empty:
                err_console.print(f"[yellow]warning:[/] {len(missing)} paper configuration(s) have no results yet:")
                for line in missing:
                    err_console.print(f"  {line}", highlight=False)
                if empty:
                    err_console.print(f"  figures with no data yet: {', '.join(empty)}", highlight=False)
        else:
            print_configurations(configs)
        written += _write_competitors(configs, out)
        written += _write_own_tables(configs, out)
        if calibration:
            from dynhp_bench.analysis import figures  # matplotlib costs ~0.4 s at start-up: only `report` needs it

            png = figures.write_calibration(results, out)
            written += [png, png.with_suffix(".csv"), png.with_name(f"{png.stem}_table.csv")]
            written.append(png.with_name(f"{png.stem}_table.md"))
    out_console.print(f"wrote {len(written)} files under {final} in {time.perf_counter() - started:.1f} s")


def _write_own_tables(configs: pd.DataFrame, out: Path) -> list[Path]:
    """<dataset>.{csv,md} for each dataset the paper's tables leave out (CIFAR-10) that has runs."""
    written = []
    for dataset in report.OWN_TABLE_DATASETS:
        table = report.own_table(configs, dataset)
        if not table.empty:
            written.append(_save_csv(table, out / f"{dataset}.csv"))
            written.append(out / f"{dataset}.md")
            write_text_atomic(written[-1], report.own_table_markdown(table, dataset))
    return written


def _write_competitors(configs: pd.DataFrame, out: Path) -> list[Path]:
    """competitors_<dataset>.{csv,md} from the competitors sweep files, and Figure 8 for each dataset with runs."""
    from dynhp_bench.analysis import figures  # matplotlib costs ~0.4 s at start-up: only `report` needs it

    written = []
    for dataset, name in COMPETITOR_SWEEPS.items():
        if not (configs["dataset"] == dataset).any():
            continue
        path = SWEEPS_DIR / f"{name}.toml"
        if path.is_file():
            table = report.competitors_table(configs, report.competitor_entries(path))
            written.append(_save_csv(table.drop(columns=["run_dirs"]), out / f"competitors_{dataset}.csv"))
            write_text_atomic(out / f"competitors_{dataset}.md", report.competitors_markdown(table, dataset))
            written.append(out / f"competitors_{dataset}.md")
        try:
            png, _ = figures.write_pareto(configs, dataset, out)
        except OSError as exc:
            raise ResultsError(f"cannot write figures under {out}: {exc.strerror or exc}") from None
        written += [png, png.with_suffix(".csv")]
    return written


@app.command("publish")
def publish_command(
    out: Annotated[Path, typer.Option(help="Results root the runs are published into, e.g. results/paper")],
    results: Annotated[Path, typer.Option(help="Results root holding runs/")] = Path("results"),
    force: Annotated[bool, typer.Option("--force", help="Replace runs already published in OUT")] = False,
) -> None:
    """Copy every complete run of RESULTS into OUT as a folder meant for git.

    Each keeps config.json, summary.json and its completion marker, with epochs.csv compressed (epochs.csv.gz,
    read by `report` and `check` as it is); checkpoints, locks and exported models stay behind. A `sweep` or
    `reproduce` with --out OUT counts the published runs as done; OUT may be RESULTS itself (the runs such a sweep
    trained are then published in place). Unfinished runs are skipped, and so are runs already published in OUT
    unless --force.
    """
    published = kept = 0
    for folder in complete_runs(results):
        if RunFolder(run_path(out, folder.path.name)).is_published and not force:
            kept += 1
            continue
        publish_run(folder, out)
        published += 1
    if published + kept == 0:
        raise ResultsError(f"no complete runs under {results / RUNS_DIR}; expected run folders written by train")
    out_console.print(f"published {published} run(s) into {out / RUNS_DIR}; {kept} already there")


@app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A complete run folder OUT/runs/RUN_ID")],
    format_: Annotated[str, typer.Option("--format", help="safetensors | onnx")] = "safetensors",
    out: Annotated[
        Path | None, typer.Option(help="Where the file lands", show_default="RUN_DIR/model.safetensors or .onnx")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data root", show_default="$DYNHP_DATA, else ~/.cache/dynhp-bench/data")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads", show_default="torch's default")] = None,
) -> None:
    """Export the run's final network, verified on the whole test set against the run before it is written.

    Gates folded, pruned units gone, raw pixels in, logits out.
    """
    from dynhp_bench.deploy.export import LOGIT_TOLERANCE, export_run  # onnx and onnxruntime load only for this

    _set_threads(threads)
    result = export_run(run_dir, format_, out=out, data_dir=data_dir)
    check = result.verification
    shapes = " → ".join([str(result.exported.shapes[0][0]), *(str(o) for _, o in result.exported.shapes)])
    runtime = "ONNX Runtime" if format_ == "onnx" else "PyTorch (re-read tensors)"
    out_console.print(
        f"wrote {result.path} ({result.file_bytes:,} bytes, {result.parameters:,} parameters, {shapes}); "
        f"checked on {check.n_test:,} test images with {runtime}: logits within {check.max_abs_logit_diff:.2g} "
        f"(≤ {LOGIT_TOLERANCE:g}), test error {check.error_pct:.2f} % = the run's {check.final_error_pct:.2f} %",
        highlight=False,
        soft_wrap=True,
    )


@app.command("check")
def check_command(
    baseline: Annotated[Path, typer.Option(help="Baseline JSON file (committed under results/)")],
    results: Annotated[Path, typer.Option(help="Results root holding runs/")] = Path("results"),
    junit: Annotated[Path | None, typer.Option(help="Also write a JUnit XML report here")] = None,
    update: Annotated[bool, typer.Option("--update", help="Write a new baseline from the results")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="List every check, not only the failed ones")] = False,
) -> None:
    """Compare the results with a baseline (exit 1 on a regression).

    Exit 1 if any configuration's error, model size or training memory got worse beyond its tolerance (or has
    no results), 0 otherwise.
    """
    index = report.index_runs(results)
    if update:
        document = write_baseline(baseline, index.runs)
        out_console.print(f"wrote {baseline} with {len(document['configurations'])} configurations")
        return
    verdicts = compare(read_baseline(baseline), index.runs)
    print_check(verdicts, baseline, show_all=show_all)
    if junit is not None:
        junit_xml(verdicts, junit)
    if any(v.failed for v in verdicts):
        raise typer.Exit(1)


@app.command("bench")
def bench_command(
    run_dirs: Annotated[
        list[Path] | None, typer.Argument(help="With --inference: run folders whose final networks to time")
    ] = None,
    inference: Annotated[
        bool,
        typer.Option(
            "--inference",
            help="Time the RUN_DIRs' exported networks (ONNX Runtime and PyTorch) beside a dense one, not training",
        ),
    ] = False,
    dataset: Annotated[str, typer.Option(help=_choices("dataset"))] = "mnist",
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes, comma-separated")] = ",".join(
        str(b) for b in DEFAULT_BATCH_SIZES
    ),
    repeats: Annotated[int, typer.Option(help="Timed epochs per case (the fastest is reported)")] = 3,
    warm_up_epochs: Annotated[
        int, typer.Option(help="Untimed epochs each case trains first, over the whole training set")
    ] = DEFAULT_WARM_UP_EPOCHS,
    subset: Annotated[int | None, typer.Option(help="Time on the first N training images only")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data root", show_default="$DYNHP_DATA, else ~/.cache/dynhp-bench/data")
    ] = None,
    out: Annotated[Path, typer.Option(help="Results root; the table lands in OUT/bench/bench.csv")] = Path("results"),
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads", show_default="all cores")] = None,
    device: Annotated[str, typer.Option(help=" | ".join(DEVICES))] = "auto",
    step: StepOption = "fast",
    reference: Annotated[
        bool,
        typer.Option(
            help="Also time sp, hp, hp20 and dynhp on the slower step paths in the same rounds: without the compiled"
            " loops (sp_fast_torch, …) and on autograd (sp_autograd, …)"
        ),
    ] = False,
    memory: Annotated[bool, typer.Option(help="Also measure the peak resident memory of `train`")] = True,
) -> None:
    """Time the trainer: seconds per epoch of each strategy beside a plain PyTorch loop.

    The plain loop (flushing subnormal floats as the trainer does, and without: plain_ieee), sp, hp, hp at 20% of
    the weights and dynhp, side by side, with the machine's matmul peak and each case's FLOP limit; saved as CSV.
    With --inference RUN_DIR…: the exported networks' file bytes, batch-1 latency and batch-256 throughput under
    ONNX Runtime and PyTorch.
    """
    sizes = _positive_ints("--batch-sizes", batch_sizes)
    check_count("--repeats", repeats, low=1, high=MAX_REPEATS)
    check_count("--warm-up-epochs", warm_up_epochs, low=0, high=MAX_REPEATS)
    check_count("--subset", subset, low=1, high=MAX_SUBSET)
    if inference or run_dirs:
        if not (inference and run_dirs):
            raise SettingsError("RUN_DIR arguments go with --inference, and --inference needs at least one RUN_DIR")
        _bench_inference(run_dirs, out=out, threads=threads, repeats=repeats)
        return
    if dataset not in CHOICES["dataset"]:
        raise SettingsError(f"--dataset={dataset!r} is not known; expected one of {_choices('dataset')}")
    runtime = Runtime(data_dir=data_dir, results_root=out, threads=threads, device=device, step=step)
    if reference and runtime.step == "autograd":
        raise SettingsError("--reference times the slower step paths beside the fast one; with --step autograd "
                            "there is nothing to compare: leave one of them out")  # fmt: skip
    torch_device = runtime.torch_device()
    _note_step(runtime)
    _set_threads(threads)
    root = resolve_data_dir(data_dir)
    data = load_dataset(dataset, root, subset=subset)
    csv_path = out / "bench" / "bench.csv"
    cases = case_names(runtime.step, reference)
    width = max(map(len, cases))
    err_console.print(
        f"timing {len(sizes) * len(cases)} cases × {repeats} epochs (after {warm_up_epochs} untimed) on {data.n_train} "
        f"{dataset} images, "
        f"{torch.get_num_threads()} threads, {torch_device}"
    )

    def show(case: str, batch: int, seconds: float) -> None:
        err_console.print(f"  {case:>{width}} batch {batch:>4}: {seconds:6.2f} s/epoch", highlight=False)

    frame, peak = run_bench(
        data,
        batch_sizes=sizes,
        repeats=repeats,
        warm_up_epochs=warm_up_epochs,
        device=torch_device,
        step=runtime.step,
        reference=reference,
        on_epoch=show,
    )
    _save_csv(frame, csv_path)
    print_bench(frame, dataset=dataset, peak_gflops=peak, checks=targets(frame), step=_step_label(runtime))
    if memory:
        rss = train_peak_rss_bytes(root, dataset=dataset, threads=threads)
        out_console.print(
            f"peak resident memory of `train` (1 SP epoch, batch 512): {rss['train_peak_rss_bytes'] / 2**20:.0f} MiB "
            f"(a process that only imports torch: {rss['import_torch_rss_bytes'] / 2**20:.0f} MiB)"
        )
    out_console.print(f"saved {csv_path}")


def _bench_inference(run_dirs: Sequence[Path], *, out: Path, threads: int | None, repeats: int) -> None:
    from dynhp_bench.deploy import inference  # onnx and onnxruntime load only for this
    from dynhp_bench.deploy.export import load_final_network

    _set_threads(threads)
    models = [inference.inference_model(run_dir) for run_dir in run_dirs]
    if not any(m.strategy == "dense" for m in models):
        models.append(inference.dense_reference(load_final_network(run_dirs[0]).config))
    err_console.print(
        f"timing {len(models)} models × 2 runtimes, {repeats} rounds, {torch.get_num_threads()} threads",
        highlight=False,
    )
    rows = inference.time_inference(models, rounds=repeats)
    for model in models:
        inference.save_inference(model, rows)
    frame = pd.DataFrame(rows)
    csv_path = _save_csv(frame, out / "bench" / "inference.csv")
    print_inference(frame, threads=torch.get_num_threads())
    out_console.print(f"saved {csv_path}")


def _note_step(runtime: Runtime) -> None:
    """Say, before any training, when ``--step fast`` cannot have its compiled loops here (it is slower without)."""
    if kernels.wanted(runtime.step, runtime.torch_device()) and kernels.load() is None:
        err_console.print(
            f"[yellow]note:[/] {kernels.unavailable_reason()}; the fast step runs on PyTorch operations alone "
            "(as --step fast_torch), up to 1.3 × slower at small batches",
            highlight=False,
        )


def _step_label(runtime: Runtime) -> str:
    """The training step as the bench table names it: the kind, and for ``fast`` whether its loops are compiled."""
    if not kernels.wanted(runtime.step, runtime.torch_device()):
        return runtime.step
    return "fast (compiled loops)" if kernels.load() is not None else "fast (PyTorch operations)"


def _set_threads(threads: int | None) -> None:
    """Apply an explicit --threads (1 to the usable cores; torch takes a C int, and more threads than cores only
    wait on each other)."""
    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)


def _save_csv(frame: pd.DataFrame, path: Path) -> Path:
    write_text_atomic(path, frame.to_csv(index=False))
    return path


def _positive_ints(flag: str, text: str) -> list[int]:
    parts = [v.strip() for v in text.split(",") if v.strip()]
    values = [int(v) for v in parts if v.isascii() and v.isdigit() and len(v) <= 9]
    if not values or len(values) != len(parts) or any(not 1 <= v <= MAX_BATCH_SIZE for v in values):
        raise SettingsError(
            f"{flag}={text!r} is not valid; expected integers from 1 to {MAX_BATCH_SIZE} separated by commas"
        )
    if len(set(values)) != len(values):
        raise SettingsError(f"{flag}={text!r} lists a value twice; expected each once")
    return values


_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


MAX_WORD_CHARS = 200  # a longer run without spaces is a value pasted whole, not a word or a path
MAX_MESSAGE_CHARS = 2000
_LONG_WORD = re.compile(rf"\S{{{MAX_WORD_CHARS + 1},}}")


def _one_line(message: str) -> str:
    """A message fit for one terminal line: control characters escaped, URL passwords masked, and (whatever raised
    it) no value echoed whole: a run of more than `MAX_WORD_CHARS` characters without a space is cut to its start,
    "…" and its length, and the message to `MAX_MESSAGE_CHARS`."""
    line = mask_url(message.translate(_CONTROL))
    line = _LONG_WORD.sub(lambda m: f"{m.group()[:SHOWN_CHARS]}… ({len(m.group()):,} characters)", line)
    return line if len(line) <= MAX_MESSAGE_CHARS else f"{line[:MAX_MESSAGE_CHARS]}… ({len(line):,} characters)"


def _usage_message(exc: typer.TyperException, args: Sequence[str]) -> str:
    """Click's usage message, naming what was typed: for `-00` click reports only the first flag it tried, `-0`."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    option = getattr(exc, "option_name", None)
    if not isinstance(option, str) or not message.startswith("No such option") or option in args:
        return message
    typed = next((a for a in args if a.startswith(option)), option)
    hint = ""
    if re.fullmatch(r"-[0-9.][0-9.eE+-]*", typed):
        hint = "; a negative number is read as an option: write it as --OPTION=" + typed
    return f"No such option: {typed}{hint}"


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one line and exit status 2."""
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        result = app(args=args, prog_name="dynhp-bench", standalone_mode=False)
    except DynhpError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except typer.TyperException as exc:  # the vendored click's usage errors (bad option, bad type)
        print(f"error: {_one_line(_usage_message(exc, args))}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except Interrupted as exc:
        print(
            f"interrupted by {exc.signal_name}: checkpoint written in {exc.run_dir}; "
            f"run the same command again (or `dynhp-bench train --resume {exc.run_dir}`) to continue",
            file=sys.stderr,
        )
        sys.exit(exc.exit_status)
    except (KeyboardInterrupt, typer.Abort):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
