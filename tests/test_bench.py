"""`dynhp-bench bench` runs and writes its table; the FLOP accounting and the hp20 cut are as documented."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from dynhp_bench.analysis.bench import CASES, hp20_trainer, run_bench, targets
from dynhp_bench.cli.commands import main
from dynhp_bench.data.datasets import load_dataset
from dynhp_bench.memory import epoch_flops, weight_count
from dynhp_bench.training.record import EpochRecord
from dynhp_bench.training.trainer import Trainer


def test_bench_writes_one_row_per_case_and_batch_size(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "--data-dir", str(synthetic_root), "--batch-sizes", "16,64", "--repeats", "1",
              "--out", str(tmp_path), "--threads", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert info.value.code == 0
    frame = pd.read_csv(tmp_path / "bench" / "bench.csv")
    assert sorted(zip(frame["case"], frame["batch_size"], strict=True)) == sorted(
        (case, b) for case in CASES for b in (16, 64)
    )
    assert (frame["epoch_s"] > 0).all()
    assert (frame.loc[frame["case"] == "plain", "vs_plain"] == 1.0).all()
    flops = frame["flop_limit_s"] * frame["peak_gflops"] * 1e9
    full_epoch = 6 * 512 * (784 * 300 + 300 * 100 + 100 * 10)  # the synthetic set has 512 training images
    assert flops[frame["case"].isin(["plain", "sp", "hp", "dynhp"])].tolist() == pytest.approx([full_epoch] * 8)
    assert (flops[frame["case"] == "hp20"] < 0.22 * full_epoch).all()
    assert "peak resident memory of `train`" in out and "Targets" in out


def test_bench_reference_times_the_trainer_cases_on_both_paths_in_the_same_rounds(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "--data-dir", str(synthetic_root), "--batch-sizes", "16", "--repeats", "2", "--reference",
              "--warm-up-epochs", "0", "--no-memory", "--out", str(tmp_path), "--threads", "1"])  # fmt: skip
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    frame = pd.read_csv(tmp_path / "bench" / "bench.csv").set_index("case")
    trainer_cases = ["sp", "hp", "hp20", "dynhp"]
    suffixes = {"fast": "", "fast_torch": "_fast_torch", "autograd": "_autograd"}
    assert sorted(frame.index) == sorted(
        ["plain", "plain_ieee", *(case + suffix for suffix in suffixes.values() for case in trainer_cases)]
    )
    for step, suffix in suffixes.items():
        assert frame.loc[[case + suffix for case in trainer_cases], "step"].tolist() == [step] * 4
        assert frame.loc["hp20" + suffix, "weights"] == frame.loc["hp20", "weights"] < 0.22 * frame.loc["sp", "weights"]
    assert "timing 14 cases × 2 epochs" in captured.err
    assert captured.err.count("   sp_autograd batch   16") == 2 and captured.err.count("sp_fast_torch batch   16") == 2
    assert "on the autograd path" in captured.out and "without the compiled loops" in captured.out


def test_bench_reference_with_the_autograd_step_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "--reference", "--step", "autograd", "--data-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "--reference times the slower step paths" in err


def test_hp20_keeps_about_a_fifth_of_the_weights(synthetic_root: Path) -> None:
    data = load_dataset("mnist", synthetic_root, download=False)
    trainer = hp20_trainer(data, 64, torch.device("cpu"))
    share = weight_count(trainer.net.shapes) / 266_610
    assert 0.18 < share < 0.22
    assert trainer.train_x.shape[1] == trainer.net.shapes[0][0]
    assert epoch_flops(trainer.net.shapes, 1) < 0.22 * epoch_flops([(784, 300), (300, 100), (100, 10)], 1)


def test_targets_compare_the_right_ratios() -> None:
    rows = []
    seconds = {"plain": 1.0, "plain_ieee": 1.4, "sp": 0.95, "hp": 1.0, "hp20": 0.5, "dynhp": 1.06}
    for batch, scale in ((16, 2.0), (512, 1.0)):
        for case, s in seconds.items():
            limit = 1.3 if case == "hp20" else 1.1
            rows.append({"case": case, "batch_size": batch, "epoch_s": s * scale, "vs_flop_limit": limit})
    frame = pd.DataFrame(rows)
    frame.loc[(frame["case"] == "sp") & (frame["batch_size"] == 16), "epoch_s"] = 1.1  # 0.55 × plain's 2.0
    checks = {t.name: t for t in targets(frame)}
    assert checks["sp ≤ 0.6 × plain, batch 16"].measured == pytest.approx(0.55)
    assert checks["sp ≤ 0.6 × plain, batch 16"].holds
    assert checks["sp ≤ 1.0 × plain, batch 512"].measured == pytest.approx(0.95)
    assert checks["dynhp ≤ 1.05 × hp, batch 512"].measured == pytest.approx(1.06)
    assert not checks["dynhp ≤ 1.05 × hp, batch 512"].holds
    assert checks["plain_ieee ≤ 1.2 × FLOP limit, batch 512"].holds
    assert not checks["hp20 ≤ 1.2 × FLOP limit, batch 512"].holds
    assert "sp ≤ 0.9 × plain, batch 100" not in checks  # no batch 100 in this table


def test_bad_batch_sizes_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "--batch-sizes", "16,x"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --batch-sizes='16,x' is not valid; expected integers from 1 to 1000000 separated by commas"
    )


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--batch-sizes", "16,16"], "lists a value twice"),
        (["--batch-sizes", "16,²"], "expected integers from 1 to"),
        (["--batch-sizes", "99999999999999999999"], "expected integers from 1 to"),
        (["--subset", "0"], "--subset=0 is not valid"),
        (["--subset", "-5"], "--subset=-5 is not valid"),
        (["--repeats", "100000000"], "--repeats=100000000 is not valid"),
        (["--warm-up-epochs", "-1"], "--warm-up-epochs=-1 is not valid"),
        (["--threads", "100000000000"], "--threads=100000000000 is not valid"),
    ],
)
def test_bench_refuses_bad_counts_before_timing_anything(
    argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", *argv, "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "none").exists()


def test_the_timed_trainers_are_the_warmed_up_ones(synthetic_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    run_epoch = Trainer.run_epoch

    def counted(self: Trainer, epoch: int, *, last: bool) -> EpochRecord:
        calls.append((id(self), self.train_x.shape[0]))
        return run_epoch(self, epoch, last=last)

    monkeypatch.setattr(Trainer, "run_epoch", counted)
    data = load_dataset("mnist", synthetic_root, download=False)
    run_bench(data, batch_sizes=(64,), repeats=1, warm_up_epochs=2)
    trainers = {trainer for trainer, _ in calls}
    assert len(trainers) == len(CASES) - 2  # every case but the two plain loops
    assert sorted(calls.count((t, 512)) for t in trainers) == [3] * 4  # 2 warm-up + 1 timed, all 512 images
