"""Runs survive interruption: resumed runs equal uninterrupted ones; bad checkpoints and full disks are one line."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from dynhp_bench.cli.commands import main
from dynhp_bench.data.datasets import write_synthetic_dataset
from dynhp_bench.errors import Interrupted, ResultsError
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training import checkpoint as checkpoint_module
from dynhp_bench.training.checkpoint import load_checkpoint, save_checkpoint
from dynhp_bench.training.record import TIMING_COLUMNS
from dynhp_bench.training.run_folder import CHECKPOINT_FILE, COMPLETE_MARKER, INTERRUPTED_MARKER, RunFolder, run_path
from dynhp_bench.training.trainer import Runtime, train

# Prunes (γ above the hidden gates' initial P(z≠0) = 0.83) and grows the batch within a few epochs.
DYNHP = TrainConfig(strategy="dynhp", epochs=6, batch_size=16, gamma=0.84, alpha_bs=0.5)


def _epochs(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "epochs.csv").drop(columns=list(TIMING_COLUMNS))


class _CrashError(Exception):
    pass


def _train_until_crash(config: TrainConfig, runtime: Runtime, *, after_epoch: int) -> None:
    """Train `config` and crash right after epoch `after_epoch` ends (its checkpoint is written by then)."""

    def crash(record: object) -> None:
        if getattr(record, "epoch", 0) == after_epoch:
            raise _CrashError

    with pytest.raises(_CrashError):
        train(config, runtime, on_epoch=crash)


def test_resumed_dynhp_run_equals_the_uninterrupted_one(synthetic_root: Path, tmp_path: Path) -> None:
    reference = train(DYNHP, Runtime(data_dir=synthetic_root, results_root=tmp_path / "ref", threads=1))
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path / "cut", threads=1, checkpoint_every=1)

    _train_until_crash(DYNHP, runtime, after_epoch=3)
    folder = RunFolder(run_path(runtime.results_root, DYNHP.run_id))
    assert not folder.is_complete and folder.checkpoint_path.is_file()
    resumed = train(DYNHP, runtime)
    pd.testing.assert_frame_equal(_epochs(resumed.run_dir), _epochs(reference.run_dir))
    rows = _epochs(reference.run_dir)
    # The cut lies between pruning steps and batch growths on both sides.
    assert (
        rows["model_bytes"].iloc[2] > rows["model_bytes"].iloc[5]
        and rows["model_bytes"].iloc[0] > rows["model_bytes"].iloc[2]
    )
    assert (
        rows["batch_size"].iloc[2] < rows["batch_size"].iloc[5]
        and rows["batch_size"].iloc[0] < rows["batch_size"].iloc[2]
    )
    assert resumed.summary["final_error_pct"] == reference.summary["final_error_pct"]


def test_a_resumed_run_with_smoothed_growth_equals_the_uninterrupted_one(synthetic_root: Path, tmp_path: Path) -> None:
    # The running averages of S and F live across epochs: the checkpoint must carry them.
    smoothed = replace(DYNHP, growth_cadence="step", growth_rounding="floor", growth_smoothing="running")
    reference = train(smoothed, Runtime(data_dir=synthetic_root, results_root=tmp_path / "ref", threads=1))
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path / "cut", threads=1, checkpoint_every=1)
    _train_until_crash(smoothed, runtime, after_epoch=3)
    resumed = train(smoothed, runtime)
    rows = _epochs(reference.run_dir)
    pd.testing.assert_frame_equal(_epochs(resumed.run_dir), rows)
    assert rows["batch_size"].iloc[3] < rows["batch_size"].iloc[5], "the batch grows after the cut"
    unsmoothed = train(replace(smoothed, growth_smoothing="none"), Runtime(data_dir=synthetic_root,
                       results_root=tmp_path / "raw", threads=1))  # fmt: skip
    assert not _epochs(unsmoothed.run_dir)["variance_ratio"].equals(rows["variance_ratio"])


def test_force_starts_afresh_instead_of_resuming(synthetic_root: Path, tmp_path: Path) -> None:
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path, threads=1, checkpoint_every=1)
    config = TrainConfig(strategy="sp", epochs=3, batch_size=128)

    _train_until_crash(config, runtime, after_epoch=2)
    result = train(config, runtime, force=True)
    assert [r.epoch for r in result.records] == [1, 2, 3]


@pytest.fixture(scope="module")
def slow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MNIST large enough for an epoch to take a noticeable fraction of a second."""
    root = tmp_path_factory.mktemp("slowdata")
    write_synthetic_dataset(root, "mnist", n_train=2048, n_test=256, seed=7)
    return root


def _train_argv(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "dynhp_bench", "train", "--strategy", "dynhp", "--gamma", "0.84", "--alpha-bs",
            "0.5", "--epochs", "8", "--batch-size", "16", "--data-dir", str(root), "--out", str(out),
            "--threads", "1", "--checkpoint-every", "1"]  # fmt: skip


def _wait_for_rows(csv_path: Path, rows: int, process: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if csv_path.is_file() and len(csv_path.read_text().splitlines()) - 1 >= rows:
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before epoch {rows}: {process.stderr.read() if process.stderr else ''}")
        time.sleep(0.05)
    pytest.fail(f"no epoch {rows} within {timeout_s} s")


def _start(root: Path, out: Path, *, rows: int) -> tuple[subprocess.Popen[str], Path]:
    """Start `train` in a subprocess and return once its run folder holds `rows` finished epochs."""
    process = subprocess.Popen(_train_argv(root, out), stderr=subprocess.PIPE, text=True)
    runs = out / "runs"
    deadline = time.monotonic() + 60
    while not (runs.is_dir() and any(runs.iterdir())):
        if time.monotonic() > deadline or process.poll() is not None:
            pytest.fail("the run folder did not appear")
        time.sleep(0.05)
    (run_dir,) = runs.iterdir()
    _wait_for_rows(run_dir / "epochs.csv", rows, process)
    return process, run_dir


@pytest.fixture(scope="module")
def uninterrupted(slow_root: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_train_argv(slow_root, out), check=True, capture_output=True, text=True)
    (run_dir,) = (out / "runs").iterdir()
    return _epochs(run_dir)


@pytest.mark.parametrize("kill_after", random.Random(1234).sample(range(1, 7), 2))
def test_sigkill_at_an_epoch_then_rerun_equals_the_uninterrupted_run(
    slow_root: Path, tmp_path: Path, uninterrupted: pd.DataFrame, kill_after: int
) -> None:
    process, run_dir = _start(slow_root, tmp_path, rows=kill_after)
    try:
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    assert not (run_dir / COMPLETE_MARKER).exists()
    rerun = subprocess.run(_train_argv(slow_root, tmp_path), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    pd.testing.assert_frame_equal(_epochs(run_dir), uninterrupted)


def test_sigint_checkpoints_marks_interrupted_exits_130_and_resumes(
    slow_root: Path, tmp_path: Path, uninterrupted: pd.DataFrame
) -> None:
    process, run_dir = _start(slow_root, tmp_path, rows=2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    lines = [line for line in err.splitlines() if line.startswith(("interrupted", "error", "Traceback"))]
    assert len(lines) == 1 and lines[0].startswith("interrupted by SIGINT") and str(run_dir) in lines[0]
    assert (run_dir / INTERRUPTED_MARKER).is_file() and (run_dir / CHECKPOINT_FILE).is_file()
    assert not (run_dir / COMPLETE_MARKER).exists()
    rerun = subprocess.run(_train_argv(slow_root, tmp_path), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert not (run_dir / INTERRUPTED_MARKER).exists()
    pd.testing.assert_frame_equal(_epochs(run_dir), uninterrupted)


def test_a_second_sigint_exits_at_once_and_leaves_every_file_readable(slow_root: Path, tmp_path: Path) -> None:
    process, run_dir = _start(slow_root, tmp_path, rows=1)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    assert json.loads((run_dir / "config.json").read_text())["run_id"] == run_dir.name
    rows = pd.read_csv(run_dir / "epochs.csv")
    assert rows["epoch"].tolist() == list(range(1, len(rows) + 1))
    if (run_dir / CHECKPOINT_FILE).exists():
        assert load_checkpoint(run_dir / CHECKPOINT_FILE)["epoch"] >= 1
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")], "no temporary file is left"
    rerun = subprocess.run(_train_argv(slow_root, tmp_path), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr


def test_sigterm_exits_143(slow_root: Path, tmp_path: Path) -> None:
    process, _ = _start(slow_root, tmp_path, rows=1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "interrupted by SIGTERM" in err


def test_resume_option_continues_a_run_folder(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = TrainConfig(strategy="hp", epochs=3, batch_size=64, profile="smoke")
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path, threads=1, checkpoint_every=1)

    _train_until_crash(config, runtime, after_epoch=1)
    run_dir = run_path(tmp_path, config.run_id)
    with pytest.raises(SystemExit) as info:
        main(["train", "--resume", str(run_dir), "--data-dir", str(synthetic_root), "--quiet"])
    assert info.value.code == 0, capsys.readouterr().err
    assert RunFolder(run_dir).is_complete
    assert pd.read_csv(run_dir / "epochs.csv")["epoch"].tolist() == [1, 2, 3]
    with pytest.raises(SystemExit) as info:
        main(["train", "--resume", str(run_dir), "--epochs", "9"])
    assert info.value.code == 2 and "drop --epochs" in capsys.readouterr().err


def _broken_checkpoints(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"run_id": "r", "epoch": 1, "trainer": {}, "records": []})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": torch.zeros(3)}, foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2048))
    return {"truncated": truncated, "foreign": foreign, "garbage": garbage}


def test_an_older_or_incomplete_checkpoint_says_which(tmp_path: Path) -> None:
    older = tmp_path / "older.pt"
    torch.save({"format": "dynhp-bench-checkpoint", "version": 1, "run_id": "r", "epoch": 1, "trainer": {},
                "records": []}, older)  # fmt: skip
    with pytest.raises(ResultsError) as info:
        load_checkpoint(older)
    assert str(older) in str(info.value) and "format version 1" in str(info.value) and "lacks" not in str(info.value)
    partial = tmp_path / "partial.pt"
    torch.save({"format": "dynhp-bench-checkpoint", "version": 2, "run_id": "r"}, partial)
    with pytest.raises(ResultsError) as info:
        load_checkpoint(partial)
    assert str(partial) in str(info.value) and "lacks epoch, trainer, records" in str(info.value)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("kind", ["truncated", "foreign", "garbage"])
def test_broken_checkpoint_is_one_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = _broken_checkpoints(tmp_path)[kind]
    with pytest.raises(ResultsError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"format": "dynhp-bench-checkpoint", "payload": _Exploit()}, handle)
    with pytest.raises(ResultsError, match=r"evil\.pt"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_resuming_from_a_tampered_checkpoint_is_exit_2(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = TrainConfig(strategy="sp", epochs=2, batch_size=128, profile="smoke")
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path, threads=1, checkpoint_every=1)

    _train_until_crash(config, runtime, after_epoch=1)
    run_dir = run_path(tmp_path, config.run_id)
    (run_dir / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as info:
        main(["train", "--resume", str(run_dir), "--data-dir", str(synthetic_root)])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == [line for line in err.splitlines() if
                                                                                   "checkpoint" in line]  # fmt: skip
    assert str(run_dir / CHECKPOINT_FILE) in err and "Traceback" not in err


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"run_id": "r", "epoch": 1, "trainer": {}, "records": []})

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.os, "fsync", no_space)
    with pytest.raises(ResultsError, match="No space left on device") as info:
        save_checkpoint(path, {"run_id": "r", "epoch": 2, "trainer": {}, "records": []})
    assert "previous checkpoint is intact" in str(info.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temporary file is left behind"


def test_a_full_disk_while_writing_results_is_a_results_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dynhp_bench.training import run_folder as results_module

    folder = RunFolder(tmp_path / "run")
    folder.start({"run_id": "x"})

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results_module.os, "fsync", no_space)
    with pytest.raises(ResultsError, match="No space left on device"):
        folder.finish({"final_error_pct": 1.0})
    monkeypatch.undo()
    assert not folder.is_complete and not (folder.path / "summary.json").exists()


# --- one writer per run folder (issue 10) ----------------------------------------------------------------------


def test_two_train_processes_of_one_run_leave_one_consistent_folder(slow_root: Path, tmp_path: Path) -> None:
    first, run_dir = _start(slow_root, tmp_path, rows=2)
    first.send_signal(signal.SIGSTOP)  # hold the first writer mid-run, so the second surely meets it
    try:
        second = subprocess.run(_train_argv(slow_root, tmp_path), capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 2
    lines = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in second.stderr
    assert f"pid {first.pid} on {socket.gethostname()}" in lines[0] and str(run_dir) in lines[0]
    rows = pd.read_csv(run_dir / "epochs.csv")
    assert rows["epoch"].tolist() == list(range(1, 9))
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 8


def test_a_waiting_writer_finds_the_run_complete_and_trains_nothing(synthetic_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(strategy="sp", epochs=2, batch_size=128, profile="smoke")
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path, threads=1)
    done = train(config, runtime)
    folder = RunFolder(done.run_dir)
    (folder.path / COMPLETE_MARKER).unlink()  # looks unfinished to the first check, complete once the lock is held
    original = RunFolder.writer_lock

    def finish_meanwhile(self: RunFolder, *, wait: bool):  # type: ignore[no-untyped-def]
        (self.path / COMPLETE_MARKER).write_text("complete\n")
        return original(self, wait=wait)

    RunFolder.writer_lock = finish_meanwhile  # type: ignore[method-assign]
    try:
        again = train(config, runtime, wait=True)
    finally:
        RunFolder.writer_lock = original  # type: ignore[method-assign]
    assert again.skipped and again.summary == done.summary


def test_temporary_files_of_a_killed_write_are_removed_when_the_folder_is_next_opened(
    synthetic_root: Path, tmp_path: Path
) -> None:
    config = TrainConfig(strategy="sp", epochs=2, batch_size=128, profile="smoke")
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path, threads=1)
    run_dir = train(config, runtime).run_dir
    (run_dir / ".summary.json.abc123.tmp").write_text("{half")
    (run_dir / COMPLETE_MARKER).unlink()
    train(config, runtime)
    assert not list(run_dir.glob(".*.tmp"))
    assert RunFolder(run_dir).has_result()


def test_summary_wall_time_after_a_resume_counts_every_stretch(synthetic_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(strategy="sp", epochs=4, batch_size=128, profile="smoke")
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path, threads=1, checkpoint_every=1)
    _train_until_crash(config, runtime, after_epoch=3)
    resumed = train(config, runtime)
    rows = pd.read_csv(resumed.run_dir / "epochs.csv")
    assert resumed.summary["wall_s"] >= rows["wall_s"].sum()  # all four epochs, not the last stretch's one


def test_a_second_sigint_while_the_checkpoint_is_written_still_marks_the_run_interrupted(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(strategy="sp", epochs=4, batch_size=128, profile="smoke")
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path, threads=1)
    original = RunFolder.write_checkpoint

    def second_sigint_midway(self: RunFolder, state: dict[str, object]) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        original(self, state)

    def first_sigint(record: object) -> None:
        monkeypatch.setattr(RunFolder, "write_checkpoint", second_sigint_midway)
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as info:
        train(config, runtime, on_epoch=first_sigint)
    assert info.value.exit_status == 130
    folder = RunFolder(run_path(tmp_path, config.run_id))
    assert folder.is_interrupted and load_checkpoint(folder.checkpoint_path)["epoch"] == 1
