"""Property: every `dynhp-bench` invocation succeeds or ends with exit status 2 and one line naming the problem.

The options get numbers of every size and sign, non-numbers, lists, paths and URLs. Training itself is
replaced by a recording double (it is tested elsewhere): what is under test is the command line's
parsing and validation in front of it, which must never let a traceback through.
"""

from __future__ import annotations

import contextlib
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynhp_bench.cli import commands as cli
from dynhp_bench.cli.commands import main
from dynhp_bench.training.trainer import RunResult

TEXT = st.text(alphabet=string.printable.replace("\x0b", "").replace("\x0c", ""), max_size=12)
NUMBER_TEXT = st.one_of(
    st.integers(min_value=-(10**15), max_value=10**15).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "1", "-1", "1e3", "0x10", "1_000", "", " ", "nan", "inf", "2.5"]),
    TEXT,
)
CHOICES = [
    "mnist",
    "fashion",
    "sp",
    "hp",
    "dynhp",
    "dense",
    "smoke",
    "quick",
    "paper",
    "cpu",
    "auto",
    "cuda",
    "MNIST",
    "",
]
CHOICE_TEXT = st.one_of(st.sampled_from(CHOICES), TEXT)
LIST_TEXT = st.one_of(st.lists(st.integers(-5, 600).map(str), max_size=4).map(",".join), TEXT)
PATH_TEXT = st.one_of(st.sampled_from(["/nonexistent/x.toml", "postgresql://u:secret@localhost:1/db", "."]), TEXT)

TRAIN_OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--dataset": CHOICE_TEXT, "--strategy": CHOICE_TEXT, "--profile": CHOICE_TEXT, "--device": CHOICE_TEXT,
    "--epochs": NUMBER_TEXT, "--batch-size": NUMBER_TEXT, "--seed": NUMBER_TEXT, "--subset": NUMBER_TEXT,
    "--budget-bytes": NUMBER_TEXT, "--threads": NUMBER_TEXT, "--checkpoint-every": NUMBER_TEXT,
    "--lambda": NUMBER_TEXT, "--gamma": NUMBER_TEXT, "--alpha-bs": NUMBER_TEXT, "--hidden": LIST_TEXT,
    "--gate-draws": CHOICE_TEXT, "--growth-cadence": CHOICE_TEXT, "--growth-rounding": CHOICE_TEXT,
    "--lambda-scaling": CHOICE_TEXT, "--config": PATH_TEXT, "--resume": PATH_TEXT, "--growth-loss": CHOICE_TEXT,
    "--growth-variance": CHOICE_TEXT, "--growth-correction": CHOICE_TEXT, "--ema-decay": NUMBER_TEXT,
}  # fmt: skip
DECIMAL_TEXT = st.one_of(
    st.decimals(min_value=-2, max_value=600, places=3, allow_nan=False).map(str), st.sampled_from(["0.9", "1e-3", ""])
)
RANGE_TEXT = st.one_of(
    st.lists(DECIMAL_TEXT, min_size=1, max_size=3).map(":".join),
    st.sampled_from(["0.971:0.989", "0.975:0.971", "0.97:0.98:0", "16:512:1000", "0.5:0.6:0.01"]),
    TEXT,
)
URL_TEXT = st.one_of(
    st.sampled_from(["postgresql://u:secret@127.0.0.1:1/db", "postgresql://u:secret@/x", "mysql://u:secret@h/d",
                     "postgresql://", "study.journal", "sub/dir/s.journal"]),
    TEXT,
)  # fmt: skip
SWEEP_OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--range": RANGE_TEXT, "--values": st.one_of(LIST_TEXT, st.lists(DECIMAL_TEXT, max_size=3).map(",".join)),
    "--seeds": LIST_TEXT, "--trials": NUMBER_TEXT, "--sampler": st.one_of(st.sampled_from(["tpe", "random"]), TEXT),
    "--storage": URL_TEXT, "--workers": NUMBER_TEXT, "--threads": NUMBER_TEXT, "--heartbeat-s": NUMBER_TEXT,
    "--strategy": CHOICE_TEXT, "--dataset": CHOICE_TEXT, "--profile": CHOICE_TEXT, "--epochs": NUMBER_TEXT,
    "--batch-size": NUMBER_TEXT, "--alpha-bs": NUMBER_TEXT, "--lambda": NUMBER_TEXT,
}  # fmt: skip
SWEEP_PARAMS = st.one_of(st.sampled_from(["lambda", "gamma", "alpha_bs", "batch_size", "lr", ""]), TEXT)
BENCH_OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--dataset": CHOICE_TEXT, "--batch-sizes": LIST_TEXT, "--repeats": NUMBER_TEXT, "--threads": NUMBER_TEXT,
    "--device": CHOICE_TEXT, "--subset": NUMBER_TEXT,
}  # fmt: skip


def _invocations(options: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[tuple[str, str]]]:
    return st.lists(st.sampled_from(sorted(options)).flatmap(lambda o: options[o].map(lambda v: (o, v))), max_size=5)


def _check(argv: list[str], pairs: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]) -> int:
    capsys.readouterr()  # what an earlier example printed before it was stopped is not this one's
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    code = info.value.code or 0
    assert "Traceback" not in out + err
    assert code in (0, 2), f"{argv} exited {code}: {err}"
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{argv}: {err!r}"
        named = [flag for flag, _ in pairs] + [cli._one_line(v.strip()) for _, v in pairs if v.strip()]
        assert any(part in lines[0] for part in named) or "settings file" in lines[0], f"{argv}: {lines[0]}"
        assert "secret" not in lines[0], "a URL's password is never printed"
    return code


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    calls: list[Any] = []

    def fake_train(config: Any, runtime: Any, **kwargs: Any) -> RunResult:
        calls.append((config, runtime))
        summary = {"run_id": config.run_id, "final_error_pct": 1.0, "best_error_pct": 1.0, "best_epoch": 1,
                   "model_size_mb": 1.0, "model_bytes": 4, "training_memory_mb": 0.1, "mean_memory_mb": 1.0,
                   "epochs": config.epochs, "batch_size_initial": config.batch_size,
                   "batch_size_final": config.batch_size, "active_final": [1, 1, 1], "wall_s": 0.0,
                   "peak_rss_bytes": 0}  # fmt: skip
        return RunResult(tmp_path, summary)

    monkeypatch.setattr(cli, "train", fake_train)
    monkeypatch.setattr(cli, "run_bench", lambda *a, **k: pytest.fail("bench validation let a bad value through"))
    return calls


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=_invocations(TRAIN_OPTIONS))
def test_train_options_never_crash(pairs: list[tuple[str, str]], recorded: list[Any], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["train", "--out", str(tmp_path / "out"), "--quiet"] + [part for pair in pairs for part in pair]
    before = len(recorded)
    if _check(argv, pairs, capsys) == 0:
        config, _ = recorded[before]
        assert config.epochs >= 1 and config.batch_size >= 1
    else:
        assert len(recorded) == before, "nothing runs after a bad value"
        assert not (tmp_path / "out").exists(), "nothing is written after a bad value"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=_invocations(BENCH_OPTIONS))
def test_bench_options_never_crash(pairs: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    class _ValidatedError(Exception):
        """Every option was accepted: validation is done before the data is loaded."""

    def stop_before_loading(*args: object, **kwargs: object) -> None:
        raise _ValidatedError

    monkeypatch.setattr(cli, "load_dataset", stop_before_loading)
    argv = ["bench", "--out", str(tmp_path / "out")] + [part for pair in pairs for part in pair]
    with contextlib.suppress(_ValidatedError):
        _check(argv, pairs, capsys)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(param=SWEEP_PARAMS, pairs=_invocations(SWEEP_OPTIONS))
def test_sweep_options_never_crash(param: str, pairs: list[tuple[str, str]], synthetic_root: Path,
                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    class _ValidatedError(Exception):
        """Every option was accepted: the sweep would start its workers now."""

    def stop_before_running(*args: object, **kwargs: object) -> None:
        raise _ValidatedError

    monkeypatch.setattr(cli, "run_pool", stop_before_running)
    monkeypatch.chdir(tmp_path)  # a --storage text is a journal path, relative to here
    argv = ["sweep", param, "--data-dir", str(synthetic_root), "--out", str(tmp_path / "out"), "--quiet"]
    argv += [part for pair in pairs for part in pair]
    with contextlib.suppress(_ValidatedError):
        _check(argv, [("parameter", param), *pairs], capsys)
