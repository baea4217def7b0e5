"""The command line: a real training through `main`, and user errors as one line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynhp_bench.cli.commands import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def test_train_writes_a_run_folder_and_prints_a_summary(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        ["train", "--strategy", "dynhp", "--profile", "smoke", "--subset", "256", "--data-dir", str(synthetic_root),
         "--out", str(tmp_path), "--threads", "1"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "COMPLETE").is_file()
    assert "epoch 2/2" in err  # one line per epoch when not on a terminal
    assert "final error" in out and str(runs[0].name) in out
    settings = json.loads((runs[0] / "config.json").read_text())["settings"]
    assert (settings["profile"], settings["epochs"], settings["subset"], settings["batch_size"]) == (
        "smoke",
        2,
        256,
        16,
    )
    code, _, err = _run(["train", "--strategy", "dynhp", "--profile", "smoke", "--subset", "256", "--data-dir",
                         str(synthetic_root), "--out", str(tmp_path)], capsys)  # fmt: skip
    assert code == 0 and "already complete" in err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--lambda", "1.5"], "--lambda=1.5"),
        (["train", "--alpha-bs", "2"], "--alpha-bs=2.0"),
        (["train", "--dataset", "cifar100"], "--dataset='cifar100'"),
        (["train", "--strategy", "sp", "--alpha-bs", "0.97"], "does not apply to strategy 'sp'"),
        (["train", "--epochs", "ten"], "--epochs"),
        (["train", "--budget-bytes", "1000"], "--budget-bytes=1000"),
        (["train", "--no-such-option"], "--no-such-option"),
        (["train", "--device", "tpu"], "--device='tpu'"),
        (["train", "--threads", "0"], "--threads=0"),
        # Found by test_cli_fuzz: torch.set_num_threads overflowed on a value past a C int.
        (["bench", "--threads", "2147483648"], "--threads=2147483648"),
        (["bench", "--inference"], "--inference needs at least one RUN_DIR"),
        # Found by the property-based tests (tests/test_cli_fuzz.py), kept as plain regressions:
        (["sweep", "-00"], "No such option: -00"),  # click named only `-0`, the first flag it tried
        (["sweep", "lambda", "--values", "-0.5"], "--lambda=-0.5"),
        (["sweep", "lambda", "--range", ""], "--range=''"),  # said only "range ''"
        (["sweep", "lambda", "--values", ""], "--values=''"),
        (["sweep", "batch_size", "--values", "0,1"], "--values='0,1' gives batch_size=0"),  # named only --batch-size
        (["sweep", "batch_size", "--range", "0:2"], "--range='0:2' gives batch_size=0"),
        (["train", "--batch-size", "1_000"], "--batch-size=1000"),  # not the --budget-bytes the user never gave
        (["train", "--threads", "1000000000"], "--threads=1000000000"),  # torch would try to start 10⁹ threads
        (["bench", "--threads", "1000000000"], "--threads=1000000000"),
        (["sweep", "lambda", "--values", "0.1", "--threads", "1000000000"], "--threads=1000000000"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err + out
    assert not (tmp_path / "runs").exists(), "nothing is written for a bad invocation"


def test_a_batch_over_the_default_budget_says_how_to_raise_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["train", "--batch-size", "1_000", "--out", str(tmp_path)], capsys)
    assert code == 2
    # network 1,066,440 bytes + a batch of 1,000 images × 784 pixels × 4 bytes = 4,202,440 bytes
    assert "a first batch of 1,000 does not fit" in err and "--budget-bytes 4202440" in err
    assert "2672072" not in err  # the default budget is shown as such (2,672,072), never as a flag's value
    argv = ["train", "--batch-size", "1000", "--budget-bytes", "4202440", "--epochs", "1", "--subset", "1",
            "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert "does not fit" not in err and "--budget-bytes" not in err  # the raised budget is accepted


def test_a_missing_data_folder_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "nodata"
    empty.mkdir()
    empty.chmod(0o500)  # read-only: torchvision cannot even try to write a download there
    try:
        code, _, err = _run(["train", "--profile", "smoke", "--data-dir", str(empty), "--out", str(tmp_path)], capsys)
    finally:
        empty.chmod(0o700)
    assert code == 2
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err  # the run-id header waits until training starts
    line = lines[0]
    assert str(empty / "MNIST" / "raw") in line and "train-images-idx3-ubyte" in line
    assert not (tmp_path / "runs").exists()


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.startswith("dynhp-bench ")
    code, out, _ = _run(["train", "--help"], capsys)
    assert code == 0 and "--alpha-bs" in out and "--budget-bytes" in out


def test_an_mlp_trains_on_synthetic_cifar10_end_to_end(
    cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--dataset", "cifar10", "--strategy", "hp", "--epochs", "2", "--batch-size", "64",
            "--data-dir", str(cifar_root), "--out", str(tmp_path), "--threads", "1", "--quiet"]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("cifar10-hp-b64-e2-s0-") and (run / "COMPLETE").is_file()
    settings = json.loads((run / "config.json").read_text())["settings"]
    assert (settings["normalize"], settings["augment"]) == (True, True)  # cifar10's defaults
    rows = (run / "epochs.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(","), strict=True))
    last = dict(zip(header, rows[-1].split(","), strict=True))
    assert int(first["active_0"]) == 3072 and int(first["batch_bytes"]) == 64 * 4 * 3072
    assert int(first["model_bytes"]) == 4 * (3072 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    assert float(last["test_error_pct"]) < 50.0, "the synthetic classes are learnt (chance is 90 %)"
    code, _, err = _run([*argv[:-1], "--no-augment", "--quiet"], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "runs").iterdir())) == 2, "augmentation off is another run"
