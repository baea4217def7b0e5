"""Time the README's example commands as a user runs them, and say on what machine and under what load.

Every wall time the README quotes ("How long things take", and the times beside its examples) comes from this
script. Each case runs one of the README's commands as its own process, start-up included, into a fresh results
folder of its own (`report` and `check` into the one the smoke reproduction wrote, which they read), and records
the wall time, the exit status and the 1-minute load average sampled every 5 s while it ran. It prints the machine
(CPU model, usable cores, memory, GPU or none, Python and torch), then one Markdown row per case, for the README.

Run it from the checkout, with MNIST and Fashion-MNIST under $DYNHP_DATA (or --data-dir):

    python benchmarks/readme_times.py                          # the cheap cases, in README order (minutes)
    python benchmarks/readme_times.py --only quick_train       # some cases (names below)
    python benchmarks/readme_times.py --all                    # every case (hours: the paper-profile sweep)
    python benchmarks/readme_times.py --list                   # the cases and their commands

The CIFAR-10 and ResNet cases train on synthetic CIFAR-size images the script writes first (the timing leaves the
writing out). `--keep DIR` keeps the results folders and the logs (e.g. to look at the smoke reproduction's
report), `--csv FILE` also writes the table as CSV. A case that needs an earlier one (report, check) runs it first
when it is not selected. Times depend on what else the machine runs: quote them with the load the script printed.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOAD_SAMPLE_S = 5.0


@dataclass(frozen=True)
class Case:
    """One README command: its name, what it runs (``{results}`` is the shared results folder) and its cost."""

    name: str
    what: str
    argv: tuple[str, ...]
    cheap: bool
    needs: str | None = None
    module: str = "dynhp_bench"
    synthetic: str | None = None  # a dataset the script writes (50,000 + 10,000 images) and runs the case on
    fresh_cache: bool = False  # run with an empty $XDG_CACHE_HOME (the compiled loops are built again)


CASES = (
    Case("suite", "python -m pytest (the whole suite)", ("-q", "-p", "no:cacheprovider"), False, module="pytest"),
    Case("compile", "the fast step's compiled loops, built at first use (an empty cache)",
         ("-c", "import time; from dynhp_bench import kernels; t = time.perf_counter(); k = kernels.load(); "
          "print(f'compiled in {time.perf_counter() - t:.2f} s' if k else kernels.unavailable_reason())"), True,
         module="", fresh_cache=True),
    Case("smoke_train", "dynhp-bench train --profile smoke", ("train", "--profile", "smoke", "--out", "{results}"),
         True),
    Case("quick_train", "dynhp-bench train --dataset mnist --strategy dynhp (quick: 20 epochs of full MNIST)",
         ("train", "--dataset", "mnist", "--strategy", "dynhp", "--quiet", "--out", "{results}"), True),
    Case("smoke_reproduce", "dynhp-bench reproduce --profile smoke --workers 1 --threads 1 (48 trials, 44 runs)",
         ("reproduce", "--profile", "smoke", "--workers", "1", "--threads", "1", "--quiet", "--out", "{results}"),
         True),
    Case("report", "dynhp-bench report --paper-tables on those runs",
         ("report", "--paper-tables", "--results", "{results}"), True, needs="smoke_reproduce"),
    Case("check", "dynhp-bench check --baseline results/baseline_smoke.json on those runs",
         ("check", "--baseline", str(ROOT / "results" / "baseline_smoke.json"), "--results", "{results}"), True,
         needs="smoke_reproduce"),
    Case("plan_quick", "dynhp-bench reproduce --profile quick --workers 2 --plan-only (the estimate of 44 runs)",
         ("reproduce", "--profile", "quick", "--workers", "2", "--plan-only", "--out", "{results}"), True),
    Case("quick_reproduce", "dynhp-bench reproduce --profile quick --workers 2 (48 trials, 44 runs of 20 epochs)",
         ("reproduce", "--profile", "quick", "--workers", "2", "--quiet", "--out", "{results}"), False),
    Case("bench", "dynhp-bench bench --threads 1 --no-memory --reference",
         ("bench", "--threads", "1", "--no-memory", "--reference", "--out", "{results}"), False),
    Case("paper_table2", "dynhp-bench sweep --file sweeps/table2_mnist.toml --profile paper --workers 2",
         ("sweep", "--file", str(ROOT / "sweeps" / "table2_mnist.toml"), "--profile", "paper", "--workers", "2",
          "--quiet", "--out", "{results}"), False),
    *(Case(f"cifar10_{strategy}", f"dynhp-bench train --dataset cifar10 --strategy {strategy} --epochs 1 on 50,000 "
           "synthetic CIFAR-size images", ("train", "--dataset", "cifar10", "--strategy", strategy, "--epochs", "1",
           "--quiet", "--out", "{results}"), False, synthetic="cifar10") for strategy in ("sp", "hp", "dynhp")),
    *(Case(f"resnet20_{strategy}", f"dynhp-bench train --dataset cifar10 --arch resnet20 --strategy {strategy} "
           "--epochs 1 --threads 1 on 50,000 synthetic CIFAR-size images", ("train", "--dataset", "cifar10", "--arch",
           "resnet20", "--strategy", strategy, "--epochs", "1", "--batch-size", "128",
           "--threads", "1", "--quiet", "--out", "{results}"), False, synthetic="cifar10")
      for strategy in ("sp", "hp", "dynhp")),
)  # fmt: skip
BY_NAME = {case.name: case for case in CASES}


@dataclass(frozen=True)
class Timing:
    """What one case took: wall seconds, exit status, the load average seen while it ran, the output's last line."""

    case: Case
    wall_s: float
    returncode: int
    load_min: float
    load_max: float
    summary: str


def machine() -> str:
    """The machine in one line: CPU model, usable cores, memory, GPU (or none), Python, torch, date."""
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        cpu = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    try:
        total = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory = f", {int(total.split()[1]) / 2**20:.0f} GiB memory"
    except (OSError, StopIteration, ValueError):
        pass
    import torch  # only for its version and whether a GPU is there

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {cores} usable core(s){memory}, {gpu}; Python {platform.python_version()}, torch {torch.__version__}; "
        f"{datetime.date.today().isoformat()}"
    )


def clock(seconds: float) -> str:
    """Seconds as the README writes them: 47 s, 13 min 48 s, 1 h 02 min."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole // 60 % 60:02d} min"


def synthetic_root(name: str, work: Path) -> Path:
    """A data root holding a synthetic `name` of 50,000 training and 10,000 test images (written once per run)."""
    root = work / f"synthetic-{name}"
    if not root.exists():
        sys.path.insert(0, str(ROOT))
        from dynhp_bench.data.datasets import write_synthetic_dataset

        write_synthetic_dataset(root, name, n_train=50_000, n_test=10_000, seed=0)
    return root


def run_case(case: Case, results: Path, data_dir: Path | None, log_dir: Path) -> Timing:
    """Run one case in a fresh process from the checkout, sampling the load average while it runs."""
    module = ["-m", case.module] if case.module else []
    argv = [sys.executable, *module, *(a.replace("{results}", str(results)) for a in case.argv)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    if case.fresh_cache:
        env["XDG_CACHE_HOME"] = str(log_dir / f"cache-{case.name}")
    if case.synthetic is not None:
        data_dir = synthetic_root(case.synthetic, log_dir)
    if data_dir is not None:
        env["DYNHP_DATA"] = str(data_dir)
    loads = [os.getloadavg()[0]]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(LOAD_SAMPLE_S):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log = log_dir / f"{case.name}.log"  # beside the results folders
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        process = subprocess.run(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    wall_s = time.perf_counter() - started
    done.set()
    sampler.join()
    loads.append(os.getloadavg()[0])
    text = log.read_text(encoding="utf-8", errors="replace")
    lines = [line.strip(" │┃┌┐└┘├┤─━") for line in text.splitlines()]
    lines = [line for line in lines if re.search(r"[A-Za-z0-9]", line)]  # not a table's rules
    summary = lines[-1] if lines else ""
    if case.module == "pytest":  # "784 passed, 3 skipped in 297.1s"
        summary = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), "")
    return Timing(case, wall_s, process.returncode, min(loads), max(loads), summary)


def plan(names: list[str]) -> list[Case]:
    """The cases to run in README order, with the ones they need added."""
    wanted = set(names)
    for name in names:
        needs = BY_NAME[name].needs
        while needs is not None:
            wanted.add(needs)
            needs = BY_NAME[needs].needs
    return [case for case in CASES if case.name in wanted]


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the cases, print the machine and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BY_NAME), help="run these cases (and what they need)")
    parser.add_argument("--all", action="store_true", help="run every case, the expensive ones too")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    parser.add_argument("--data-dir", type=Path, default=None, help="data root (default: $DYNHP_DATA)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the results folder here (must not exist)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    options = parser.parse_args(argv)
    if options.list:
        for case in CASES:
            print(f"{case.name:16} {'cheap' if case.cheap else 'expensive':9} {case.what}")
        return 0
    names = options.only or [c.name for c in CASES if options.all or c.cheap]
    if options.keep is not None and options.keep.exists():
        parser.error(f"--keep {options.keep} exists; expected a new folder")
    work = Path(tempfile.mkdtemp(prefix="readme-times-"))
    print(f"machine: {machine()}", flush=True)
    timings = []
    try:
        for case in plan(names):
            print(f"running {case.name}: {case.what} …", flush=True)
            results = work / (case.needs or case.name)  # a case reads the folder of the one it needs
            timing = run_case(case, results, options.data_dir, work)
            timings.append(timing)
            print(f"  {clock(timing.wall_s)} (exit {timing.returncode}, load {timing.load_min:.1f}–"
                  f"{timing.load_max:.1f}): {timing.summary[:120]}", flush=True)  # fmt: skip
    finally:
        print()
        print("| what | wall time | exit | 1-min load average while it ran | last line |")
        print("|---|---|---|---|---|")
        for t in timings:
            print(f"| `{t.case.what}` | {clock(t.wall_s)} | {t.returncode} | {t.load_min:.1f}–{t.load_max:.1f} "
                  f"| {t.summary[:100]} |")  # fmt: skip
        if options.csv is not None:
            with options.csv.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["case", "command", "wall_s", "returncode", "load_min", "load_max", "summary"])
                for t in timings:
                    writer.writerow([t.case.name, t.case.what, f"{t.wall_s:.1f}", t.returncode, f"{t.load_min:.2f}",
                                     f"{t.load_max:.2f}", t.summary])  # fmt: skip
        if options.keep is not None:
            shutil.copytree(work, options.keep, symlinks=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(t.returncode == 0 for t in timings) else 1


if __name__ == "__main__":
    sys.exit(main())
