"""The worker loop: claim the next point through the study storage, train it with `train`, report it, repeat.

A grid point is finished when its group's study holds a COMPLETE trial for its run id and its run folder holds a
result (COMPLETE marker and a readable summary), checked at every claim: a deleted or damaged run is trained again.
Under the storage's claim lock a worker fails the trials of dead workers, then takes the first point that is neither
finished nor RUNNING anywhere in the plan: it enqueues the point as a WAITING trial and pops it with `ask()` (atomic
in both storages), tags it with its worker id and releases the lock. So each point is trained by one worker at a
time and ends with one COMPLETE trial (one more each time its finished run folder had to be trained again); a point
whose worker died is failed and claimed again, and `train` continues its unfinished run folder from the last
checkpoint (from scratch if none was written yet). Workers that find nothing to claim wait while other trials run
(one of them may still die) and stop when every group is finished.

A search group first retrains the values of its failed (or no longer complete) trials, then asks the sampler for
new ones. A trial that failed because of its data is failed for good for the rest of this sweep command (no worker
claims it again; the next command, after the data is fixed, does).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from dynhp_bench.errors import DataError, SettingsError
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.sweep.spec import Point, ResolvedGroup, Search, Sweep, value_setting
from dynhp_bench.sweep.storage import (
    DEFAULT_HEARTBEAT_S,
    FAILED_ATTR,
    WORKER_ATTR,
    StorageTarget,
    Store,
    open_store,
)
from dynhp_bench.training.run_folder import RunFolder, run_path
from dynhp_bench.training.trainer import Runtime, train

POLL_S = 1.0
DONE = "done"
WAIT = "wait"
FOR_GOOD_ATTR = "failed_for_good_in"  # the sweep command (its session id) in which a trial failed because of its data
RESULT_ATTRS = ("final_error_pct", "training_memory_mb", "model_size_mb")
# Where a trial's run folders live ({"host", "root"}): only a folder this worker can see is checked for its result.
RESULTS_ATTR = "results"
REUSED_ATTR = "reused_runs"  # runs of the trial found complete in the results folder, not trained again


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker process needs: the resolved sweep, the storage and the runtime."""

    sweep: Sweep
    storage: StorageTarget
    runtime: Runtime
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # one sweep command and its workers

    def to_json(self) -> str:
        """The plan as JSON (it holds the storage URL with its password: pass it on a pipe, never print it)."""
        groups = [
            {
                "name": g.name,
                "study": g.study,
                "param": g.param,
                "search": None if g.search is None else _search_json(g.search),
                "points": [{"value": str(p.value), "seed": p.seed, "settings": p.config.to_dict()} for p in g.points],
            }
            for g in self.sweep.groups
        ]
        runtime = self.runtime
        return json.dumps(
            {
                "sweep": {"name": self.sweep.name, "description": self.sweep.description, "groups": groups},
                "storage": self.storage.to_text(),
                "runtime": {
                    "data_dir": None if runtime.data_dir is None else str(runtime.data_dir),
                    "results_root": str(runtime.results_root),
                    "threads": runtime.threads,
                    "workers": runtime.workers,
                    "device": runtime.device,
                    "step": runtime.step,
                },
                "heartbeat_s": self.heartbeat_s,
                "session": self.session,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerPlan:
        """Rebuild a plan from `to_json` output, checking each run id survives the trip."""
        try:
            data = json.loads(text)
            groups = []
            for g in data["sweep"]["groups"]:
                points = tuple(
                    Point(Decimal(p["value"]), p["seed"], TrainConfig.from_dict(p["settings"])) for p in g["points"]
                )
                search = None if g["search"] is None else _search_from_json(g["search"])
                groups.append(ResolvedGroup(g["name"], g["study"], g["param"], points, search))
            sweep = Sweep(data["sweep"]["name"], data["sweep"]["description"], tuple(groups))
            storage_text, runtime = data["storage"], data["runtime"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SettingsError(f"worker plan is not valid ({exc}); expected the JSON a sweep writes") from None
        storage = (
            StorageTarget(url=storage_text) if "://" in storage_text else StorageTarget(journal=Path(storage_text))
        )
        return cls(
            sweep=sweep,
            storage=storage,
            runtime=Runtime(
                data_dir=None if runtime["data_dir"] is None else Path(runtime["data_dir"]),
                results_root=Path(runtime["results_root"]),
                threads=runtime["threads"],
                workers=runtime["workers"],
                device=runtime["device"],
                step=runtime.get("step", "fast"),
            ),
            heartbeat_s=int(data["heartbeat_s"]),
            session=str(data.get("session", "")),
        )


@dataclass
class Claim:
    """A trial this worker holds, and the runs (one per seed for a search trial) it trains."""

    group: ResolvedGroup
    study: optuna.Study
    trial: optuna.Trial
    points: list[Point]


def open_studies(plan: WorkerPlan, store: Store) -> dict[str, optuna.Study]:
    """Create (or load) the study of every group of the plan."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies: dict[str, optuna.Study] = {}
    for group in plan.sweep.groups:
        if group.search is None:
            sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler()  # grid trials fix their values
        elif group.search.sampler == "random":
            sampler = optuna.samplers.RandomSampler()
        else:
            # constant_liar: parallel workers see each other's running trials, so they do not propose one point twice
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = optuna.samplers.TPESampler(constant_liar=True)
        try:  # loading first: a failed create still appends to a journal
            studies[group.study] = optuna.load_study(study_name=group.study, storage=store.storage, sampler=sampler)
        except KeyError:
            studies[group.study] = optuna.create_study(
                study_name=group.study,
                storage=store.storage,
                sampler=sampler,
                direction="minimize",
                load_if_exists=True,
            )
    return studies


def work(plan: WorkerPlan, *, poll_s: float = POLL_S) -> int:
    """Claim and train points until every group of the plan is finished; return how many trials this worker ran."""
    store = open_store(plan.storage, heartbeat_s=plan.heartbeat_s)
    ran = 0
    try:
        studies = open_studies(plan, store)
        with store.alive():
            while True:
                with store.claim_lock():
                    claim = claim_next(plan, studies, store)
                if isinstance(claim, Claim):
                    claim.trial.set_user_attr(RESULTS_ATTR, results_location(plan.runtime.results_root))
                    run_claim(claim, plan.runtime, store, session=plan.session)
                    ran += 1
                elif claim == DONE:
                    return ran
                else:  # other workers' trials are running; one of them may yet die and need a rerun
                    time.sleep(poll_s)
    finally:
        store.close()


def claim_next(plan: WorkerPlan, studies: dict[str, optuna.Study], store: Store) -> Claim | str:
    """Under the claim lock: fail dead workers' trials, then claim the first unfinished, unclaimed point."""
    for study in studies.values():
        store.reap(study)
    trials = {name: study.get_trials(deepcopy=False) for name, study in studies.items()}
    running = {rid for ts in trials.values() for t in ts if t.state == TrialState.RUNNING for rid in run_ids_of(t)}
    failed_for_good = {
        rid for ts in trials.values() for t in ts if failed_for_good_in(t, plan.session) for rid in run_ids_of(t)
    }
    finished = FinishedRuns(plan.runtime.results_root)
    unfinished = False
    for group in plan.sweep.groups:
        study, group_trials = studies[group.study], trials[group.study]
        if group.search is None:
            done = {rid for t in group_trials if finished.holds(t) for rid in run_ids_of(t)}
            for point in group.points:
                if point.run_id in done or point.run_id in failed_for_good:
                    continue
                unfinished = True
                if point.run_id not in running:
                    return _claim_enqueued(study, group, point.value, [point], store)
        else:
            complete = complete_search_trials(group_trials, finished)
            active = sum(t.state == TrialState.RUNNING for t in group_trials)
            if len(complete) >= group.search.trials:
                continue
            unfinished = True
            if len(complete) + active < group.search.trials:
                retry = _values_to_retrain(group, group_trials, complete, running | failed_for_good)
                if retry is not None:
                    points = [p for p in group.points if p.value == retry]
                    return _claim_enqueued(study, group, retry, points, store)
                return _claim_search(study, group, store)
    return WAIT if unfinished else DONE


def results_location(results_root: Path) -> dict[str, str]:
    """This machine and results folder, as recorded on the trials it trains (user attribute ``results``)."""
    return {"host": socket.gethostname(), "root": str(Path(results_root).resolve())}


class FinishedRuns:
    """Whether a COMPLETE trial's runs still hold their results, each folder read once per claim.

    A folder this worker can see (the trial was trained on this host into this results folder, or records no
    location) must hold COMPLETE and a readable summary. A trial trained on another machine, or into another
    results folder, is taken from the storage as it is: its folder is not here to check.
    """

    def __init__(self, results_root: Path) -> None:
        self.results_root = Path(results_root)
        self.here = results_location(self.results_root)
        self.seen: dict[str, bool] = {}

    def __call__(self, run_id: str) -> bool:
        if run_id not in self.seen:
            self.seen[run_id] = RunFolder(run_path(self.results_root, run_id)).has_result()
        return self.seen[run_id]

    def holds(self, trial: FrozenTrial) -> bool:
        """Whether `trial` is COMPLETE and its runs count as done."""
        if trial.state != TrialState.COMPLETE:
            return False
        where = trial.user_attrs.get(RESULTS_ATTR)
        if isinstance(where, dict) and where != self.here:
            return True
        return all(self(r) for r in run_ids_of(trial))


def complete_search_trials(trials: list[FrozenTrial], finished: FinishedRuns) -> list[FrozenTrial]:
    """A search group's COMPLETE trials whose runs count as done (`FinishedRuns.holds`)."""
    return [t for t in trials if finished.holds(t)]


def failed_for_good_in(trial: FrozenTrial, session: str) -> bool:
    """Whether `trial` failed because of its data during sweep command `session` (not to be claimed again in it)."""
    return trial.state == TrialState.FAIL and trial.user_attrs.get(FOR_GOOD_ATTR) == session


def _values_to_retrain(
    group: ResolvedGroup, trials: list[FrozenTrial], complete: list[FrozenTrial], excluded: set[str]
) -> Decimal | None:
    """The first value a search drew whose trial failed or lost its runs, not done since nor running now."""
    done = {str(t.user_attrs.get("value")) for t in complete}
    for trial in trials:
        value = trial.user_attrs.get("value")
        if trial.state not in (TrialState.FAIL, TrialState.COMPLETE) or value is None or str(value) in done:
            continue
        if any(rid in excluded for rid in run_ids_of(trial)):
            continue
        matches = [p.value for p in group.points if str(p.value) == str(value)]
        if matches:
            return matches[0]
    return None


def run_claim(claim: Claim, runtime: Runtime, store: Store, *, session: str = "") -> None:
    """Train the claimed runs and report the trial: COMPLETE with the final error, or FAIL with the error."""
    summaries = []
    reused = 0
    with store.heartbeat(claim.trial):
        try:
            for point in claim.points:
                # Two search trials may draw the same point: one trains it (holding the run folder's writer lock),
                # the other waits for the lock, then finds it complete.
                result = train(point.config, runtime, wait=True)
                summaries.append(result.summary)
                reused += result.skipped
        except BaseException as exc:  # an interrupt or an error: the trial fails, its point is claimed again
            if isinstance(exc, DataError):  # training it again fails the same way until the data is fixed
                with contextlib.suppress(Exception):
                    claim.trial.set_user_attr(FOR_GOOD_ATTR, session)
            _finish_quietly(
                claim, "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            )
            raise
    # If another worker took this trial for dead (missed heartbeats) and failed it, the point is claimed again
    # there, and `train` finds the run folder complete wherever it shares this results folder.
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, ValueError):
        for key in RESULT_ATTRS:
            claim.trial.set_user_attr(key, sum(s[key] for s in summaries) / len(summaries))
        claim.trial.set_user_attr(REUSED_ATTR, reused)
        claim.study.tell(claim.trial, sum(s["final_error_pct"] for s in summaries) / len(summaries))


def run_ids_of(trial: FrozenTrial) -> list[str]:
    """The run ids a trial trains: ``run_id`` (grid) or ``run_ids`` (a search trial, one per seed)."""
    if "run_id" in trial.user_attrs:
        return [trial.user_attrs["run_id"]]
    return list(trial.user_attrs.get("run_ids", []))


def _claim_enqueued(
    study: optuna.Study, group: ResolvedGroup, value: Decimal, points: list[Point], store: Store
) -> Claim:
    """Claim exactly `points` (a grid point, or a search value to train again) through the study's queue."""
    attrs: dict[str, Any] = {"group": group.name, "value": str(value)}
    if group.search is None:
        attrs |= {"run_id": points[0].run_id, "seed": points[0].seed}
    else:
        attrs["run_ids"] = [p.run_id for p in points]
    study.enqueue_trial({group.param: value_setting(group.param, value)}, user_attrs=attrs)
    while True:
        trial = _ask(study)
        if run_ids_of(trial) == [p.run_id for p in points]:
            break
        # A queue entry left by a worker that stopped between enqueueing and popping it: retire it.
        trial.set_user_attr(FAILED_ATTR, "left in the queue by a worker that stopped")
        study.tell(trial, state=TrialState.FAIL)
    _suggest(trial, group, value)
    _tag(trial, store)
    return Claim(group, study, trial, points)


def _claim_search(study: optuna.Study, group: ResolvedGroup, store: Store) -> Claim:
    trial = _ask(study)
    value = _suggest(trial, group, None)
    points = [p for p in group.points if p.value == value]
    trial.set_user_attr("group", group.name)
    trial.set_user_attr("value", str(value))
    trial.set_user_attr("run_ids", [p.run_id for p in points])
    _tag(trial, store)
    return Claim(group, study, trial, points)


def _suggest(trial: optuna.Trial, group: ResolvedGroup, value: Decimal | None) -> Decimal:
    """Record the swept value as the trial's parameter; for a search trial, draw it and snap it onto the grid."""
    values = sorted({p.value for p in group.points})
    search: Search | None = group.search
    if isinstance(value_setting(group.param, values[0]), int):
        step = int(search.step) if search else 1
        drawn: float = trial.suggest_int(group.param, int(values[0]), int(values[-1]), step=step)
    else:
        step_f = float(search.step) if search else None
        drawn = trial.suggest_float(group.param, float(values[0]), float(values[-1]), step=step_f)
    if value is not None:
        return value
    return min(values, key=lambda v: abs(float(v) - drawn))  # the sampler's float, back onto the exact grid


def _tag(trial: optuna.Trial, store: Store) -> None:
    store.first_heartbeat(trial)
    trial.set_user_attr(WORKER_ATTR, store.tag.as_attr())


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def _finish_quietly(claim: Claim, error: str) -> None:
    try:
        claim.trial.set_user_attr("error", error[:300])
        claim.study.tell(claim.trial, state=TrialState.FAIL)
    except Exception:  # the storage itself may be what failed; the trial is then reaped as dead later
        pass


def _search_json(search: Search) -> dict[str, Any]:
    return {
        "trials": search.trials,
        "sampler": search.sampler,
        "low": str(search.low),
        "high": str(search.high),
        "step": str(search.step),
    }


def _search_from_json(data: dict[str, Any]) -> Search:
    return Search(data["trials"], data["sampler"], Decimal(data["low"]), Decimal(data["high"]), Decimal(data["step"]))
