"""Seconds per training epoch on full MNIST: a plain PyTorch loop against our `Trainer`, side by side.

What it measures
----------------
For each case ``STRATEGY:BATCH`` (default ``sp:512,hp:100,dynhp:16``, the paper's best MNIST settings) two
runs share one process, the same in-memory data and the same thread count:

* **plain**: ``nn.Sequential(Linear(784,300), ReLU, Linear(300,100), ReLU, Linear(100,10))``, Adam
  (lr 1e-3), cross-entropy, batches sliced from a per-epoch ``torch.randperm`` exactly as the trainer
  slices them, followed by one no-grad pass over the 10,000 test images (the trainer evaluates the test
  set inside every epoch, so the plain epoch does too; it costs a few tens of milliseconds);
* **ours**: ``dynhp_bench.train.Trainer(TrainConfig(strategy=S, batch_size=B, dataset="mnist"), ...)``
  timed around ``trainer.run_epoch(epoch, last=False)`` (gate sampling, the L0 + L2 penalty, log α
  clamping, test evaluation, the strategy's pruning and, for ``dynhp``, the gradient-variance statistic
  and its second backward pass). DynHP grows its batch after every epoch; to time it at a fixed batch,
  ``trainer.batch_size`` is reset to ``B`` before each timed epoch. HP and DynHP prune at each epoch's
  end, so their later epochs run on the (slightly) smaller network they would really train; the table
  shows the units left after the last timed epoch, to show how much that is.

The two are interleaved per case (plain, ours, plain, ours, ...) so that machine noise hits both alike.
Each keeps training the same model across its timed epochs, like a real run. Reported: the median
seconds per epoch of each and the ratio ours / plain.

Warm-up: before timing a case, a throw-away plain loop and a throw-away `Trainer` each run one epoch on
the first ``--warmup-examples`` training images (default 2,048; 0 skips it). That pays the one-off costs
(allocator growth, oneDNN/MKL kernel selection, autograd and Python caches) for the exact code paths and
batch size being timed, at a small fraction of a full epoch's cost; the timed models start fresh.

How to run (from the repository root)::

    python benchmarks/epoch_seconds.py                      # the default cases, 2 epochs each
    python benchmarks/epoch_seconds.py --cases sp:512 --epochs 1
    python benchmarks/epoch_seconds.py --epochs 3 --threads 2 --csv results/epoch_seconds.csv

Options: ``--cases``, ``--epochs`` (timed epochs per case), ``--threads`` (default: torch's default),
``--data-dir`` (default ``$DYNHP_DATA``, else ../shared/data), ``--csv PATH``, ``--warmup-examples``,
``--seed``. Run it on a quiet machine: the numbers are wall-clock times. With as many torch threads as
cores, any other busy process makes the thread pool wait for a descheduled thread and single epochs can
come out several times slower (seen on a 2-core box); ``--threads 1`` is far steadier there, and the CSV
records the thread count used.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from dynhp_bench.config import TrainConfig
from dynhp_bench.data import DATA_ENV, Dataset, load_dataset
from dynhp_bench.strategies import STRATEGIES
from dynhp_bench.train import EVAL_CHUNK, Trainer

DEFAULT_CASES = "sp:512,hp:100,dynhp:16"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_WARMUP_EXAMPLES = 2048
CSV_COLUMNS = (
    "case",
    "strategy",
    "batch_size",
    "plain_s",
    "ours_s",
    "ratio",
    "epochs_timed",
    "threads",
    "torch_version",
)

console = Console()


@dataclass(frozen=True)
class Case:
    """One strategy at one (initial) batch size, paired with the plain loop at the same batch size."""

    strategy: str
    batch_size: int

    @property
    def name(self) -> str:
        """The case as written on the command line, e.g. ``sp:512``."""
        return f"{self.strategy}:{self.batch_size}"


@dataclass
class CaseResult:
    """Timings of one case: seconds per timed epoch of each loop, and what our trainer did."""

    case: Case
    plain_s: list[float] = field(default_factory=list)
    ours_s: list[float] = field(default_factory=list)
    plain_steps: int = 0
    ours_steps: int = 0
    active_after: tuple[int, ...] = ()

    @property
    def plain_median(self) -> float:
        """Median seconds per epoch of the plain loop."""
        return statistics.median(self.plain_s)

    @property
    def ours_median(self) -> float:
        """Median seconds per epoch of our trainer (timed around `run_epoch`)."""
        return statistics.median(self.ours_s)

    @property
    def ratio(self) -> float:
        """Ours / plain, of the medians."""
        return self.ours_median / self.plain_median


class PlainLoop:
    """The reference: a bare MLP + Adam + cross-entropy over in-memory tensors, sliced like the trainer."""

    def __init__(self, data: Dataset, batch_size: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(
            nn.Linear(784, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.generator = torch.Generator().manual_seed(seed)
        self.train_x, self.train_y = data.train_x, data.train_y
        self.test_x, self.test_y = data.test_x, data.test_y
        self.batch_size = batch_size

    def run_epoch(self) -> int:
        """One pass over the training set, then the test error (as the trainer does); returns the steps."""
        n = self.train_x.shape[0]
        perm = torch.randperm(n, generator=self.generator)
        self.model.train()
        steps = 0
        for start in range(0, n, self.batch_size):
            index = perm[start : start + self.batch_size]
            xb = self.train_x.index_select(0, index)
            yb = self.train_y.index_select(0, index)
            loss = F.cross_entropy(self.model(xb), yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            steps += 1
        self._test_error_pct()
        return steps

    @torch.no_grad()
    def _test_error_pct(self) -> float:
        self.model.eval()
        wrong = torch.zeros((), dtype=torch.int64)
        for start in range(0, self.test_x.shape[0], EVAL_CHUNK):
            logits = self.model(self.test_x[start : start + EVAL_CHUNK])
            wrong += (logits.argmax(1) != self.test_y[start : start + EVAL_CHUNK]).sum()
        return 100.0 * float(wrong) / self.test_x.shape[0]


def parse_cases(text: str) -> list[Case]:
    """``sp:512,hp:100`` → cases; raises ValueError with a readable message on a bad entry."""
    cases = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        strategy, sep, batch = item.partition(":")
        if not sep or strategy not in STRATEGIES or not batch.isdigit() or int(batch) < 1:
            raise ValueError(
                f"case {item!r} is not valid; expected STRATEGY:BATCH with STRATEGY one of "
                f"{', '.join(STRATEGIES)} and BATCH a positive integer (e.g. sp:512)"
            )
        cases.append(Case(strategy, int(batch)))
    if not cases:
        raise ValueError("--cases is empty; expected e.g. sp:512,hp:100,dynhp:16")
    return cases


def make_config(case: Case, epochs: int, seed: int) -> TrainConfig:
    """The trainer's settings for a case: the package defaults, MNIST, this strategy and batch size."""
    return TrainConfig(strategy=case.strategy, batch_size=case.batch_size, epochs=epochs, seed=seed, dataset="mnist")


def head(data: Dataset, n: int) -> Dataset:
    """The first `n` training images (the test set whole), for the warm-up."""
    return Dataset(data.name, data.train_x[:n], data.train_y[:n], data.test_x, data.test_y)


def warm_up(case: Case, data: Dataset, n_examples: int, seed: int) -> None:
    """One epoch of each loop on the first `n_examples` images, on throw-away models."""
    if n_examples <= 0:
        return
    small = head(data, min(n_examples, data.n_train))
    PlainLoop(small, case.batch_size, seed).run_epoch()
    Trainer(make_config(case, 1, seed), small, torch.device("cpu")).run_epoch(1, last=False)


def time_case(case: Case, data: Dataset, *, epochs: int, warmup_examples: int, seed: int) -> CaseResult:
    """Interleave `epochs` timed epochs of the plain loop and of our trainer (plain first in each pair)."""
    warm_up(case, data, warmup_examples, seed)
    result = CaseResult(case)
    plain = PlainLoop(data, case.batch_size, seed)
    trainer = Trainer(make_config(case, epochs + 1, seed), data, torch.device("cpu"))
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        result.plain_steps = plain.run_epoch()
        result.plain_s.append(time.perf_counter() - started)

        trainer.batch_size = case.batch_size  # DynHP grows it after each epoch; time at the fixed batch
        started = time.perf_counter()
        record = trainer.run_epoch(epoch, last=False)
        result.ours_s.append(time.perf_counter() - started)
        result.ours_steps = record.steps
        console.print(
            f"  {case.name} epoch {epoch}/{epochs}: plain {result.plain_s[-1]:.2f} s, "
            f"ours {result.ours_s[-1]:.2f} s ({record.steps} steps at batch {record.batch_size})"
        )
    result.active_after = tuple(n_in for n_in, _ in trainer.net.shapes)
    return result


def render(results: Sequence[CaseResult], *, epochs: int, threads: int) -> Table:
    """The results as a rich table."""
    table = Table(
        title=f"Seconds per MNIST epoch (median of {epochs}), torch {torch.__version__}, {threads} threads",
        title_justify="left",
    )
    for column in ("case", "plain s", "ours s", "ours / plain", "steps", "units left (in, h1, h2)"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for r in results:
        table.add_row(
            r.case.name,
            f"{r.plain_median:.2f}",
            f"{r.ours_median:.2f}",
            f"{r.ratio:.2f}×",
            f"{r.ours_steps}",
            ", ".join(str(a) for a in r.active_after),
        )
    return table


def write_csv(path: Path, results: Sequence[CaseResult], *, epochs: int, threads: int) -> None:
    """One row per case with the columns of `CSV_COLUMNS`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            writer.writerow(
                [
                    r.case.name,
                    r.case.strategy,
                    r.case.batch_size,
                    f"{r.plain_median:.4f}",
                    f"{r.ours_median:.4f}",
                    f"{r.ratio:.4f}",
                    epochs,
                    threads,
                    torch.__version__,
                ]
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Seconds per full-MNIST training epoch: a plain PyTorch loop against dynhp_bench's Trainer."
    )
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"STRATEGY:BATCH,... (default {DEFAULT_CASES})")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per case and loop (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"MNIST root in torchvision's layout (default ${DATA_ENV}, else {DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--csv", type=Path, default=None, help="also write the results to this CSV file")
    parser.add_argument(
        "--warmup-examples",
        type=int,
        default=DEFAULT_WARMUP_EXAMPLES,
        help=f"images in the untimed warm-up epoch of each case and loop; 0 skips (default {DEFAULT_WARMUP_EXAMPLES})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of both loops (default 0)")
    args = parser.parse_args(argv)
    try:
        args.case_list = parse_cases(args.cases)
    except ValueError as exc:
        parser.error(str(exc))
    if args.epochs < 1:
        parser.error(f"--epochs={args.epochs} is not valid; expected an integer ≥ 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads={args.threads} is not valid; expected an integer ≥ 1")
    if args.warmup_examples < 0:
        parser.error(f"--warmup-examples={args.warmup_examples} is not valid; expected an integer ≥ 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    data_dir = args.data_dir or Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)
    data = load_dataset("mnist", data_dir, download=False)
    console.print(f"MNIST from {data_dir}: {data.n_train} train / {data.n_test} test images")
    console.print(
        f"torch {torch.__version__}, {threads} thread(s), {args.epochs} timed epoch(s) per loop, "
        f"warm-up {args.warmup_examples} images"
    )
    results = []
    for case in args.case_list:
        results.append(time_case(case, data, epochs=args.epochs, warmup_examples=args.warmup_examples, seed=args.seed))
    console.print(render(results, epochs=args.epochs, threads=threads))
    if args.csv is not None:
        write_csv(args.csv, results, epochs=args.epochs, threads=threads)
        console.print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
