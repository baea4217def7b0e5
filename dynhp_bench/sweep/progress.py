"""What the sweep's display and summary read: trial counts, running runs and per-group results, from the studies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from dynhp_bench.sweep.spec import ResolvedGroup
from dynhp_bench.sweep.storage import FAILED_ATTR
from dynhp_bench.sweep.worker import REUSED_ATTR, FinishedRuns, WorkerPlan, complete_search_trials, run_ids_of
from dynhp_bench.training.run_folder import EPOCHS_FILE, run_path


@dataclass(frozen=True)
class TrialView:
    """One finished or running trial as the progress display and the summary show it."""

    study: str
    group: str
    param: str
    number: int
    state: str
    value: str
    seed: int | None
    run_ids: tuple[str, ...]
    final_error_pct: float | None
    training_memory_mb: float | None
    note: str
    reused_runs: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Where the sweep stands: trial counts over every group, the running runs and every trial seen."""

    total: int
    done: int
    running: int
    failed: int
    running_runs: tuple[str, ...]
    trials: tuple[TrialView, ...]

    @property
    def left(self) -> int:
        """Trials neither finished nor running."""
        return max(self.total - self.done - self.running, 0)


def snapshot(plan: WorkerPlan, studies: dict[str, optuna.Study]) -> Snapshot:
    """Read the studies once and count done / running / failed / left over the plan's groups (a trial counts as
    done only while its run folders hold their results)."""
    total = done = running = failed = 0
    running_runs: list[str] = []
    views: list[TrialView] = []
    finished = FinishedRuns(plan.runtime.results_root)
    for group in plan.sweep.groups:
        grid = set(group.run_ids)
        group_trials = [t for t in studies[group.study].get_trials(deepcopy=False) if _belongs(t, group, grid)]
        complete = {rid for t in group_trials if finished.holds(t) for rid in run_ids_of(t)}
        live = [t for t in group_trials if t.state == TrialState.RUNNING]
        total += group.size
        failed += sum(t.state == TrialState.FAIL for t in group_trials)
        if group.search is None:
            done += sum(p.run_id in complete for p in group.points)
            running += len({rid for t in live for rid in run_ids_of(t)} - complete)
        else:
            n_complete = len(complete_search_trials(group_trials, finished))
            done += min(n_complete, group.search.trials)
            running += min(len(live), max(group.search.trials - n_complete, 0))
        running_runs += [rid for t in live for rid in run_ids_of(t)]
        views += [_view(group, t) for t in group_trials if t.state != TrialState.WAITING]
    return Snapshot(total, done, running, failed, tuple(running_runs), tuple(views))


def epochs_done(results_root: Path, run_id: str) -> int:
    """Epochs a run has written so far (rows of its epochs.csv)."""
    try:
        with (run_path(results_root, run_id) / EPOCHS_FILE).open("rb") as handle:
            return max(sum(1 for _ in handle) - 1, 0)
    except OSError:
        return 0


@dataclass(frozen=True)
class PointResult:
    """One swept value's outcome: means over its seeds' runs."""

    value: str
    final_error_pct: float
    training_memory_mb: float
    runs: int


@dataclass(frozen=True)
class GroupResult:
    """A group's outcome per swept value, and its best value by error and by training memory."""

    group: ResolvedGroup
    done: int
    points: tuple[PointResult, ...]

    @property
    def best_error(self) -> PointResult | None:
        """The value with the lowest mean final error."""
        return min(self.points, key=lambda p: p.final_error_pct) if self.points else None

    @property
    def least_memory(self) -> PointResult | None:
        """The value with the lowest mean training memory."""
        return min(self.points, key=lambda p: p.training_memory_mb) if self.points else None


def group_results(plan: WorkerPlan, snap: Snapshot) -> list[GroupResult]:
    """Aggregate the COMPLETE trials of each group by swept value (means over seeds; each run counted once)."""
    results = []
    for group in plan.sweep.groups:
        by_value: dict[str, list[TrialView]] = {}
        seen: set[tuple[str, ...]] = set()
        for view in snap.trials:
            if view.study != group.study or view.state != "COMPLETE" or view.run_ids in seen:
                continue
            seen.add(view.run_ids)
            by_value.setdefault(view.value, []).append(view)
        points = tuple(
            PointResult(
                value,
                _mean([v.final_error_pct for v in views]),
                _mean([v.training_memory_mb for v in views]),
                sum(len(v.run_ids) for v in views),
            )
            for value, views in by_value.items()
        )
        results.append(GroupResult(group, sum(len(v) for v in by_value.values()), points))
    return results


def _belongs(trial: FrozenTrial, group: ResolvedGroup, grid: set[str]) -> bool:
    """Whether a trial is one of this grid's points (a study may also hold trials of an earlier, different grid)."""
    ids = set(run_ids_of(trial))
    return bool(ids) and (group.search is not None or bool(ids & grid))


def _view(group: ResolvedGroup, trial: FrozenTrial) -> TrialView:
    attrs = trial.user_attrs
    note = str(attrs.get("error") or attrs.get(FAILED_ATTR) or "")
    if trial.state == TrialState.FAIL and not note:
        note = "its worker stopped sending heartbeats"
    return TrialView(
        study=group.study,
        group=group.name,
        param=group.param,
        number=trial.number,
        state=trial.state.name,
        value=str(attrs.get("value", "")),
        seed=attrs.get("seed"),
        run_ids=tuple(run_ids_of(trial)),
        final_error_pct=attrs.get("final_error_pct"),
        training_memory_mb=attrs.get("training_memory_mb"),
        note=note,
        reused_runs=int(attrs.get(REUSED_ATTR) or 0),
    )


def _mean(values: Sequence[float | None]) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else math.nan
