"""The plan preview: runs left, the estimator's arithmetic (a fake clock), and the line `sweep` prints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynhp_bench.cli.commands import main
from dynhp_bench.cli.views import duration, plan_line
from dynhp_bench.data.datasets import load_dataset
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.sweep.estimate import Estimate, RunLeft, estimate, schedule_wall_s, steps_per_epoch
from dynhp_bench.training.trainer import Runtime, StepTotals, Trainer, flushing_subnormals, subnormals_flushed

from .conftest import SYNTHETIC_TRAIN


class FakeClock:
    """Each call advances time by the next of `steps_s` (then by nothing)."""

    def __init__(self, steps_s: list[float]) -> None:
        self.steps_s = list(steps_s)
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.steps_s.pop(0) if self.steps_s else 0.0
        return self.now


def test_runs_are_dealt_in_order_to_the_first_worker_free() -> None:
    assert schedule_wall_s([3, 3, 2, 2, 2], 2) == 7  # 3+2+2 | 3+2: in order, not the best packing (6)
    assert schedule_wall_s([4, 1, 1, 1, 1], 2) == 4
    assert schedule_wall_s([4, 1, 1, 1, 1], 1) == 8
    assert schedule_wall_s([], 3) == 0
    assert steps_per_epoch(512, 16) == 32 and steps_per_epoch(513, 16) == 33


def test_the_estimate_extrapolates_the_measured_times(synthetic_root: Path, tmp_path: Path) -> None:
    # Clock calls: start; timed epoch start, end (+2.0 s: 4 steps and one evaluation); evaluation start, end
    # (+0.5 s); the one-epoch `train` start, end (+3.0 s); the end of the estimate.
    clock = FakeClock([0, 0, 2.0, 0, 0.5, 0, 3.0, 0])
    config = TrainConfig(strategy="sp", batch_size=16, epochs=3, profile="smoke")
    runs = [RunLeft(config), RunLeft(TrainConfig(strategy="sp", batch_size=16, epochs=3, seed=1)), RunLeft(config, 2)]
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path, threads=1, workers=2)
    got = estimate(runs, runtime, steps=4, clock=clock, worker_start_s=1.0)
    step_s = (2.0 - 0.5) / 4  # 4 steps of 16 images in the timed epoch, less its evaluation
    epoch_s = SYNTHETIC_TRAIN / 16 * step_s + 0.5  # 32 steps and one evaluation: 12.5 s
    start_s = 3.0 - 0.5  # the one-epoch run's time, less its evaluation (counted in its epoch)
    assert epoch_s == 12.5
    # Runs of 40, 40 and 15 s dealt to 2 workers in order: 40 + 15 on the first; after 1 s of worker start-up.
    assert got.wall_s == pytest.approx(1.0 + (start_s + 3 * epoch_s) + (start_s + epoch_s))
    assert (got.runs_left, got.epochs_left, got.workers, got.upper_bound) == (3, 7, 2, False)
    assert got.calibration_s == pytest.approx(5.5)
    dynhp = estimate([RunLeft(TrainConfig(strategy="dynhp", epochs=1))], runtime, steps=2, worker_start_s=0.0)
    assert dynhp.upper_bound and dynhp.wall_s > 0
    held_out = TrainConfig(strategy="dyprune", epochs=1, validation_split=128)  # trains on 384 of the 512 images
    assert estimate([RunLeft(held_out)], runtime, steps=2, worker_start_s=0.0).wall_s > 0


def test_dynhp_is_also_timed_at_its_memory_cap_and_the_estimate_is_a_range(
    synthetic_root: Path, tmp_path: Path
) -> None:
    # Clock calls as above, with the run's second calibration at its cap between: +1.0 s for its timed epoch of 4
    # steps (256 images at batch 64) and one evaluation, +0.25 s for the evaluation alone.
    clock = FakeClock([0, 0, 2.0, 0, 0.5, 0, 1.0, 0, 0.25, 0, 3.0, 0])
    net_bytes = 4 * 266_610  # the MLP's weights and biases (metrics.model_bytes: gates are not counted)
    config = TrainConfig(strategy="dynhp", batch_size=16, epochs=3, budget_bytes=net_bytes + 64 * 4 * 784)
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path, threads=1, workers=1)
    got = estimate([RunLeft(config)], runtime, steps=4, clock=clock, worker_start_s=0.0)
    start_s = 3.0 - 0.5
    at_start_epoch_s = SYNTHETIC_TRAIN / 16 * (2.0 - 0.5) / 4 + 0.5  # batch 16: 32 steps of 0.375 s, one evaluation
    at_cap_epoch_s = SYNTHETIC_TRAIN / 64 * (1.0 - 0.25) / 4 + 0.25  # batch 64: 8 steps of 0.1875 s, one evaluation
    assert got.wall_s == pytest.approx(start_s + 3 * at_start_epoch_s) == 40.0
    assert got.capped_wall_s == pytest.approx(start_s + 3 * at_cap_epoch_s) == 7.75
    assert got.upper_bound
    assert plan_line(1, 3, got) == "plan: 1 run (3 epochs) left: 8 s to 40 s with 1 worker"
    sp = estimate([RunLeft(TrainConfig(strategy="sp", epochs=1))], runtime, steps=2, worker_start_s=0.0)
    assert sp.capped_wall_s is None  # no run grows its batch: no range


def test_the_plan_line_fits_80_columns_and_says_what_it_knows() -> None:
    big = Estimate(runs_left=9_999, epochs_left=9_999_999, workers=16, wall_s=1e9, upper_bound=True,
                   calibration_s=1.0)  # fmt: skip
    line = plan_line(9_999, 9_999_999, big)
    assert line == "plan: 9,999 runs (9,999,999 epochs) left: up to 11,574 days with 16 workers"
    assert len(line) <= 80
    small = Estimate(runs_left=1, epochs_left=2, workers=1, wall_s=3725, upper_bound=False, calibration_s=1.0)
    assert plan_line(1, 2, small) == "plan: 1 run (2 epochs) left: about 1 h 02 min with 1 worker"
    assert plan_line(44, 88, None) == "plan: 44 runs (88 epochs) left (--estimate times them)"
    table2 = Estimate(runs_left=7, epochs_left=14_000, workers=2, wall_s=37_140, upper_bound=True,
                      calibration_s=9.0, capped_wall_s=5_700)  # fmt: skip
    line = plan_line(7, 14_000, table2)
    assert line == "plan: 7 runs (14,000 epochs) left: 1 h 35 min to 10 h 19 min with 2 workers"
    widest = Estimate(runs_left=999, epochs_left=99_999, workers=16, wall_s=1e9, upper_bound=True,
                      calibration_s=1.0, capped_wall_s=1e8)  # fmt: skip
    assert len(line) <= 80 and len(plan_line(999, 99_999, widest)) <= 80
    same = Estimate(runs_left=1, epochs_left=2, workers=1, wall_s=3725, upper_bound=True, calibration_s=1.0,
                    capped_wall_s=3720)  # fmt: skip
    assert plan_line(1, 2, same) == "plan: 1 run (2 epochs) left: up to 1 h 02 min with 1 worker"
    assert plan_line(0, 0, None) == "plan: nothing left to train"
    assert [duration(s) for s in (42.4, 600, 7260, 3 * 86400, 1e9)] == [
        "42 s", "10 min", "2 h 01 min", "3.0 days", "11,574 days"]  # fmt: skip


def test_sweep_prints_the_plan_before_training(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def sweep(values: str, *extra: str) -> str:
        with pytest.raises(SystemExit) as info:
            main(["sweep", "lambda", "--values", values, "--strategy", "sp", "--batch-size", "64", "--profile",
                  "smoke", "--subset", "256", "--epochs", "2", "--data-dir", str(synthetic_root), "--out",
                  str(tmp_path), "--threads", "1", "--quiet", *extra])  # fmt: skip
        assert info.value.code == 0
        return capsys.readouterr().err

    assert "\nplan: 1 run (2 epochs) left: about " in sweep("0.01")
    assert "\nplan: 1 run (2 epochs) left (--estimate times them)\n" in sweep("0.01,0.02", "--no-estimate")
    assert "\nplan: nothing left to train\n" in sweep("0.01,0.02")


def test_plan_only_prints_the_plan_and_writes_nothing(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as info:
        main(["sweep", "lambda", "--values", "0.01,0.02", "--strategy", "sp", "--batch-size", "64", "--profile",
              "smoke", "--subset", "256", "--epochs", "3", "--data-dir", str(synthetic_root), "--out", str(out),
              "--threads", "1", "--quiet", "--plan-only"])  # fmt: skip
    assert info.value.code == 0
    err = capsys.readouterr().err
    assert "plan: 2 runs (6 epochs) left: about " in err, err
    assert not out.exists(), "no storage, no run folder: nothing written"
    with pytest.raises(SystemExit) as info:
        main(["sweep", "lambda", "--values", "0.01,0.02", "--strategy", "sp", "--profile", "smoke", "--subset",
              "256", "--data-dir", str(synthetic_root), "--out", str(out), "--quiet", "--plan-only",
              "--no-estimate"])  # fmt: skip
    err = capsys.readouterr().err
    assert info.value.code == 0, err
    assert err.strip().endswith("plan: 2 runs (4 epochs) left (--estimate times them)"), err
    assert not out.exists()


def test_the_trainer_flushes_subnormal_floats_while_it_trains_only(
    synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_dataset("mnist", synthetic_root, download=False)
    trainer = Trainer(TrainConfig(strategy="sp", profile="smoke", subset=None), data, torch.device("cpu"))
    seen: list[bool] = []
    train_steps = Trainer._train_steps

    def recording(self: Trainer, epoch: int) -> StepTotals:
        seen.append(subnormals_flushed())
        return train_steps(self, epoch)

    monkeypatch.setattr(Trainer, "_train_steps", recording)
    assert not subnormals_flushed()  # IEEE arithmetic, as Python and Hypothesis expect
    with flushing_subnormals():
        if not subnormals_flushed():
            pytest.skip("this CPU cannot flush subnormal floats")
    trainer.run_epoch(1, last=True)
    assert seen == [True]
    assert not subnormals_flushed()  # restored after the epoch
    assert float(torch.full((), 1e-30) * 1e-10) == pytest.approx(1e-40, rel=0.01)
