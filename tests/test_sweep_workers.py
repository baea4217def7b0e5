"""Sweeps with real worker processes: a SIGKILL mid-trial loses nothing finished and a rerun finishes the grid
(journal storage), `reproduce`, and PostgreSQL with two workers (skipped unless DYNHP_TEST_POSTGRES_URL is set;
`.ci/run` starts a server and sets it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import dynhp_bench
from dynhp_bench.cli.commands import main
from dynhp_bench.sweep import PAPER_SWEEPS, mask_url
from dynhp_bench.sweep.storage import FAILED_ATTR, WORKER_ATTR, JournalStore, PostgresStore
from dynhp_bench.training.run_folder import COMPLETE_MARKER, EPOCHS_FILE, RUNS_DIR

POSTGRES_URL = os.environ.get("DYNHP_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="DYNHP_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)"
)
EPOCHS = 12  # SP at batch 8 on 256 images: about 0.1 s an epoch, so a kill lands mid-run
DEADLINE_S = 120


def _cli(argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(dynhp_bench.__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "dynhp_bench", *argv],
        env=env,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def _grid_argv(data: Path, out: Path, values: list[str], *extra: str) -> list[str]:
    return ["sweep", "lambda", "--values", ",".join(values), "--strategy", "sp", "--batch-size", "8",
            "--profile", "smoke", "--subset", "256", "--epochs", str(EPOCHS), "--data-dir", str(data),
            "--out", str(out), *extra]  # fmt: skip


def _runs(out: Path) -> dict[str, Path]:
    runs = out / RUNS_DIR
    return {p.name: p for p in runs.iterdir() if p.is_dir()} if runs.is_dir() else {}


def _epochs_written(run: Path) -> int:
    try:
        return len((run / EPOCHS_FILE).read_text().splitlines()) - 1
    except OSError:
        return 0


def _wait_for(condition, process: subprocess.Popen[str], what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert process.poll() is None, f"the sweep ended before {what}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _trials(store: JournalStore | PostgresStore, sweep: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """Every trial of every study (of sweep `sweep`: its studies are named SWEEP.GROUP.PROFILE)."""
    names = [
        s.study_name for s in store.storage.get_all_studies() if sweep is None or s.study_name.startswith(f"{sweep}.")
    ]
    return [t for name in names for t in optuna.load_study(study_name=name, storage=store.storage).trials]


def _check_exactly_once(trials: list[optuna.trial.FrozenTrial], grid: set[str]) -> Counter[str]:
    complete = Counter(t.user_attrs["run_id"] for t in trials if t.state == TrialState.COMPLETE)
    assert set(complete) == grid and set(complete.values()) == {1}, complete
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return Counter(t.user_attrs["run_id"] for t in trials if t.state == TrialState.FAIL)


def test_a_sigkilled_sweep_keeps_finished_runs_and_a_rerun_finishes_the_grid(
    synthetic_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    values = ["0.01", "0.02", "0.05", "0.1"]
    first = _cli([*_grid_argv(synthetic_root, out, values), "--workers", "1"], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def one_done_one_half_way() -> tuple[list[str], str] | None:
        runs = _runs(out)
        done = [n for n, p in runs.items() if (p / COMPLETE_MARKER).is_file()]
        partial = [n for n, p in runs.items() if n not in done and _epochs_written(p) >= 2]
        return (done, partial[0]) if done and partial else None

    done, killed = _wait_for(one_done_one_half_way, first, "one run complete and another half-way")
    os.killpg(first.pid, signal.SIGKILL)  # the whole command: monitor and worker
    first.wait()
    finished_at = {n: (_runs(out)[n] / "summary.json").stat().st_mtime_ns for n in done}
    assert _epochs_written(_runs(out)[killed]) < EPOCHS

    rerun = _cli([*_grid_argv(synthetic_root, out, values), "--workers", "2"], stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)  # fmt: skip
    stdout, stderr = rerun.communicate(timeout=DEADLINE_S)
    assert rerun.returncode == 0, stderr
    runs = _runs(out)
    assert len(runs) == 4 and all((p / COMPLETE_MARKER).is_file() for p in runs.values())
    assert _epochs_written(runs[killed]) == EPOCHS  # restarted from scratch, not appended to
    for name, mtime in finished_at.items():  # finished runs are not trained again
        assert (runs[name] / "summary.json").stat().st_mtime_ns == mtime
    store = JournalStore(out / "study.journal")
    try:
        trials = _trials(store)
    finally:
        store.close()
    failed = _check_exactly_once(trials, set(runs))
    assert failed == Counter({killed: 1})
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert "ended without finishing it" in dead.user_attrs[FAILED_ATTR]
    assert f"resuming: {len(done)} of 4 trials already done" in stderr  # one plain line per trial off a terminal
    assert stderr.count(" complete  mnist-sp: lambda=") == 4 - len(done) and stderr.count("trial failed") == 1
    assert "4 of 4 trials done" in stdout


def test_reproduce_runs_every_paper_sweep_file_and_says_where_the_runs_are(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweeps, out = tmp_path / "sweeps", tmp_path / "results"
    sweeps.mkdir()
    for index, name in enumerate(PAPER_SWEEPS):
        batch = 32 if index < 2 else 64  # two files share one run, as the paper's tables and figures do
        (sweeps / f"{name}.toml").write_text(
            f'[sweep]\nname = "{name}"\n[[groups]]\nname = "sp"\nparam = "batch_size"\n'
            f"values = [{batch}, {100 + index}]\n"
            'settings = { strategy = "sp", subset = 128, epochs = 1 }\n'
        )
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "--profile", "smoke", "--sweeps-dir", str(sweeps), "--data-dir", str(synthetic_root),
              "--out", str(out), "--workers", "2"])  # fmt: skip
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    runs = _runs(out)
    assert len(runs) == 2 + 4 and all((p / COMPLETE_MARKER).is_file() for p in runs.values())
    assert all("-e1-" in name for name in runs)
    assert f"6 runs of the smoke profile are in {out.resolve() / 'runs'}" in " ".join(captured.out.split())


@needs_postgres
def test_two_machines_on_postgres_train_every_point_exactly_once(synthetic_root: Path, tmp_path: Path) -> None:
    assert POSTGRES_URL is not None
    values = [f"0.0{i}" for i in range(1, 9)]
    name = f"pg-{uuid.uuid4().hex[:8]}"
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]  # separate results folders, as on two machines
    extra = ["--epochs", "2", "--workers", "1", "--storage", POSTGRES_URL, "--name", name]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    commands = [_cli([*_grid_argv(synthetic_root, out, values), *extra], **pipes) for out in outs]
    for command in commands:
        stdout, stderr = command.communicate(timeout=DEADLINE_S)
        assert command.returncode == 0, stderr
        assert POSTGRES_URL not in stdout + stderr and mask_url(POSTGRES_URL) in stdout + stderr
    trained = [set(_runs(out)) for out in outs]
    assert not trained[0] & trained[1], "no point is trained on both machines"
    assert len(trained[0] | trained[1]) == 8
    store = PostgresStore(POSTGRES_URL, heartbeat_s=1)
    try:
        trials = _trials(store, name)
    finally:
        store.close()
    assert _check_exactly_once(trials, trained[0] | trained[1]) == Counter()


@needs_postgres
def test_a_killed_workers_point_is_rerun_by_the_other_worker_on_postgres(synthetic_root: Path, tmp_path: Path) -> None:
    assert POSTGRES_URL is not None
    out = tmp_path / "results"
    values = ["0.01", "0.02", "0.05", "0.1"]
    name = f"pg-{uuid.uuid4().hex[:8]}"
    command = _cli([*_grid_argv(synthetic_root, out, values), "--workers", "2", "--storage", POSTGRES_URL,
                    "--name", name, "--heartbeat-s", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    store = PostgresStore(POSTGRES_URL, heartbeat_s=1)
    try:
        study_name = f"{name}.mnist-sp.smoke"

        def a_worker_half_way() -> tuple[int, str] | None:
            if study_name not in {s.study_name for s in store.storage.get_all_studies()}:
                return None
            study = optuna.load_study(study_name=study_name, storage=store.storage)
            for trial in study.get_trials(states=(TrialState.RUNNING,)):
                run = _runs(out).get(trial.user_attrs.get("run_id", ""))
                if WORKER_ATTR in trial.user_attrs and run is not None and _epochs_written(run) >= 2:
                    return trial.user_attrs[WORKER_ATTR]["pid"], trial.user_attrs["run_id"]
            return None

        pid, killed = _wait_for(a_worker_half_way, command, "a trial half-way")
        os.kill(pid, signal.SIGKILL)  # one worker only: the other carries on
        _, stderr = command.communicate(timeout=DEADLINE_S)
        trials = optuna.load_study(study_name=study_name, storage=store.storage).trials
    finally:
        store.close()
    assert command.returncode == 0, stderr
    assert f"worker {pid} was ended by signal 9" in stderr
    runs = _runs(out)
    assert len(runs) == 4 and all((p / COMPLETE_MARKER).is_file() for p in runs.values())
    assert _epochs_written(runs[killed]) == EPOCHS
    assert _check_exactly_once(trials, set(runs)) == Counter({killed: 1})


def _open_at_once(url: str, barrier: Any, results: Any) -> None:
    from dynhp_bench.sweep.storage import open_store, parse_storage

    target = parse_storage(url, Path("."))
    barrier.wait()
    try:
        open_store(target).close()
        results.put("ok")
    except Exception as exc:  # the outcome is the assertion's business
        results.put(f"failed: {exc}")


@needs_postgres
def test_workers_opening_a_fresh_database_at_the_same_moment_all_succeed() -> None:
    """Optuna creates its tables on first opening; simultaneous first openings used to collide (fixed by an
    advisory lock). Four processes open each of three fresh databases behind a barrier."""
    import multiprocessing

    import sqlalchemy

    assert POSTGRES_URL is not None
    admin = sqlalchemy.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    context = multiprocessing.get_context("spawn")
    outcomes = []
    for _ in range(3):
        database = f"fresh_{uuid.uuid4().hex[:10]}"
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
        url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{database}"
        barrier, results = context.Barrier(4), context.Queue()
        processes = [context.Process(target=_open_at_once, args=(url, barrier, results)) for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
        outcomes += [results.get(timeout=10) for _ in processes]
    admin.dispose()
    assert outcomes == ["ok"] * 12, [o for o in outcomes if o != "ok"]
