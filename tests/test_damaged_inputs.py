"""Damaged inputs end in one line, exit status 2, naming the file, with nothing half-written (issue 10).

The property-based tests damage real files (datasets, run folders, baselines, study journals, sweep and settings
files) by cutting, flipping, inserting or replacing bytes, and run the command that reads them. A damage the file
format cannot notice (a flipped pixel, a changed digit) may pass; anything else must be a clean error. They are
derandomised, so they try the same inputs on every run, with CI set or not.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from dynhp_bench.analysis import report
from dynhp_bench.cli.commands import main
from dynhp_bench.data import cifar
from dynhp_bench.data.datasets import RAW_FILES, dataset_folder, write_idx, write_synthetic_dataset
from dynhp_bench.errors import DataError, ResultsError, SettingsError
from dynhp_bench.settings.config import resolve_config
from dynhp_bench.sweep import command_line_spec, expand, open_store, parse_storage, read_sweep_file
from dynhp_bench.sweep.worker import FOR_GOOD_ATTR, WorkerPlan, claim_next, open_studies, work
from dynhp_bench.training.trainer import Runtime

EXAMPLES = settings(
    derandomize=True,
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# how, where (fraction of the file), a byte, a length
DAMAGE = st.tuples(
    st.sampled_from(["truncate", "flip", "insert", "overwrite", "empty"]),
    st.floats(0.0, 1.0),
    st.integers(0, 255),
    st.integers(1, 40),
)
TRAIN = ["train", "--strategy", "sp", "--epochs", "1", "--batch-size", "128", "--threads", "1", "--quiet"]


def damage(data: bytes, how: str, at: float, byte: int, length: int) -> bytes:
    """`data` cut short, with one byte flipped, with bytes inserted or overwritten, or emptied."""
    if how == "empty" or not data:
        return b""
    i = min(int(at * len(data)), len(data) - 1)
    if how == "truncate":
        return data[:i]
    if how == "flip":
        return data[:i] + bytes([data[i] ^ (byte or 0x80)]) + data[i + 1 :]
    noise = bytes((byte + 37 * k) % 256 for k in range(length))
    return data[:i] + noise + (data[i:] if how == "insert" else data[i + length :])


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def assert_clean(code: int, err: str, names: list[Path | str], *, allowed: tuple[int, ...] = (0, 2)) -> None:
    """Exit status in `allowed`; on 2 exactly one error line, the last one, naming one of `names`; no traceback."""
    assert code in allowed, err
    assert "Traceback" not in err
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
        assert any(str(name) in errors[0] for name in names), errors[0]


def no_temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".report")]


@contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="damaged-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- datasets ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small")
    write_synthetic_dataset(root, "mnist", n_train=256, n_test=128, seed=3)
    return root


@EXAMPLES
@given(file=st.sampled_from(RAW_FILES), how=DAMAGE)
def test_a_damaged_dataset_file_is_one_line_and_writes_nothing(
    small_data: Path, capsys: pytest.CaptureFixture[str], file: str, how: tuple[str, float, int, int]
) -> None:
    with scratch() as tmp:
        shutil.copytree(small_data, tmp / "data")
        path = dataset_folder(tmp / "data", "mnist") / file
        path.write_bytes(damage(path.read_bytes(), *how))
        code, _, err = run_cli([*TRAIN, "--data-dir", str(tmp / "data"), "--out", str(tmp / "out")], capsys)
        assert_clean(code, err, [dataset_folder(tmp / "data", "mnist")])
        if code == 2:
            assert not (tmp / "out").exists(), "nothing is written before the data is checked"


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small_cifar")
    write_synthetic_dataset(root, "cifar10", n_train=20, n_test=5, seed=3)
    return root


@EXAMPLES
@given(file=st.sampled_from(cifar.FILES), how=DAMAGE)
def test_a_damaged_cifar10_file_is_one_line_and_writes_nothing(
    small_cifar: Path, capsys: pytest.CaptureFixture[str], file: str, how: tuple[str, float, int, int]
) -> None:
    with scratch() as tmp:
        shutil.copytree(small_cifar, tmp / "data")
        path = dataset_folder(tmp / "data", "cifar10") / file
        path.write_bytes(damage(path.read_bytes(), *how))
        argv = [*TRAIN, "--dataset", "cifar10", "--batch-size", "8", "--data-dir", str(tmp / "data")]
        code, _, err = run_cli([*argv, "--out", str(tmp / "out")], capsys)
        assert_clean(code, err, [dataset_folder(tmp / "data", "cifar10")])
        if code == 2:
            assert not (tmp / "out").exists(), "nothing is written before the data is checked"


def _consistent_but_wrong(folder: Path, case: str) -> Path:
    """Damage a dataset so every IDX header matches its file's size; return the file the error must name."""
    labels = {s: torch_load_idx(folder / f"{s}-labels-idx1-ubyte") for s in ("train", "t10k")}
    if case == "labels shorter than images":
        write_idx(folder / "train-labels-idx1-ubyte", labels["train"][:-10])
        return folder / "train-labels-idx1-ubyte"
    if case == "label 10":
        wrong = labels["t10k"].clone()
        wrong[5] = 10
        write_idx(folder / "t10k-labels-idx1-ubyte", wrong)
        return folder / "t10k-labels-idx1-ubyte"
    if case == "32x32 images":
        import torch

        write_idx(folder / "train-images-idx3-ubyte", torch.zeros(len(labels["train"]), 32, 32))
        return folder / "train-images-idx3-ubyte"
    # train and test swapped
    for kind in ("images-idx3", "labels-idx1"):
        train, test = folder / f"train-{kind}-ubyte", folder / f"t10k-{kind}-ubyte"
        train.rename(folder / "swap")
        test.rename(train)
        (folder / "swap").rename(test)
    return folder


def torch_load_idx(path: Path):  # type: ignore[no-untyped-def]
    import struct

    import torch

    data = path.read_bytes()
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims :]), dtype=torch.uint8).reshape(shape)


CONSISTENT_CASES = ["labels shorter than images", "label 10", "32x32 images", "train and test swapped"]


@pytest.mark.parametrize("case", CONSISTENT_CASES)
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_self_consistent_but_wrong_dataset_is_refused_before_anything_is_written(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, command: str
) -> None:
    shutil.copytree(small_data, tmp_path / "data")
    named = _consistent_but_wrong(dataset_folder(tmp_path / "data", "mnist"), case)
    argv = TRAIN if command == "train" else ["sweep", "lambda", "--values", "0.01", *TRAIN[1:-1], "--quiet"]
    code, _, err = run_cli([*argv, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")], capsys)
    assert_clean(code, err, [named], allowed=(2,))
    assert not (tmp_path / "out").exists()


def test_a_trial_failed_by_its_data_is_not_claimed_again_in_the_same_sweep(small_data: Path, tmp_path: Path) -> None:
    shutil.copytree(small_data, tmp_path / "data")
    settings_ = {"strategy": "sp", "epochs": 1, "batch_size": 128}
    spec = command_line_spec("lambda", range_text=None, values="0.01,0.02", settings=settings_)
    runtime = Runtime(data_dir=tmp_path / "data", results_root=tmp_path / "out", threads=1, device="cpu")
    plan = WorkerPlan(expand(spec, overrides=settings_), parse_storage(None, tmp_path / "out"), runtime)
    _consistent_but_wrong(dataset_folder(tmp_path / "data", "mnist"), "label 10")  # damaged after the sweep's check
    with pytest.raises(DataError, match="label 10"):
        work(plan, poll_s=0.01)
    store = open_store(plan.storage)
    try:
        studies = open_studies(plan, store)
        (failed,) = next(iter(studies.values())).get_trials()
        assert failed.state == TrialState.FAIL and failed.user_attrs[FOR_GOOD_ATTR] == plan.session
        with store.claim_lock():
            claim = claim_next(plan, studies, store)
        assert not isinstance(claim, str) and claim.points[0].run_id != failed.user_attrs["run_id"]
        claim.trial.set_user_attr(FOR_GOOD_ATTR, plan.session)  # the other point fails on the same data
        claim.study.tell(claim.trial, state=TrialState.FAIL)
        with store.claim_lock():
            assert claim_next(plan, studies, store) == "done"  # the worker stops: no loop over the same error
    finally:
        store.close()
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())


def test_a_failed_download_leaves_no_folder_it_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynhp_bench.data import datasets as data_module

    class NoNetwork:
        def __init__(self, root: str, *, train: bool, download: bool) -> None:
            (Path(root) / "MNIST" / "raw").mkdir(parents=True)
            (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz.part").write_bytes(b"half")
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error no network>")

    monkeypatch.setattr(data_module, "torchvision_class", lambda name: NoNetwork)
    typo = tmp_path / "dtaa" / "nested"
    code, _, err = run_cli([*TRAIN, "--data-dir", str(typo), "--out", str(tmp_path / "out")], capsys)
    assert_clean(code, err, [typo], allowed=(2,))
    assert "download failed" in err and not (tmp_path / "dtaa").exists()
    existing = tmp_path / "data"
    existing.mkdir()
    code, _, _ = run_cli([*TRAIN, "--data-dir", str(existing), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and existing.is_dir() and not any(existing.iterdir()), "the user's folder stays, empty"


# --- run folders, baselines ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results root with one complete run, its baseline beside it."""
    root = tmp_path_factory.mktemp("finished")
    with pytest.raises(SystemExit) as info:
        main([*TRAIN, "--data-dir", str(small_data), "--out", str(root / "results")])
    assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        main(["check", "--baseline", str(root / "baseline.json"), "--results", str(root / "results"), "--update"])
    assert info.value.code == 0
    return root


RUN_FILES = ["config.json", "summary.json", "epochs.csv", "COMPLETE"]


@EXAMPLES
@given(file=st.sampled_from(RUN_FILES), how=DAMAGE)
def test_report_and_check_on_a_damaged_run_folder_are_one_line(
    finished: Path, capsys: pytest.CaptureFixture[str], file: str, how: tuple[str, float, int, int]
) -> None:
    with scratch() as tmp:
        shutil.copytree(finished, tmp / "root")
        results = tmp / "root" / "results"
        (run,) = (results / "runs").iterdir()
        (run / file).write_bytes(damage((run / file).read_bytes(), *how))
        report = tmp / "report"
        code, _, err = run_cli(["report", "--paper-tables", "--results", str(results), "--out", str(report)], capsys)
        assert_clean(code, err, [run, results])
        if code == 2:
            assert not report.exists(), "no half-written report"
        assert not no_temporary_files(tmp)
        baseline = tmp / "root" / "baseline.json"
        code, _, err = run_cli(["check", "--baseline", str(baseline), "--results", str(results)], capsys)
        assert_clean(code, err, [run, results], allowed=(0, 1, 2))


@EXAMPLES
@given(file=st.sampled_from(["config.json", "checkpoint.pt", "epochs.csv"]), how=DAMAGE)
def test_resuming_a_damaged_run_folder_is_one_line_or_a_clean_resume(
    small_data: Path, finished: Path, capsys: pytest.CaptureFixture[str], file: str, how: tuple[str, float, int, int]
) -> None:
    with scratch() as tmp:
        shutil.copytree(finished, tmp / "root")
        (run,) = (tmp / "root" / "results" / "runs").iterdir()
        (run / "COMPLETE").unlink()  # unfinished: --resume reads config.json, then the checkpoint
        (run / file).write_bytes(damage((run / file).read_bytes(), *how))
        code, _, err = run_cli(["train", "--resume", str(run), "--data-dir", str(small_data), "--quiet"], capsys)
        assert_clean(code, err, [run])
        if code == 0:
            assert (run / "COMPLETE").is_file() and json.loads((run / "summary.json").read_text())["epochs"] == 1
        assert not no_temporary_files(tmp)


@EXAMPLES
@given(how=DAMAGE)
def test_check_on_a_damaged_baseline_is_one_line(
    finished: Path, capsys: pytest.CaptureFixture[str], how: tuple[str, float, int, int]
) -> None:
    with scratch() as tmp:
        baseline = tmp / "baseline.json"
        baseline.write_bytes(damage((finished / "baseline.json").read_bytes(), *how))
        code, out, err = run_cli(["check", "--baseline", str(baseline), "--results", str(finished / "results")],
                                 capsys)  # fmt: skip
        assert_clean(code, err, [baseline], allowed=(0, 1, 2))
        if code == 0:
            assert "all 3 checks passed" in out  # a harmless damage: every configuration still checked


# --- sweep files, settings files, journals ---------------------------------------------------------------------------


SWEEP_FILE = b"""[sweep]
name = "damaged"
description = "a sweep file to damage"
seeds = [0, 1]

[[groups]]
name = "sp"
param = "lambda"
values = [0.01, 0.02]
settings = { strategy = "sp", epochs = 1, batch_size = 128 }
"""
SETTINGS_FILE = b"""[train]
strategy = "hp"
epochs = 2
batch_size = 64
gamma = 0.5
hidden = [300, 100]
"""


@EXAMPLES
@given(how=DAMAGE)
def test_a_damaged_sweep_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: tuple[str, float, int, int]
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_bytes(damage(SWEEP_FILE, *how))
    # --workers 0 stops a sweep whose file was read whole right after reading it, before anything runs.
    code, _, err = run_cli(["sweep", "--file", str(path), "--workers", "0", "--out", str(tmp_path / "out")], capsys)
    assert_clean(code, err, [path, "--workers=0"], allowed=(2,))
    assert not (tmp_path / "out").exists()


@EXAMPLES
@given(how=DAMAGE)
def test_a_damaged_settings_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: tuple[str, float, int, int]
) -> None:
    path = tmp_path / "settings.toml"
    path.write_bytes(damage(SETTINGS_FILE, *how))
    code, _, err = run_cli(["train", "--config", str(path), "--threads", "0", "--out", str(tmp_path / "out")], capsys)
    # --threads 0 stops a run whose settings file was read whole right after reading it, before anything runs.
    assert_clean(code, err, [repr(str(path)), "--threads=0"], allowed=(2,))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def swept(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("swept")
    argv = ["sweep", "lambda", "--values", "0.01,0.02", *TRAIN[1:], "--data-dir", str(small_data), "--out"]
    with pytest.raises(SystemExit) as info:
        main([*argv, str(root / "out")])
    assert info.value.code == 0
    return root / "out", argv


@settings(EXAMPLES, max_examples=8)
@given(how=DAMAGE)
def test_a_damaged_journal_is_repaired_or_one_line_and_the_sweep_finishes(
    swept: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str], how: tuple[str, float, int, int]
) -> None:
    out, argv = swept
    with scratch() as tmp:
        shutil.copytree(out, tmp / "out")
        journal = tmp / "out" / "study.journal"
        journal.write_bytes(damage(journal.read_bytes(), *how))
        code, stdout, err = run_cli([*argv, str(tmp / "out")], capsys)
        assert_clean(code, err, [journal])
        if code == 0:
            assert "2 of 2 trials done" in stdout
            store = open_store(parse_storage(None, tmp / "out"))
            try:
                names = [s.study_name for s in store.storage.get_all_studies()]
                trials = [t for n in names for t in optuna.load_study(study_name=n, storage=store.storage).trials]
                assert sum(t.state == TrialState.COMPLETE for t in trials) >= 2
            finally:
                store.close()


# --- the inputs the issue lists, one by one --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--seed", "99999999999999999999999"], "--seed=99999999999999999999999 is not valid"),
        (["train", "--threads", "99999999999"], "--threads=99999999999 is not valid"),
        (["train", "--epochs", "99999999999"], "--epochs=99999999999 is not valid"),
        (["train", "--checkpoint-every", "99999999999"], "--checkpoint-every=99999999999 is not valid"),
        (["train", "--hidden", "٣٠٠,100"], "--hidden='٣٠٠,100' is not valid"),
        (["sweep", "gamma", "--values", "0.5", "--workers", "100000"], "each worker needs about 570 MiB"),
        (["sweep", "gamma", "--values", "0.5", "--threads", "99999999999"], "--threads=99999999999"),
        (["sweep", "gamma", "--values", "0.5", "--seeds", "0,4294967296"], "seed 4294967296 is not valid"),
        (["sweep", "gamma", "--values", "0.5", "--seeds", "0,²"], "seed '²' is not valid"),
        (["sweep", "gamma", "--values", "0.5", "--seeds", ",".join(map(str, range(20_000)))], "at most 10000"),
        (["sweep", "gamma", "--range", "0:1e1000"], "out of bounds"),
        (["sweep", "gamma", "--range", "0.1:0.5:1e-30"], "out of bounds"),
        (["sweep", "gamma", "--range", "1e-5000:1"], "out of bounds"),
        (["sweep", "batch_size", "--values", "16,٣٢"], "is not a number"),
        (["sweep", "batch_size", "--values", "99999999999999"], "out of bounds"),
        (["sweep", "gamma", "--values", "0.5", "--heartbeat-s", "99999999999"], "--heartbeat-s=99999999999"),
    ],
)
def test_every_count_is_bounded_where_it_is_parsed(
    argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_sweep_of_too_many_points_times_seeds_is_refused_before_it_resolves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.toml"
    path.write_text(
        '[sweep]\nname = "big"\nseeds = [' + ", ".join(map(str, range(1000))) + ']\n\n[[groups]]\nname = "g"\n'
        'param = "gamma"\nrange = "0.0001:1"\nsettings = { strategy = "hp" }\n'
    )
    code, _, err = run_cli(["sweep", "--file", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "10000000 runs" in err and "at most 100000" in err, err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"\xff\xfe[train]\n", "is not valid TOML"),
        (b"[train]\nhidden = 5\n", "hidden = 5 is an integer; expected two widths"),
        (b"[train]\nhidden = [300]\n", "--hidden='300' is not valid"),
        (b'[train]\nepochs = "two"\n', "epochs = 'two' is a string; expected an integer"),
        (b'[train]\ndataset = ["mnist"]\n', "dataset = ['mnist'] is an array; expected a string"),
        (b'epochs = 3\n[train]\nstrategy = "sp"\n', "key 'epochs' is outside the [train] table"),
    ],
)
def test_settings_files_with_bad_bytes_or_types_are_one_line(
    text: bytes, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "settings.toml"
    path.write_bytes(text)
    code, _, err = run_cli(["train", "--config", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"\xff[sweep]\n", "is not valid TOML"),
        (b'[[groups]]\nname = "g"\nparam = "gamma"\nvalues = [0.5]\nseeds = 3\n', "seeds = 3 is an integer"),
        (
            b'[[groups]]\nname = "g"\nparam = "gamma"\nvalues = [0.5]\nsettings = { hidden = 5 }\n',
            "hidden = 5 is an integer",
        ),
        (b'[[groups]]\nname = "g"\nparam = "gamma"\nvalues = ["\xd9\xa3"]\n', "is not a number"),
    ],
)
def test_sweep_files_with_bad_bytes_or_types_are_one_line_naming_the_file(
    text: bytes, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_bytes(text)
    code, _, err = run_cli(["sweep", "--file", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err and str(path) in err, err


def test_out_under_proc_is_one_line(small_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    for argv in (TRAIN, ["sweep", "lambda", "--values", "0.01", *TRAIN[1:]]):
        code, _, err = run_cli([*argv, "--data-dir", str(small_data), "--out", "/proc/dynhp-bench"], capsys)
        assert code == 2 and "Traceback" not in err and "/proc/dynhp-bench" in err.splitlines()[-1], err


@pytest.mark.parametrize(
    "config_text", ["{}", '{"settings": 3}', '{"settings": {"epochs": -1}}', '{"settings": {"colour": 1}}', "[]"]
)
def test_resume_on_a_damaged_config_json_is_one_line_naming_it(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], config_text: str
) -> None:
    shutil.copytree(finished / "results", tmp_path / "results")
    (run,) = (tmp_path / "results" / "runs").iterdir()
    (run / "config.json").write_text(config_text)
    code, _, err = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and err.count("\n") == 1 and str(run / "config.json") in err and "Traceback" not in err, err


# --- wrong TOML types in every field of every TOML file the tool reads (issue 24) ------------------------------------

# One value of each TOML type, and the words the error uses for it.
TOML_SAMPLES = {
    "string": ('"x"', "a string"),
    "integer": ("3", "an integer"),
    "float": ("0.5", "a float"),
    "boolean": ("true", "a boolean"),
    "offset date-time": ("1979-05-27T07:32:00Z", "a date-time"),
    "local date-time": ("1979-05-27T07:32:00", "a date-time"),
    "date": ("1979-05-27", "a date"),
    "time": ("07:32:00", "a time"),
    "array": ("[1, 2]", "an array"),
    "array of tables": ("[{ a = 1 }]", "an array"),
    "table": ("{ a = 1 }", "a table"),
}
ACCEPTS = {
    "string": {"string"},
    "integer": {"integer"},
    "number": {"integer", "float"},
    "boolean": {"boolean"},
    "widths": {"string", "array", "array of tables"},  # "300,100" or [300, 100]; the widths are checked later
}
# Every setting a settings file (and a sweep group's `settings`) may hold, by the TOML types it takes.
SETTING_KINDS = {
    "dataset": "string", "strategy": "string", "profile": "string", "arch": "string", "gate_draws": "string",
    "growth_cadence": "string", "growth_rounding": "string", "growth_loss": "string", "growth_variance": "string",
    "growth_correction": "string", "growth_smoothing": "string", "lambda_scaling": "string",
    "prune_schedule": "string", "bias_init": "string",
    "epochs": "integer", "batch_size": "integer", "seed": "integer", "subset": "integer", "budget_bytes": "integer",
    "validation_split": "integer", "prune_interval": "integer",
    "lr": "number", "weight_decay": "number", "lambda": "number", "gamma": "number", "alpha_bs": "number",
    "drop_rate_input": "number", "drop_rate_hidden": "number", "slope_min": "number", "slope_max": "number",
    "prune_rate": "number", "ema_decay": "number",
    "reset_optimizer": "boolean", "reset_biases": "boolean", "normalize": "boolean", "augment": "boolean",
    "hidden": "widths",
}  # fmt: skip
SWEEP_KINDS = {"name": "string", "description": "string", "seeds": "seeds"}
GROUP_KINDS = {"name": "string", "param": "string", "range": "string", "values": "array", "seeds": "seeds",
               "trials": "integer", "sampler": "string", "settings": "table"}  # fmt: skip
ACCEPTS |= {"seeds": {"array", "array of tables", "string"}, "array": {"array", "array of tables"}, "table": {"table"}}


def _wrong(kind: str) -> list[tuple[str, str, str]]:
    """(TOML type, a value of it, the error's words for it) for every TOML type `kind` does not take."""
    return [(name, text, words) for name, (text, words) in TOML_SAMPLES.items() if name not in ACCEPTS[kind]]


def test_the_type_table_covers_every_setting() -> None:
    from dataclasses import fields

    from dynhp_bench.settings.config import TrainConfig

    assert {"lambda" if f.name == "lam" else f.name for f in fields(TrainConfig)} == set(SETTING_KINDS)


def _refused(call: Callable[[], object]) -> str:
    with pytest.raises(SettingsError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("key", sorted(SETTING_KINDS))
def test_every_setting_of_a_settings_file_refuses_every_wrong_toml_type(key: str, tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    for type_name, text, words in _wrong(SETTING_KINDS[key]):
        path.write_text(f"[train]\n{key} = {text}\n")
        message = _refused(lambda: resolve_config({}, settings_file=path))
        assert message.startswith(f"settings file {str(path)!r}: {key} = ") and f"is {words}; expected" in message, (
            type_name,
            message,
        )


@pytest.mark.parametrize("key", sorted(SETTING_KINDS))
def test_every_setting_of_a_sweep_group_refuses_every_wrong_toml_type(key: str, tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    for type_name, text, words in _wrong(SETTING_KINDS[key]):
        path.write_text(f'[[groups]]\nname = "g"\nparam = "gamma"\nvalues = [0.5]\nsettings = {{ {key} = {text} }}\n')
        message = _refused(lambda: read_sweep_file(path))
        assert message.startswith(f"sweep file {str(path)!r} group 1 settings: {key} = "), (type_name, message)
        assert f"is {words}; expected" in message, (type_name, message)


GROUP = {"name": '"g"', "param": '"gamma"', "values": "[0.5]"}


@pytest.mark.parametrize(("table", "key"), [("sweep", k) for k in SWEEP_KINDS] + [("group", k) for k in GROUP_KINDS])
def test_every_key_of_a_sweep_file_refuses_every_wrong_toml_type(table: str, key: str, tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    kind = SWEEP_KINDS[key] if table == "sweep" else GROUP_KINDS[key]
    for type_name, text, words in _wrong(kind):
        head, group = {}, dict(GROUP)
        (head if table == "sweep" else group)[key] = text
        if key == "range":
            del group["values"]
        lines = ["[sweep]", *(f"{k} = {v}" for k, v in head.items()), "[[groups]]"]
        path.write_text("\n".join([*lines, *(f"{k} = {v}" for k, v in group.items())]) + "\n")
        message = _refused(lambda: expand(read_sweep_file(path)))
        where = f"sweep file {str(path)!r} " + ("[sweep]" if table == "sweep" else "group 1")
        assert message.startswith(f"{where}: {key} = ") and f"is {words}; expected" in message, (type_name, message)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"sweep = 3\n", "[sweep] must be a table"),
        (b"[[sweep]]\n", "[sweep] must be a table"),
        (b"groups = 3\n", "has no [[groups]]"),
        (b"groups = [3]\n", "group 1 must be a table"),
        (b"train = 3\n", "unknown key 'train'"),
    ],
)
def test_a_sweep_files_tables_of_the_wrong_type_are_one_line(
    text: bytes, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_bytes(text)
    code, _, err = run_cli(["sweep", "--file", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err and str(path) in err, err


# --- the inputs issue 24 lists, one by one ---------------------------------------------------------------------------


@pytest.mark.parametrize("param", ['["lambda"]', "{ a = 1 }"])
def test_a_sweep_param_that_is_not_a_string_is_one_line(
    param: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(f'[[groups]]\nname = "g"\nparam = {param}\nvalues = [0.01]\n')
    code, _, err = run_cli(["sweep", "--file", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"sweep file {str(path)!r} group 1: param = " in err and "expected a string: one of lambda" in err


DEEP = {"arrays": "[" * 1000 + "]" * 1000, "tables": "{ a = " * 1000 + "1" + " }" * 1000}


@pytest.mark.parametrize("nesting", sorted(DEEP))
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_file_nested_a_thousand_deep_is_one_line(
    nesting: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deep.toml"
    if command == "train":
        path.write_text(f"[train]\nhidden = {DEEP[nesting]}\n")
        argv = ["train", "--config", str(path)]
    else:
        path.write_text(f'[[groups]]\nname = "g"\nparam = "gamma"\nvalues = {DEEP[nesting]}\n')
        argv = ["sweep", "--file", str(path)]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and "nests arrays or tables too deeply" in err


def test_a_summary_nested_a_thousand_deep_is_one_line(finished: Path, tmp_path: Path) -> None:
    shutil.copytree(finished / "results", tmp_path / "results")
    (run,) = (tmp_path / "results" / "runs").iterdir()
    (run / "summary.json").write_text('{"settings": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ResultsError, match="nests arrays or objects too deeply"):
        report.index_runs(tmp_path / "results")


@pytest.mark.parametrize("length", [100_000, 1_000_000])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_value_of_a_million_characters_is_named_by_a_short_prefix_and_answered_at_once(
    length: int, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "long.toml"
    value = "a" * length
    if command == "train":
        path.write_text(f'[train]\ndataset = "{value}"\n')
        argv = ["train", "--config", str(path)]
    else:
        path.write_text(
            f'[[groups]]\nname = "g"\nparam = "gamma"\nvalues = [0.5]\nsettings = {{ dataset = "{value}" }}\n'
        )
        argv = ["sweep", "--file", str(path)]
    started = time.perf_counter()
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
    assert time.perf_counter() - started < 10, "it ran past 120 s before"
    assert code == 2 and err.count("\n") == 1 and len(err) < 400, err[:400]
    assert f"--dataset='{'a' * 59}… ({length:,} characters) is not known" in err


def test_a_long_value_on_the_command_line_is_named_by_a_short_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["train", "--dataset", "b" * 100_000],
        ["train", "--hidden", "c" * 100_000],
        ["sweep", "gamma", "--range", "d" * 100_000],
    ):
        code, _, err = run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
        assert code == 2 and err.count("\n") == 1 and len(err) < 400 and "(100,000 characters)" in err, err[:400]


def test_masking_passwords_takes_linear_time() -> None:
    from dynhp_bench.sweep import mask_url

    for text in ("a" * 10**6, "?" * 10**6, "a://" * 250_000, "&" + "p" * 10**6, "?password" * 100_000):
        started = time.perf_counter()
        mask_url(text)
        assert time.perf_counter() - started < 2, text[:20]  # the userinfo pattern took 20 s on 100,000 a's
    assert mask_url("x postgresql://ann:hunter2@h:5/db?sslpassword=zz&a=1;pwd=y") == (
        "x postgresql://ann:***@h:5/db?sslpassword=***&a=1;pwd=***"
    )


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_file_over_a_mebibyte_is_refused_unread(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * (2**20 // 10 + 1))
    argv = ["train", "--config", str(path)] if command == "train" else ["sweep", "--file", str(path)]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and str(path) in err and "is larger than 1 MiB" in err, err


def test_an_endless_settings_file_is_refused_without_hanging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero on this system")
    code, _, err = run_cli(["train", "--config", "/dev/zero", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "'/dev/zero' is larger than 1 MiB" in err, err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"[train]\nepochs = " + b"9" * 400 + b"\n", "the integer 1.000e+400 is outside TOML's 64-bit integers"),
        (b"[train]\nepochs = " + b"9" * 5000 + b"\n", "is not valid TOML"),
        (b"[train]\nlr = 9223372036854775808\n", "outside TOML's 64-bit integers"),
    ],
)
def test_integers_beyond_tomls_64_bits_are_one_line(
    text: bytes, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "settings.toml"
    path.write_bytes(text)
    code, _, err = run_cli(["train", "--config", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err and "Traceback" not in err, err[:300]


@pytest.mark.parametrize("flag", ["--epochs", "--seed", "--subset", "--budget-bytes"])
def test_a_400_digit_count_on_the_command_line_is_one_line(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["train", flag, "9" * 400, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and f"{flag}=1.000e+400 is not valid" in err, err[:300]


# --- wrong JSON types in the fields of a run folder's summary.json and a baseline ------------------------------------

JSON_VALUES = st.sampled_from(["x", 3, 0.5, True, None, [1, 2], {"a": 1}, [], {}, -1, 10**30])


def _json_paths(document: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a JSON document's objects (arrays are values)."""
    if not isinstance(document, dict):
        return []
    return [path for key, value in document.items() for path in [(*prefix, key), *_json_paths(value, (*prefix, key))]]


def _set(document: dict[str, object], path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        document = document[key]  # type: ignore[assignment]
    document[path[-1]] = value


@settings(EXAMPLES, max_examples=40)
@given(pick=st.integers(0, 10_000), value=JSON_VALUES)
def test_a_summary_field_of_the_wrong_json_type_is_read_or_refused_naming_it(
    finished: Path, pick: int, value: object
) -> None:
    from dynhp_bench.analysis.baseline import compare, read_baseline

    with scratch() as tmp:
        shutil.copytree(finished, tmp / "root")
        results = tmp / "root" / "results"
        (run,) = (results / "runs").iterdir()
        summary = json.loads((run / "summary.json").read_text())
        paths = _json_paths(summary)
        _set(summary, paths[pick % len(paths)], value)
        (run / "summary.json").write_text(json.dumps(summary))
        try:
            index = report.index_runs(results)
            configs = report.configurations(index.runs)
            report.dataset_table(index.runs)
            for dataset in report.TABLE_NUMBER:
                report.paper_table(configs, dataset)
            entries = report.competitor_entries(Path(__file__).parents[1] / "sweeps" / "competitors_mnist.toml")
            report.competitors_table(configs, entries)
            compare(read_baseline(tmp / "root" / "baseline.json"), index.runs)
        except ResultsError as exc:
            assert str(run / "summary.json") in str(exc), exc


@settings(EXAMPLES, max_examples=40)
@given(pick=st.integers(0, 10_000), value=JSON_VALUES)
def test_a_baseline_field_of_the_wrong_json_type_is_read_or_refused_naming_it(
    finished: Path, pick: int, value: object
) -> None:
    from dynhp_bench.analysis.baseline import compare, read_baseline

    with scratch() as tmp:
        baseline = json.loads((finished / "baseline.json").read_text())
        paths = [*_json_paths(baseline), ("configurations",)]
        entry = baseline["configurations"][0]
        paths += [("configurations", 0, *p) for p in _json_paths(entry)]  # type: ignore[misc]
        path = paths[pick % len(paths)]
        target = baseline
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        (tmp / "baseline.json").write_text(json.dumps(baseline))
        try:
            compare(read_baseline(tmp / "baseline.json"), report.index_runs(finished / "results").runs)
        except ResultsError as exc:
            assert str(tmp / "baseline.json") in str(exc), exc
