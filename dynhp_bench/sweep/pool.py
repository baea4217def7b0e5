"""Local worker processes: start K of them on one plan, watch the studies while they run, stop them on an interrupt.

Each worker is a separate Python process (``python -m dynhp_bench sweep-worker``) that reads its plan as JSON on
stdin (the plan may hold a storage password, which therefore never appears on a command line). The pool itself
trains nothing: it reads the studies every `poll_s` seconds and hands a `Snapshot` to the caller's display.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dynhp_bench
from dynhp_bench.data.datasets import check_dataset, dataset_folder, dataset_spec, load_dataset, resolve_data_dir
from dynhp_bench.errors import DataError
from dynhp_bench.sweep.progress import Snapshot, snapshot
from dynhp_bench.sweep.spec import Sweep
from dynhp_bench.sweep.storage import Store, open_store
from dynhp_bench.sweep.worker import WorkerPlan, open_studies

POLL_S = 0.5
STOP_WAIT_S = 15.0
WORKER_MEMORY_BYTES = 570 * 2**20  # peak resident memory of one worker training MNIST (`bench --memory`)
GRACE_S = 5.0  # a worker's clean stop (finish the step, fail the trial) before it is interrupted again


@dataclass(frozen=True)
class WorkerExit:
    """How one worker process ended: its pid and exit status (negative: the signal that ended it)."""

    pid: int
    returncode: int


@dataclass(frozen=True)
class PoolOutcome:
    """The sweep's state after every local worker ended, and how each ended."""

    final: Snapshot
    exits: tuple[WorkerExit, ...]


def check_data(sweep: Sweep, data_dir: Path | None) -> None:
    """Make sure every dataset the sweep trains on is there (downloading it if missing and online), whole and
    consistent (`check_dataset`), and large enough for the runs' ``subset``, before anything is written; the errors
    are the one-line `DataError`s of `train`."""
    root = resolve_data_dir(data_dir)
    for name in sorted({p.config.dataset for p in sweep.points}):
        folder = dataset_folder(root, name)
        if not all((folder / f).is_file() for f in dataset_spec(name).files):
            load_dataset(name, root)
        n_train = check_dataset(name, root)
        subset = max((p.config.subset or 0) for p in sweep.points if p.config.dataset == name)
        if subset > n_train:
            raise DataError(f"--subset={subset} is larger than the {n_train} training images of {name}")


def max_workers() -> tuple[int, str]:
    """The most local workers this machine runs well, and why: each needs a core and about `WORKER_MEMORY_BYTES`
    (torch, the dataset and a run), so no more than twice the cores nor what the available memory holds."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    available = _available_memory_bytes()
    by_memory = available // WORKER_MEMORY_BYTES if available is not None else 2 * cores
    bound = max(1, min(2 * cores, by_memory))
    memory = f"{available / 2**30:.1f} GiB available" if available is not None else "memory unknown"
    why = (
        f"each worker needs about {WORKER_MEMORY_BYTES // 2**20} MiB and a share of the cores: "
        f"{cores} core(s) allow {2 * cores}, {memory}"
    )
    return bound, why


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_pool(
    plan: WorkerPlan,
    *,
    workers: int,
    on_update: Callable[[Snapshot], None],
    poll_s: float = POLL_S,
) -> PoolOutcome:
    """Create the studies, start `workers` worker processes and report progress until all of them have ended."""
    store: Store = open_store(plan.storage, heartbeat_s=plan.heartbeat_s)
    try:
        studies = open_studies(plan, store)
        first = snapshot(plan, studies)
        if first.done >= first.total:  # nothing left: no need to start a worker
            on_update(first)
            return PoolOutcome(first, ())
        processes = [_start(plan) for _ in range(workers)]
        try:
            while any(p.poll() is None for p in processes):
                on_update(snapshot(plan, studies))
                time.sleep(poll_s)
        except KeyboardInterrupt:
            _stop(processes)
            raise
        final = snapshot(plan, studies)
        on_update(final)
        return PoolOutcome(final, tuple(WorkerExit(p.pid, p.returncode) for p in processes))
    finally:
        store.close()


def _start(plan: WorkerPlan) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    # Workers import the same dynhp_bench as this process, wherever it comes from.
    source = str(Path(dynhp_bench.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen([sys.executable, "-m", "dynhp_bench", "sweep-worker"], stdin=subprocess.PIPE, env=env)
    assert process.stdin is not None
    process.stdin.write(plan.to_json().encode())
    process.stdin.close()
    return process


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Interrupt the workers (each fails its trial so the point is claimed again), then wait; kill stragglers."""
    # On a terminal, Ctrl-C has reached the workers already; give them a moment before interrupting them again.
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(p.poll() is None for p in processes):
        time.sleep(0.1)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_WAIT_S
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
