"""How many torch threads a run gets when `--threads` is not given: never more than the cores that are free.

The rule, in one place (`default_threads`):

1. A batch smaller than `SMALL_BATCH` gets 1 thread. Its matrices are too small for a second thread to pay
   for the wait on it, and when any other process runs, a torch thread pool that waits on a descheduled
   thread is many times slower (measured in docs/performance.md: 40 s instead of 0.9 s per smoke epoch).
2. Otherwise the usable cores (`os.sched_getaffinity`, which honours `taskset` and container CPU sets) are
   split between the worker processes (`workers × threads ≤ cores`), and, on a busy machine, only the cores
   other processes leave free count (the 1-minute load average, rounded, taken as busy cores).
3. Never fewer than 1.

`--threads N` overrides it (a sweep splits N between its workers).
"""

from __future__ import annotations

import os

from dynhp_bench.errors import SettingsError

SMALL_BATCH = 256


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def busy_cores() -> float:
    """Cores other processes keep busy: the 1-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads(
    *, batch_size: int | None, workers: int = 1, cores: int | None = None, load: float | None = None
) -> int:
    """Torch threads for one of `workers` processes training at `batch_size` (None: not known yet)."""
    if batch_size is not None and batch_size < SMALL_BATCH:
        return 1
    cores = usable_cores() if cores is None else cores
    load = busy_cores() if load is None else load
    free = max(cores - round(load), 1)
    return max(1, min(cores, free) // max(workers, 1))


def check_threads(threads: int | None) -> None:
    """Refuse a thread count below 1 or above the usable cores (more threads than cores only wait on each other)."""
    if threads is None:
        return
    cores = usable_cores()
    if not 1 <= threads <= cores:
        raise SettingsError(
            f"--threads={threads} is not valid; expected an integer from 1 to {cores} (the cores this process may use)"
        )


def split_threads(threads: int, workers: int) -> int:
    """An explicit `--threads` total split between `workers` processes, at least 1 each."""
    return max(1, threads // max(workers, 1))
