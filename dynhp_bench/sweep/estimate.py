"""How long a sweep's runs left will take here: a short measured calibration, extrapolated.

For each distinct `RunLeft.key` among the runs left, a trainer with the run's settings trains
`CALIBRATION_STEPS` steps on the first images of the real dataset, once untimed (warm-up) and once timed, at the
threads the run will use, and evaluates the test set once, timed. One real `train` of a one-epoch run on 64 images,
in a temporary folder, gives the cost of starting a run (loading the data, writing its folder) beyond its training,
and the time this command took to start (importing torch and the rest) stands in for a worker process's start-up. A
run's time is then its start-up + its epochs left × (⌈training images ÷ batch size⌉ × the seconds per step + one
evaluation), and the sweep's wall time is those runs dealt to the workers in sweep order, each run to the first
worker free, as the pool does, after the workers' start-up. HP and DynHP remove neurons, so their figures, measured
at the initial size, are upper bounds. DynHP's batch grows during a run (a step over a larger batch costs less per
image), from its initial size towards the largest its memory budget admits (Eq. 10): its runs are also timed at that
cap, and the estimate is then a range, from every DynHP run at its cap from the first epoch (what a run that reached
its cap early comes close to) to every run at its initial batch. What the pool itself spends between runs (claiming
trials, polling) is left out: for runs of a few seconds each the estimate is short by that.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dynhp_bench.data.datasets import Dataset, load_dataset, resolve_data_dir
from dynhp_bench.memory import batch_cap
from dynhp_bench.pruning.strategies import STRATEGIES
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.sweep import Sweep, epochs_done
from dynhp_bench.sweep.worker import FinishedRuns
from dynhp_bench.training.threads import default_threads
from dynhp_bench.training.trainer import Runtime, Trainer, train

CALIBRATION_STEPS = 16
Clock = Callable[[], float]
GroupKey = tuple[str, str, str, int]  # dataset, architecture, strategy, batch size


@dataclass(frozen=True)
class RunLeft:
    """One run still to train: its settings and the epochs it has already written (a resumed run)."""

    config: TrainConfig
    epochs_done: int = 0

    @property
    def epochs_left(self) -> int:
        """Epochs it still has to train."""
        return max(self.config.epochs - self.epochs_done, 0)

    @property
    def key(self) -> GroupKey:
        """What its time per step depends on most: the calibration group it belongs to."""
        return (self.config.dataset, self.config.arch, self.config.strategy, self.config.batch_size)


@dataclass(frozen=True)
class Estimate:
    """The runs left and their predicted wall time with `workers` workers."""

    runs_left: int
    epochs_left: int
    workers: int
    wall_s: float
    upper_bound: bool  # some run grows its batch or removes neurons: measured at its initial size
    calibration_s: float
    capped_wall_s: float | None = None  # with every batch-growing run at its memory cap throughout (None: none grows)


def runs_left(sweep: Sweep, results_root: Path) -> list[RunLeft]:
    """Each distinct run of `sweep` not yet complete, in sweep order; a search group counts only the trials it
    still needs (its first incomplete points stand for them)."""
    seen: set[str] = set()
    left: list[RunLeft] = []
    finished = FinishedRuns(results_root)  # the claim's own test of a folder's result
    for group in sweep.groups:
        complete = [finished(p.run_id) for p in group.points]
        wanted = max(group.size - sum(complete), 0) if group.search is not None else len(group.points)
        for point, done in zip(group.points, complete, strict=True):
            if done or point.run_id in seen or wanted == 0:
                continue
            seen.add(point.run_id)
            left.append(RunLeft(point.config, epochs_done(results_root, point.run_id)))
            wanted -= 1 if group.search is not None else 0
    return left


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps in one pass over `n_train` images (the last batch may be short)."""
    return math.ceil(n_train / batch_size)


def schedule_wall_s(run_seconds: Sequence[float], workers: int) -> float:
    """Wall time of runs dealt in order, each to the first worker free (as the sweep's pool claims them)."""
    free_at = [0.0] * max(workers, 1)
    for seconds in run_seconds:
        heapq.heappush(free_at, heapq.heappop(free_at) + seconds)
    return max(free_at)


@dataclass(frozen=True)
class Calibration:
    """What one kind of run costs here: a training step, and one evaluation of the test set."""

    step_s: float
    eval_s: float
    cap_batch: int | None = None  # a batch-growing run's memory cap at its initial size (Eq. 10), else None


def calibrate(
    config: TrainConfig, data: Dataset, device: torch.device, *, steps: int, clock: Clock, step: str = "fast"
) -> Calibration:
    """Time `config`'s training steps (`steps` untimed, then `steps` timed, on the `step` path as `Runtime.step`)
    and one evaluation (the test set, and the validation split when the run holds one out)."""
    held_out = config.validation_split or 0
    images = min(steps * config.batch_size + held_out, data.n_train)
    head = Dataset(data.name, data.train_x[:images], data.train_y[:images], data.test_x, data.test_y)
    trainer = Trainer(config, head, device, step=step)
    cap_batch = None
    if trainer.strategy.grows_batch and config.budget_bytes is not None:
        cap = batch_cap(config.budget_bytes, trainer.net.model_bytes(), config.sample_bytes)
        cap_batch = max(cap, config.batch_size)
    trainer.run_epoch(1, last=True)  # warm-up; last=True: no pruning, the network stays as set up
    trainer.batch_size = config.batch_size  # DynHP's growth after the warm-up: time the batch asked for
    started = clock()
    trainer.run_epoch(2, last=True)  # its steps and one evaluation
    epoch_s = clock() - started
    started = clock()
    trainer.test_error_pct()
    if held_out:
        trainer.validation_loss()
    eval_s = clock() - started
    return Calibration(
        max(epoch_s - eval_s, 0.0) / steps_per_epoch(images - held_out, config.batch_size), eval_s, cap_batch
    )


def start_up_s(dataset: str, runtime: Runtime, *, clock: Clock) -> float:
    """Seconds a real `train` spends on a one-epoch run of 64 images (loading the data, writing the run folder,
    one evaluation, four steps): what each run costs beyond its epochs, near enough."""
    config = TrainConfig(dataset=dataset, strategy="sp", epochs=1, subset=64, batch_size=16)
    with tempfile.TemporaryDirectory() as folder:
        started = clock()
        train(config, dataclasses.replace(runtime, results_root=Path(folder)))
        return clock() - started


def estimate(
    runs: Sequence[RunLeft],
    runtime: Runtime,
    *,
    steps: int = CALIBRATION_STEPS,
    clock: Clock = time.perf_counter,
    worker_start_s: float | None = None,
) -> Estimate:
    """Calibrate each distinct (dataset, architecture, strategy, batch size) of `runs`, a batch-growing one at its
    memory cap too, and extrapolate to the sweep's wall time (`worker_start_s`: a worker process's start-up; None
    reads this process's own)."""
    worker_start_s = process_age_s() if worker_start_s is None else worker_start_s
    started = clock()
    device = runtime.torch_device()
    root = resolve_data_dir(runtime.data_dir)
    datasets: dict[str, Dataset] = {}
    costs: dict[GroupKey, Calibration] = {}
    threads_before = torch.get_num_threads()
    try:
        for run in runs:
            if run.key in costs or run.epochs_left == 0:
                continue
            config = run.config
            if config.dataset not in datasets:
                datasets[config.dataset] = load_dataset(config.dataset, root, download=False)
            torch.set_num_threads(
                runtime.threads or default_threads(batch_size=config.batch_size, workers=runtime.workers)
            )
            costs[run.key] = calibrate(
                config, datasets[config.dataset], device, steps=steps, clock=clock, step=runtime.step
            )
            cap = costs[run.key].cap_batch
            capped = dataclasses.replace(config, batch_size=cap) if cap is not None else None
            if capped is not None and _key(capped) not in costs:
                torch.set_num_threads(runtime.threads or default_threads(batch_size=cap, workers=runtime.workers))
                costs[_key(capped)] = calibrate(
                    capped, datasets[config.dataset], device, steps=steps, clock=clock, step=runtime.step
                )
        first = next((run for run in runs if run.epochs_left > 0), None)
        start_s = 0.0 if first is None else start_up_s(first.config.dataset, runtime, clock=clock)
        if first is not None:  # the one-epoch run's own evaluation is counted in every epoch already
            start_s = max(start_s - costs[first.key].eval_s, 0.0)
    finally:
        torch.set_num_threads(threads_before)
    run_seconds, capped_seconds = [], []
    for run in runs:
        if run.epochs_left == 0:
            continue
        config = run.config
        full = datasets[config.dataset].n_train
        n_train = min(config.subset or full, full) - (config.validation_split or 0)
        cost = costs[run.key]
        epoch_s = steps_per_epoch(n_train, config.batch_size) * cost.step_s + cost.eval_s
        run_seconds.append(start_s + run.epochs_left * epoch_s)
        if cost.cap_batch is not None:
            at_cap = costs[_key(dataclasses.replace(config, batch_size=cost.cap_batch))]
            epoch_s = steps_per_epoch(n_train, cost.cap_batch) * at_cap.step_s + at_cap.eval_s
        capped_seconds.append(start_s + run.epochs_left * epoch_s)
    grows = any(costs[run.key].cap_batch is not None for run in runs if run.epochs_left > 0)
    return Estimate(
        runs_left=len(runs),
        epochs_left=sum(run.epochs_left for run in runs),
        workers=runtime.workers,
        wall_s=worker_start_s + schedule_wall_s(run_seconds, runtime.workers),
        upper_bound=any(_gets_cheaper(run.config) for run in runs),
        calibration_s=clock() - started,
        capped_wall_s=worker_start_s + schedule_wall_s(capped_seconds, runtime.workers) if grows else None,
    )


def _key(config: TrainConfig) -> GroupKey:
    return RunLeft(config).key


def process_age_s() -> float:
    """Seconds since this process started (Linux's /proc; 0 where it cannot be read)."""
    try:
        # Field 22 of /proc/self/stat (start time, in clock ticks after boot); the name in field 2 may hold spaces.
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)


def _gets_cheaper(config: TrainConfig) -> bool:
    """Whether a run's steps get cheaper as it trains (its batch grows, or neurons leave)."""
    strategy = STRATEGIES[config.strategy](config)
    return strategy.grows_batch or strategy.removes_physically()
