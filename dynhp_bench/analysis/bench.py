"""`dynhp-bench bench`: the trainer's speed side by side with a plain PyTorch loop and the FLOP limit.

Everything is measured in one process, on the data already in memory, interleaved case by case in
rounds (plain, sp, hp, hp20, dynhp; plain, sp, …) so that machine noise hits every case alike; each
case's time is its fastest round (noise only ever adds time; the median is kept as a column too).
An "epoch" is one pass over the training set plus one evaluation of the test set, for our trainer and
for the plain loop alike.

Cases, each at every batch size asked for:

* ``plain``: ``nn.Sequential`` 784-300-100-10 (3,072-300-100-10 on CIFAR-10) + Adam (PyTorch's defaults),
  cross-entropy, flushing subnormal floats to zero as the trainer does (`train.flushing_subnormals`): the fair
  reference;
* ``plain_ieee``: the same loop without flushing, as a user writes it (its Adam state reaches subnormals too);
* ``sp``, ``hp`` (full size), ``hp20`` (HP after removing neurons down to about 20% of the weights),
  ``dynhp`` (with its gradient-variance statistic, held at the batch size);
* with `reference`, the same four on the slower step paths too, in the same rounds: on the fast path's PyTorch
  operations without its compiled loops (``sp_fast_torch``, …, beside ``--step fast``) and on the autograd
  reference path (``sp_autograd``, …): each path's gain measured side by side, on one machine at one time.

The FLOP limit of a case is its network's forward + backward FLOPs for one epoch over the machine's
measured float32 matmul peak (square products), with the usual count of 6 FLOPs per weight and training
image (2 forward, 4 backward). It is a yardstick rather than a strict bound: the first layer needs no input
gradient (2 backward FLOPs per weight, not 4), the epoch's test evaluation is not counted, and thin products
run below the square-matrix peak.

Before the timed rounds at a batch size, every case trains `warm_up_epochs` untimed epochs over the whole
training set, as the timed rounds do: one-off costs (kernel selection, allocator, caches) stay out of the
timings, and the timed epochs see the state a run has after its first epochs (a network trained from scratch
for a few hundred steps had none of the subnormal floats that a real run's first layer and Adam state reach
later; the trainer flushes them to zero, and this is what shows whether that holds).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from dynhp_bench.data.datasets import Dataset
from dynhp_bench.memory import epoch_flops, layer_shapes, weight_count
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training.trainer import STEP_KINDS, Trainer, flushing_subnormals

CASES = ("plain", "plain_ieee", "sp", "hp", "hp20", "dynhp")
TRAINER_CASES = CASES[2:]
# `reference`: the step paths timed beside the one asked for (those after it in STEP_KINDS), and their cases' suffix.
REFERENCE_PATHS = {"fast_torch": "_fast_torch", "autograd": "_autograd"}
DEFAULT_BATCH_SIZES = (16, 100, 512)
HP20_WIDTH_SHARE = math.sqrt(0.2)  # every layer's width × √0.2 leaves ≈ 20% of the weights
DEFAULT_WARM_UP_EPOCHS = 1


def matmul_peak_gflops(device: torch.device, *, sizes: Sequence[int] = (1024, 2048), seconds: float = 0.5) -> float:
    """Float32 matmul throughput of this machine (GFLOP/s): the best of repeated n×n products, over sizes."""
    peak = 0.0
    for size in sizes:
        a = torch.rand(size, size, device=device)
        b = torch.rand(size, size, device=device)
        torch.mm(a, b)
        best = math.inf
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or best == math.inf:
            _sync(device)
            started = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - started)
        peak = max(peak, 2 * size**3 / best / 1e9)
    return peak


class PlainLoop:
    """The reference: what a user writes without dynhp-bench, data already in memory; with `flush`, subnormal
    floats are flushed to zero during its epochs, as `Trainer.run_epoch` does."""

    def __init__(self, data: Dataset, device: torch.device, *, seed: int = 0, flush: bool = True) -> None:
        self.flush = flush
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.shapes = layer_shapes((data.train_x.shape[1], 300, 100, 10))
        self.net = nn.Sequential(
            *[module for n_in, n_out in self.shapes for module in (nn.Linear(n_in, n_out), nn.ReLU())][:-1]
        )
        self.net.to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.data = data
        self.device = device
        self.generator = generator
        self.train_x, self.train_y = data.train_x.to(device), data.train_y.to(device)
        self.test_x, self.test_y = data.test_x.to(device), data.test_y.to(device)

    def run_epoch(self, batch_size: int) -> None:
        """One pass over the training set, then the test error."""
        with flushing_subnormals() if self.flush else contextlib.nullcontext():
            self._run_epoch(batch_size)

    def _run_epoch(self, batch_size: int) -> None:
        n = self.train_x.shape[0]
        perm = torch.randperm(n, generator=self.generator).to(self.device)
        for start in range(0, n, batch_size):
            index = perm[start : start + batch_size]
            loss = F.cross_entropy(self.net(self.train_x[index]), self.train_y[index])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            float((self.net(self.test_x).argmax(1) != self.test_y).sum())


def hp20_trainer(data: Dataset, batch_size: int, device: torch.device, *, step: str = "fast") -> Trainer:
    """An HP trainer whose network was cut to ≈ 20% of its weights (every layer's inputs × √0.2)."""
    trainer = Trainer(TrainConfig(dataset=data.name, strategy="hp", batch_size=batch_size), data, device, step=step)
    generator = torch.Generator().manual_seed(0)
    masks = []
    for n_in, _ in trainer.net.shapes:
        remove = torch.ones(n_in, dtype=torch.bool)
        remove[torch.randperm(n_in, generator=generator)[: round(n_in * HP20_WIDTH_SHARE)]] = False
        masks.append(remove)
    trainer.remove_units(masks)
    return trainer


@dataclass
class _Runner:
    """One case at one batch size: how to run an epoch, and the network it trains."""

    case: str
    batch_size: int
    epoch: Callable[[], None]
    shapes: Callable[[], list[tuple[int, int]]]
    step: str  # the trainer's step path, or "plain"


def reference_paths(step: str, reference: bool) -> list[tuple[str, str]]:
    """The trainer cases' step paths and case-name suffixes: `step` itself, then with `reference` every slower path
    (``fast``: ``fast_torch`` and ``autograd``; ``fast_torch``: ``autograd``)."""
    slower = [(p, s) for p, s in REFERENCE_PATHS.items() if STEP_KINDS.index(p) > STEP_KINDS.index(step)]
    return [(step, ""), *(slower if reference else [])]


def case_names(step: str, reference: bool) -> list[str]:
    """Every case `run_bench` times, in its order within a round."""
    trainer_cases = [case + suffix for _, suffix in reference_paths(step, reference) for case in TRAINER_CASES]
    return [*CASES[:2], *trainer_cases]


def _runners(data: Dataset, batch_size: int, device: torch.device, step: str, reference: bool) -> list[_Runner]:
    runners = []
    for case, flush in (("plain", True), ("plain_ieee", False)):
        plain = PlainLoop(data, device, flush=flush)
        runners.append(
            _Runner(case, batch_size, functools.partial(plain.run_epoch, batch_size), _shapes_of(plain), "plain")
        )
    for path, suffix in reference_paths(step, reference):
        for case in TRAINER_CASES:
            if case == "hp20":
                trainer = hp20_trainer(data, batch_size, device, step=path)
            else:
                trainer = Trainer(
                    TrainConfig(dataset=data.name, strategy=case, batch_size=batch_size), data, device, step=path
                )
            runners.append(
                _Runner(case + suffix, batch_size, _fixed_epoch(trainer, batch_size), _shapes_of(trainer), path)
            )
    return runners


def _fixed_epoch(trainer: Trainer, batch_size: int) -> Callable[[], None]:
    counter = iter(range(1, 1_000_000))

    def run() -> None:
        trainer.batch_size = batch_size  # DynHP would grow it: hold it to compare at one size
        trainer.run_epoch(next(counter), last=True)  # last=True: no pruning, the size stays as set up

    return run


def _shapes_of(runner: Trainer | PlainLoop) -> Callable[[], list[tuple[int, int]]]:
    if isinstance(runner, PlainLoop):
        return lambda: runner.shapes
    return lambda: runner.net.shapes


def run_bench(
    data: Dataset,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 3,
    warm_up_epochs: int = DEFAULT_WARM_UP_EPOCHS,
    device: torch.device | None = None,
    step: str = "fast",
    reference: bool = False,
    on_epoch: Callable[[str, int, float], None] | None = None,
) -> tuple[pd.DataFrame, float]:
    """Time every case at every batch size (our trainer on the `step` path, as `Runtime.step`; with `reference`,
    its cases on every slower path too); returns (one row per case and batch size, peak GFLOP/s)."""
    device = device or torch.device("cpu")
    peak = matmul_peak_gflops(device)
    rows = []
    for batch_size in batch_sizes:
        runners = _runners(data, batch_size, device, step, reference)
        for _ in range(warm_up_epochs):
            for runner in runners:
                runner.epoch()
        times: dict[str, list[float]] = {r.case: [] for r in runners}
        for _ in range(repeats):
            for runner in runners:
                _sync(device)
                started = time.perf_counter()
                runner.epoch()
                _sync(device)
                elapsed = time.perf_counter() - started
                times[runner.case].append(elapsed)
                if on_epoch is not None:
                    on_epoch(runner.case, batch_size, elapsed)
        for runner in runners:
            shapes = runner.shapes()
            flop_limit_s = epoch_flops(shapes, data.n_train) / (peak * 1e9)
            rows.append(
                {
                    "case": runner.case,
                    "batch_size": batch_size,
                    "weights": weight_count(shapes),
                    "epoch_s": min(times[runner.case]),
                    "epoch_s_median": statistics.median(times[runner.case]),
                    "flop_limit_s": flop_limit_s,
                    "repeats": repeats,
                    "step": runner.step,
                }
            )
    frame = pd.DataFrame(rows)
    plain = frame[frame["case"] == "plain"].set_index("batch_size")["epoch_s"]
    frame["vs_plain"] = frame["epoch_s"] / frame["batch_size"].map(plain)
    frame["vs_flop_limit"] = frame["epoch_s"] / frame["flop_limit_s"]
    frame["threads"] = torch.get_num_threads()
    frame["device"] = str(device)
    frame["peak_gflops"] = peak
    return frame, peak


@dataclass(frozen=True)
class Target:
    """One of the performance targets, checked on a bench table."""

    name: str
    measured: float
    limit: float

    @property
    def holds(self) -> bool:
        """Whether the measured ratio is within the limit."""
        return self.measured <= self.limit


# Issue 13's targets: sp against the plain loop (flushing too) per batch size, dynhp against hp, and at batch 512
# every case against its FLOP limit.
SP_VS_PLAIN = {16: 0.6, 100: 0.9, 512: 1.0}
DYNHP_VS_HP = 1.05
FLOP_LIMIT_BATCH = 512
VS_FLOP_LIMIT = 1.2


def targets(frame: pd.DataFrame) -> list[Target]:
    """The targets of the performance issues, as measured ratios against their limits (those whose batch sizes
    the table holds)."""
    t = frame.set_index(["case", "batch_size"])["epoch_s"]
    limit = frame.set_index(["case", "batch_size"])["vs_flop_limit"]
    sizes = sorted(int(b) for b in frame["batch_size"].unique())
    out = [Target(f"sp ≤ {SP_VS_PLAIN[b]} × plain, batch {b}", t["sp", b] / t["plain", b], SP_VS_PLAIN[b])
           for b in sizes if b in SP_VS_PLAIN]  # fmt: skip
    out += [Target(f"dynhp ≤ {DYNHP_VS_HP} × hp, batch {b}", t["dynhp", b] / t["hp", b], DYNHP_VS_HP) for b in sizes]
    if FLOP_LIMIT_BATCH in sizes:
        for case in CASES:
            out.append(
                Target(
                    f"{case} ≤ {VS_FLOP_LIMIT} × FLOP limit, batch {FLOP_LIMIT_BATCH}",
                    float(limit[case, FLOP_LIMIT_BATCH]),
                    VS_FLOP_LIMIT,
                )
            )
    return out


def train_peak_rss_bytes(data_dir: Path, *, dataset: str = "mnist", threads: int | None = None) -> dict[str, int]:
    """Peak resident memory of a real `train` (one SP epoch at batch 512), in a fresh process, beside that
    of a process that only imports torch (most of a CUDA build's footprint is its libraries)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "dynhp_bench", "train", "--dataset", dataset, "--strategy", "sp",
                   "--epochs", "1", "--data-dir", str(data_dir), "--out", out, "--quiet",
                   "--device", "cpu"]  # fmt: skip
        if threads is not None:
            command += ["--threads", str(threads)]
        subprocess.run(command, check=True, capture_output=True, text=True)
        summary = json.loads(next(Path(out).glob("runs/*/summary.json")).read_text())
    probe = "import torch; from dynhp_bench.training.record import peak_rss_bytes; print(peak_rss_bytes())"
    baseline = int(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout)
    return {"train_peak_rss_bytes": int(summary["peak_rss_bytes"]), "import_torch_rss_bytes": baseline}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
