"""Sweeps: exact grids and sampler searches over one parameter, run by workers that share an Optuna study storage.

* `spec`: sweep files and command-line sweeps → groups → resolved points (run ids exactly `train`'s);
* `storage`: the journal file (default) or PostgreSQL, the claim lock, worker liveness and heartbeats;
* `worker`: the claim → train → tell loop;
* `progress`: trial counts, running runs and per-group results read from the studies;
* `pool`: K local worker processes and the loop that watches them.
"""

from dynhp_bench.sweep.pool import PoolOutcome, WorkerExit, check_data, max_workers, run_pool
from dynhp_bench.sweep.progress import GroupResult, Snapshot, TrialView, epochs_done, group_results, snapshot
from dynhp_bench.sweep.spec import (
    COMPETITOR_SWEEPS,
    PAPER_SWEEPS,
    SWEEPABLE,
    SWEEPS_DIR,
    Group,
    Point,
    ResolvedGroup,
    Sweep,
    SweepSpec,
    combine,
    command_line_spec,
    expand,
    parse_range,
    parse_seeds,
    parse_values,
    range_points,
    read_sweep_file,
)
from dynhp_bench.sweep.storage import StorageTarget, check_storage, mask_url, open_store, parse_storage
from dynhp_bench.sweep.worker import WorkerPlan, work

__all__ = [
    "COMPETITOR_SWEEPS",
    "PAPER_SWEEPS",
    "SWEEPABLE",
    "SWEEPS_DIR",
    "Group",
    "GroupResult",
    "Point",
    "PoolOutcome",
    "ResolvedGroup",
    "Snapshot",
    "StorageTarget",
    "Sweep",
    "SweepSpec",
    "TrialView",
    "WorkerExit",
    "WorkerPlan",
    "check_data",
    "check_storage",
    "combine",
    "command_line_spec",
    "epochs_done",
    "expand",
    "group_results",
    "mask_url",
    "max_workers",
    "open_store",
    "parse_range",
    "parse_seeds",
    "parse_storage",
    "parse_values",
    "range_points",
    "read_sweep_file",
    "run_pool",
    "snapshot",
    "work",
]
