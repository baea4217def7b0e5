"""Sweeps without worker processes: exact grids, sweep files, storage URLs, user errors, and the claim loop's
exactly-once bookkeeping (run in this process against a journal in a temporary folder)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from decimal import Decimal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dynhp_bench.cli.commands import main
from dynhp_bench.errors import SettingsError, StorageError
from dynhp_bench.settings.config import resolve_config
from dynhp_bench.sweep import (
    PAPER_SWEEPS,
    SWEEPS_DIR,
    StorageTarget,
    WorkerPlan,
    command_line_spec,
    expand,
    group_results,
    mask_url,
    open_store,
    parse_range,
    parse_storage,
    parse_values,
    range_points,
    read_sweep_file,
    snapshot,
    work,
)
from dynhp_bench.sweep.storage import FAILED_ATTR, WORKER_ATTR, repair_journal
from dynhp_bench.sweep.worker import claim_next, open_studies, run_ids_of
from dynhp_bench.training.run_folder import COMPLETE_MARKER, RUNS_DIR, RunFolder, run_path
from dynhp_bench.training.trainer import Runtime

SUBSET = 128


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


# --- grids ----------------------------------------------------------------------------------------------------------


def test_a_range_is_exact_with_one_unit_of_its_finest_decimal_as_step() -> None:
    points = range_points(*parse_range("alpha_bs", "0.971:0.989"))
    assert len(points) == 19
    assert [float(p) for p in points] == [float(f"0.{971 + i}") for i in range(19)]  # same floats `train` parses
    assert len(range_points(*parse_range("alpha_bs", "0.97:0.975"))) == 6  # step 0.001, from the finer end
    assert range_points(*parse_range("batch_size", "16:64:16")) == (16, 32, 48, 64)
    assert range_points(*parse_range("gamma", "0.1:0.5:0.1")) == tuple(Decimal(f"0.{i}") for i in range(1, 6))
    assert range_points(*parse_range("gamma", "0.5:0.5")) == (Decimal("0.5"),)


@pytest.mark.parametrize(
    ("param", "text", "fragment"),
    [
        ("alpha_bs", "0.989:0.971", "reversed"),
        ("gamma", "0.1:0.5:0", "expected a positive step"),
        ("gamma", "0.1:0.5:-0.1", "expected a positive step"),
        ("gamma", "0.1:0.5:0.6", "larger than the range"),
        ("gamma", "0.1:0.5:0.3", "does not divide"),
        ("batch_size", "16:64:0.5", "'0.5' is not a whole number"),
        ("batch_size", "16.5:64", "not a whole number"),
        ("gamma", "0.1", "expected A:B"),
        ("gamma", "a:b", "is not a number"),
        ("lambda", "0.000001:0.9", "expected at most 10000"),
        ("momentum", "0.1:0.2", "cannot be swept"),
    ],
)
def test_bad_ranges_name_the_value_and_what_is_expected(param: str, text: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        parse_range(param, text)


def test_value_lists_keep_their_order_and_refuse_duplicates() -> None:
    assert parse_values("batch_size", "512,16,100") == (512, 16, 100)
    with pytest.raises(SettingsError, match="listed twice"):
        parse_values("gamma", "0.5,0.50")


def test_each_point_resolves_to_trains_own_run_id() -> None:
    spec = command_line_spec(
        "alpha_bs", range_text="0.971:0.973", values=None, settings={"dataset": "fashion", "profile": "smoke"}
    )
    sweep = expand(spec, overrides={"dataset": "fashion", "profile": "smoke"}, seeds=(0, 1))
    ids = [p.run_id for p in sweep.points]
    expected = [
        resolve_config({"dataset": "fashion", "profile": "smoke", "alpha_bs": a, "seed": s}).run_id
        for a in (0.971, 0.972, 0.973)
        for s in (0, 1)
    ]
    assert ids == expected and len(set(ids)) == 6


def test_a_parameter_the_strategy_does_not_use_is_refused() -> None:
    spec = command_line_spec("alpha_bs", range_text="0.971:0.973", values=None, settings={"strategy": "sp"})
    with pytest.raises(SettingsError, match="does not apply to strategy 'sp'"):
        expand(spec, overrides={"strategy": "sp"})


# --- sweep files ----------------------------------------------------------------------------------------------------


def test_the_paper_sweep_files_expand_to_the_papers_grids() -> None:
    sweeps = {name: expand(read_sweep_file(SWEEPS_DIR / f"{name}.toml")) for name in PAPER_SWEEPS}

    def settings(name: str, group: str) -> list[tuple]:
        g = next(g for g in sweeps[name].groups if g.name == group)
        return [(p.config.dataset, p.config.strategy, p.config.batch_size, p.config.alpha_bs) for p in g.points]

    assert settings("table2_mnist", "sp") == [("mnist", "sp", 512, None)]
    assert settings("table2_mnist", "hp") == [("mnist", "hp", 100, None)]
    assert settings("table2_mnist", "dynhp") == [("mnist", "dynhp", 16, a) for a in (0.971, 0.972, 0.973, 0.974, 0.975)]
    assert settings("table3_fashion", "sp") == [("fashion", "sp", 128, None)]
    assert settings("table3_fashion", "hp") == [("fashion", "hp", 128, None)]
    assert settings("table3_fashion", "dynhp") == [("fashion", "dynhp", 16, 0.979 + i / 1000) for i in range(11)]
    sizes = [16, 32, 64, 100, 128, 256, 512]
    for name, dataset in (("fig3_mnist_batch", "mnist"), ("fig4_fashion_batch", "fashion")):
        for strategy in ("sp", "hp"):
            assert settings(name, strategy) == [(dataset, strategy, b, None) for b in sizes]
    # The figures share their best-batch runs with the tables: the same run ids, so they are trained once.
    table2 = {p.run_id for p in sweeps["table2_mnist"].points}
    fig3 = {p.run_id for p in sweeps["fig3_mnist_batch"].points}
    assert len(table2 & fig3) == 2
    everything = {p.run_id for s in sweeps.values() for p in s.points}
    assert len(everything) == 7 + 13 + 14 + 14 - 4


def test_the_cifar10_mlp_file_runs_sp_hp_and_dynhp_as_train_would() -> None:
    sweep = expand(read_sweep_file(SWEEPS_DIR / "cifar10_mlp.toml"), overrides={"profile": "smoke"})
    points = {(p.config.strategy, p.config.batch_size, p.config.alpha_bs, p.config.seed): p for p in sweep.points}
    assert sorted(points) == sorted(
        [(s, 128, None, seed) for s in ("sp", "hp") for seed in (0, 1, 2)] + [("dynhp", 16, 0.98, s) for s in (0, 1, 2)]
    )
    for (strategy, batch_size, alpha_bs, seed), point in points.items():
        assert point.config.dataset == "cifar10" and point.config.augment and point.config.normalize
        cli = {"dataset": "cifar10", "strategy": strategy, "batch_size": batch_size, "alpha_bs": alpha_bs,
               "seed": seed, "profile": "smoke"}  # fmt: skip
        assert point.run_id == resolve_config(cli).run_id


def test_the_cifar10_resnet20_file_sets_the_arch_of_every_run() -> None:
    sweep = expand(read_sweep_file(SWEEPS_DIR / "cifar10_resnet20.toml"), overrides={"profile": "smoke"})
    assert {(p.config.dataset, p.config.arch) for p in sweep.points} == {("cifar10", "resnet20")}
    assert sorted({p.config.strategy for p in sweep.points}) == ["dynhp", "hp", "sp"] and len(sweep.points) == 9


def test_the_calibration_file_crosses_every_reading_with_the_grid_ends() -> None:
    sweep = expand(read_sweep_file(SWEEPS_DIR / "calibrate_dynhp.toml"), overrides={"profile": "quick"})
    readings = {"mnist": set(), "fashion": set()}
    for group in sweep.groups:
        configs = [p.config for p in group.points]
        dataset = configs[0].dataset
        assert [c.alpha_bs for c in configs] == ([0.971, 0.973, 0.975] if dataset == "mnist" else [0.979, 0.985, 0.989])
        assert all(c.epochs == 100 and c.subset is None and c.batch_size == 16 for c in configs)
        reading = {(c.growth_cadence, c.growth_rounding, c.growth_loss, c.growth_variance, c.growth_smoothing)
                   for c in configs}  # fmt: skip
        assert len(reading) == 1
        readings[dataset] |= reading
        # train with the same settings lands in the same run folder
        cli = {"dataset": dataset, "strategy": "dynhp", "batch_size": 16, "epochs": 100, "profile": "quick",
               "alpha_bs": configs[0].alpha_bs, **dict(zip(("growth_cadence", "growth_rounding", "growth_loss",
               "growth_variance", "growth_smoothing"), next(iter(reading)), strict=True))}  # fmt: skip
        assert resolve_config(cli).run_id == group.points[0].run_id
    assert readings["mnist"] == readings["fashion"]
    assert ("epoch", "ceil", "data", "examples", "none") in readings["mnist"], "today's default is one of them"
    assert ("step", "nearest", "data", "examples", "running") in readings["mnist"], "Balles et al.'s code too"
    assert len(readings["mnist"]) == len(sweep.groups) // 2


def _sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[sweep]\nname = "x"\n', "has no [[groups]]"),
        ('[[groups]]\nname = "a"\nparam = "gamma"\nvalues = [0.5]\ncolour = 1\n', "unknown key 'colour'"),
        ('[[groups]]\nname = "a"\nvalues = [0.5]\n', "has no param"),
        ('[[groups]]\nname = "a"\nparam = "gamma"\nvalues = [0.5]\nrange = "0.1:0.2"\n', "exactly one of"),
        ('[[groups]]\nname = "a"\nparam = "gamma"\nvalues = [0.5]\n[[groups]]\nname = "a"\nparam = "gamma"\n'
         'values = [0.4]\n', "used twice"),
        ('[[groups]]\nname = "a"\nparam = "gamma"\nvalues = [0.5]\nsettings = { gamma = 0.3 }\n', "cannot also be"),
        ('[[groups]]\nname = "a"\nparam = "gamma"\nrange = "0.5:0.1"\n', "reversed"),
        ('[[groups]]\nname = "a b"\nparam = "gamma"\nvalues = [0.5]\n', "letters, digits"),
        ("[[groups]\n", "not valid TOML"),
    ],
)  # fmt: skip
def test_sweep_file_errors_name_the_file_and_the_problem(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(fragment)) as info:
        read_sweep_file(_sweep_file(tmp_path, text))
    assert "s.toml" in str(info.value)


def test_a_group_setting_wrong_for_its_strategy_names_the_group(tmp_path: Path) -> None:
    path = _sweep_file(
        tmp_path,
        '[[groups]]\nname = "ok"\nparam = "gamma"\nvalues = [0.5]\nsettings = { strategy = "hp" }\n'
        '[[groups]]\nname = "bad"\nparam = "alpha_bs"\nvalues = [0.97]\nsettings = { strategy = "sp" }\n',
    )
    with pytest.raises(SettingsError, match=r"group 'bad': --alpha-bs=0.97 does not apply to strategy 'sp'"):
        expand(read_sweep_file(path))


# --- storage URLs ---------------------------------------------------------------------------------------------------


def test_passwords_are_masked_even_in_urls_that_do_not_parse() -> None:
    assert mask_url("postgresql://ann:s3cr%40t@db:5432/x") == "postgresql://ann:***@db:5432/x"
    assert mask_url("postgresql://ann:p@ss@db/x") == "postgresql://ann:***@db/x"
    assert mask_url("postgresql://db/x") == "postgresql://db/x"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql://ann:hunter2@db:port/x", "is malformed"),
        ("postgresql://ann:hunter2@/x", "names no valid host"),
        ("postgresql://ann:hunter2@db", "names no database"),
        ("postgresql://ann:hunter2@db:70000/x", "expected 1 to 65535"),
        ("sqlite:///study.db", "not supported"),
        ("mysql://ann:hunter2@db/x", "not supported"),
    ],
)
def test_bad_storage_urls_are_refused_without_their_password(tmp_path: Path, url: str, fragment: str) -> None:
    with pytest.raises(StorageError, match=fragment) as info:
        parse_storage(url, tmp_path)
    assert "hunter2" not in str(info.value)


def test_the_default_storage_is_a_journal_in_the_results_folder(tmp_path: Path) -> None:
    assert parse_storage(None, tmp_path) == StorageTarget(journal=tmp_path / "study.journal")
    assert parse_storage("elsewhere.journal", tmp_path).journal == Path("elsewhere.journal")


# --- user errors through the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["sweep", "alpha_bs", "--range", "0.989:0.971"], "reversed"),
        (["sweep", "gamma", "--range", "0.1:0.5:0"], "positive step"),
        (["sweep", "gamma", "--range", "0.1:0.5:1"], "larger than the range"),
        (["sweep", "momentum", "--values", "0.9"], "parameter 'momentum' cannot be swept"),
        (["sweep", "alpha_bs", "--strategy", "sp", "--values", "0.97"], "does not apply to strategy 'sp'"),
        (["sweep", "gamma", "--values", "0.5", "--gamma", "0.4"], "--gamma is the swept parameter"),
        (["sweep", "gamma", "--values", "0.5", "--range", "0.1:0.2"], "exactly one of"),
        (["sweep", "gamma", "--values", "0.5", "--trials", "3"], "needs a range"),
        (["sweep", "--values", "0.5"], "no parameter to sweep"),
        (["sweep", "gamma", "--file", "sweeps/table2_mnist.toml"], "PARAM cannot be combined with --file"),
        (["sweep", "--file", "no/such.toml"], "does not exist"),
        (["sweep", "gamma", "--values", "0.5", "--workers", "0"], "--workers=0"),
        (["sweep", "gamma", "--values", "0.5", "--seeds", "0,x"], "seed 'x'"),
        (["sweep", "gamma", "--values", "0.5", "--storage", "postgresql://ann:hunter2@db:port/x"], "malformed"),
        (["sweep", "gamma", "--values", "0.5", "--storage", "redis://localhost"], "not supported"),
        (["reproduce", "--profile", "huge"], "--profile='huge'"),
    ],
)
def test_sweep_user_errors_are_one_line_exit_2_and_write_nothing(
    argv: list[str], fragment: str, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    code, stdout, err = _run([*argv, "--data-dir", str(synthetic_root), "--out", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "hunter2" not in err + stdout and "Traceback" not in err
    assert not out.exists(), "nothing is written for a bad invocation"


def test_an_unreachable_postgres_is_one_line_without_the_password(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    url = "postgresql://ann:hunter2@127.0.0.1:1/nowhere"  # port 1: refused at once
    code, stdout, err = _run(
        ["sweep", "gamma", "--values", "0.5", "--subset", str(SUBSET), "--data-dir", str(synthetic_root),
         "--out", str(out), "--storage", url],
        capsys,
    )  # fmt: skip
    assert code == 2 and err.startswith("error: cannot reach the study storage postgresql://ann:***@127.0.0.1:1/")
    assert len(err.strip().splitlines()) == 1 and "hunter2" not in err + stdout
    assert not out.exists()


def test_a_subset_larger_than_the_data_is_refused_before_anything_is_written(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    code, _, err = _run(["sweep", "gamma", "--values", "0.5", "--profile", "smoke", "--data-dir",
                         str(synthetic_root), "--out", str(out)], capsys)  # fmt: skip
    assert code == 2 and "--subset=2000 is larger than the 512 training images" in err
    assert not out.exists()


def test_sweep_help_lists_trains_options_under_fixed_settings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["sweep", "--help"], capsys)
    assert code == 0
    for flag in ("--range", "--values", "--seeds", "--trials", "--storage", "--workers", "--alpha-bs", "--lambda",
                 "--budget-bytes", "--growth-cadence", "--data-dir", "--out"):  # fmt: skip
        assert flag in out, flag
    assert "Fixed settings" in out and "--seed " not in out and "--force" not in out


# --- the claim loop, in this process ----------------------------------------------------------------------------------


def _plan(tmp_path: Path, data: Path, values: str, *, seeds: tuple[int, ...] = (0,), trials: int | None = None,
          param: str = "gamma") -> WorkerPlan:  # fmt: skip
    settings = {"strategy": "hp", "profile": "smoke", "subset": SUBSET, "epochs": 1}
    spec = command_line_spec(
        param,
        range_text=values if ":" in values else None,
        values=None if ":" in values else values,
        settings=settings,
        trials=trials,
        sampler="random" if trials else None,
    )
    sweep = expand(spec, overrides=settings, seeds=seeds)
    runtime = Runtime(data_dir=data, results_root=tmp_path, threads=1, device="cpu")
    return WorkerPlan(sweep, parse_storage(None, tmp_path), runtime)


def _trials(plan: WorkerPlan) -> list[optuna.trial.FrozenTrial]:
    store = open_store(plan.storage)
    try:
        return optuna.load_study(study_name=plan.sweep.groups[0].study, storage=store.storage).get_trials()
    finally:
        store.close()


def test_a_worker_runs_every_point_once_and_a_rerun_runs_nothing(synthetic_root: Path, tmp_path: Path) -> None:
    plan = _plan(tmp_path, synthetic_root, "0.3,0.5", seeds=(0, 1))
    assert work(plan, poll_s=0.01) == 4
    trials = _trials(plan)
    grid = [p.run_id for p in plan.sweep.points]
    assert sorted(t.user_attrs["run_id"] for t in trials) == sorted(grid)
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert {t.params["gamma"] for t in trials} == {0.3, 0.5}
    for trial in trials:
        summary = json.loads((run_path(tmp_path, trial.user_attrs["run_id"]) / "summary.json").read_text())
        assert trial.value == summary["final_error_pct"]
        assert trial.user_attrs["training_memory_mb"] == summary["training_memory_mb"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(grid)
    assert work(plan, poll_s=0.01) == 0 and len(_trials(plan)) == 4


def test_a_complete_run_folder_is_recorded_without_training_again(synthetic_root: Path, tmp_path: Path) -> None:
    plan = _plan(tmp_path, synthetic_root, "0.3,0.5")
    work(plan, poll_s=0.01)
    summaries = {
        p.run_id: (run_path(tmp_path, p.run_id) / "summary.json").stat().st_mtime_ns for p in plan.sweep.points
    }
    (tmp_path / "study.journal").unlink()  # a new storage that knows nothing of the two runs
    assert work(plan, poll_s=0.01) == 2
    assert {t.state for t in _trials(plan)} == {TrialState.COMPLETE} and len(_trials(plan)) == 2
    for run_id, mtime in summaries.items():
        assert (run_path(tmp_path, run_id) / "summary.json").stat().st_mtime_ns == mtime


def test_dead_workers_trials_are_failed_and_their_points_claimed_again(synthetic_root: Path, tmp_path: Path) -> None:
    plan = _plan(tmp_path, synthetic_root, "0.3,0.4,0.5")
    group = plan.sweep.groups[0]
    store = open_store(plan.storage)
    try:
        study = open_studies(plan, store)[group.study]
        points = list(group.points)
        # Point 0: claimed by a worker that has died (its lock file is there, nobody holds it).
        study.enqueue_trial({"gamma": 0.3}, user_attrs={"run_id": points[0].run_id})
        dead = study.ask()
        dead.set_user_attr(WORKER_ATTR, {"id": "gone", "host": store.tag.host, "pid": 1})
        (store.locks / "worker-gone.lock").touch()
        # Point 1: a worker died between popping it and tagging it.
        study.enqueue_trial({"gamma": 0.4}, user_attrs={"run_id": points[1].run_id})
        untagged = study.ask()
        # Point 2: left WAITING in the queue by a worker that died before popping it.
        study.enqueue_trial({"gamma": 0.5}, user_attrs={"run_id": "not-a-point-any-more"})
        with store.alive(), store.claim_lock():
            claim = claim_next(plan, {group.study: study}, store)
        states = {t.number: t for t in study.get_trials()}
        assert states[dead.number].state == TrialState.FAIL
        assert "ended without finishing" in states[dead.number].user_attrs[FAILED_ATTR]
        assert states[untagged.number].state == TrialState.FAIL
        assert states[2].state == TrialState.FAIL and "left in the queue" in states[2].user_attrs[FAILED_ATTR]
        assert not isinstance(claim, str) and claim.points == [points[0]]
        assert claim.trial.user_attrs[WORKER_ATTR]["id"] == store.tag.id
    finally:
        store.close()


def test_a_live_workers_trial_is_left_alone(synthetic_root: Path, tmp_path: Path) -> None:
    plan = _plan(tmp_path, synthetic_root, "0.3,0.4")
    group = plan.sweep.groups[0]
    store = open_store(plan.storage)
    try:
        study = open_studies(plan, store)[group.study]
        with store.alive(), store.claim_lock():
            first = claim_next(plan, {group.study: study}, store)
            second = claim_next(plan, {group.study: study}, store)  # the first is RUNNING and its worker alive
            third = claim_next(plan, {group.study: study}, store)
        assert not isinstance(first, str) and not isinstance(second, str)
        assert first.points[0].run_id != second.points[0].run_id
        assert third == "wait"  # both points running: nothing to claim, but not finished either
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING]
    finally:
        store.close()


def test_a_search_runs_the_asked_number_of_trials_on_the_exact_grid(synthetic_root: Path, tmp_path: Path) -> None:
    plan = _plan(tmp_path, synthetic_root, "0.1:0.9:0.2", trials=3, seeds=(0, 1))
    assert work(plan, poll_s=0.01) == 3
    trials = _trials(plan)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    grid = {p.value: p.run_id for p in plan.sweep.points if p.seed == 0}
    for trial in trials:
        value = Decimal(trial.user_attrs["value"])
        assert value in grid and len(run_ids_of(trial)) == 2  # one run per seed
        assert grid[value] in run_ids_of(trial)
    store = open_store(plan.storage)
    try:
        snap = snapshot(plan, open_studies(plan, store))
    finally:
        store.close()
    assert (snap.total, snap.done, snap.left) == (3, 3, 0)
    (result,) = group_results(plan, snap)
    assert result.best_error is not None and result.best_error.final_error_pct == min(t.value for t in trials)


# --- a point is done only while its run folder holds its result (issue 10) ------------------------------------------


def test_a_rerun_retrains_a_deleted_run_and_one_without_its_marker(synthetic_root: Path, tmp_path: Path) -> None:
    plan = _plan(tmp_path, synthetic_root, "0.3,0.4,0.5")
    assert work(plan, poll_s=0.01) == 3
    deleted, unmarked, kept = (run_path(tmp_path, p.run_id) for p in plan.sweep.points)
    kept_at = (kept / "summary.json").stat().st_mtime_ns
    shutil.rmtree(deleted)
    (unmarked / COMPLETE_MARKER).unlink()
    store = open_store(plan.storage)
    try:
        assert snapshot(plan, open_studies(plan, store)).done == 1
    finally:
        store.close()
    assert work(plan, poll_s=0.01) == 2
    assert all(RunFolder(p).has_result() for p in (deleted, unmarked, kept))
    assert (kept / "summary.json").stat().st_mtime_ns == kept_at


def test_a_point_trained_into_another_results_folder_is_not_trained_again(synthetic_root: Path, tmp_path: Path) -> None:
    # Two machines share one storage but each has its own results folder: a point one of them trained counts as
    # done for the other (its folder is not there to check), while its own deleted runs are still retrained.
    journal = parse_storage(str(tmp_path / "shared.journal"), tmp_path)
    machine_a, machine_b = (
        dataclasses.replace(_plan(tmp_path / name, synthetic_root, "0.3,0.4"), storage=journal) for name in "ab"
    )
    assert work(machine_a, poll_s=0.01) == 2
    assert work(machine_b, poll_s=0.01) == 0
    assert not (tmp_path / "b" / RUNS_DIR).exists()
    store = open_store(journal)
    try:
        assert snapshot(machine_b, open_studies(machine_b, store)).done == 2
    finally:
        store.close()
    shutil.rmtree(run_path(tmp_path / "a", machine_a.sweep.points[0].run_id))
    assert work(machine_a, poll_s=0.01) == 1


def test_a_damaged_summary_does_not_count_as_done(synthetic_root: Path, tmp_path: Path) -> None:
    plan = _plan(tmp_path, synthetic_root, "0.3")
    work(plan, poll_s=0.01)
    summary = run_path(tmp_path, plan.sweep.points[0].run_id) / "summary.json"
    summary.write_text('{"run_id": ')
    assert work(plan, poll_s=0.01) == 1
    assert json.loads(summary.read_text())["status"] == "complete"


def test_a_search_retrains_the_value_of_its_failed_trial_before_drawing_new_ones(
    synthetic_root: Path, tmp_path: Path
) -> None:
    plan = _plan(tmp_path, synthetic_root, "0.01:0.99:0.01", trials=1)
    group = plan.sweep.groups[0]
    failed = group.points[57]
    store = open_store(plan.storage)
    try:
        study = open_studies(plan, store)[group.study]
        trial = study.ask()  # a trial whose worker was killed: reaped as FAIL, its run folder left unfinished
        trial.suggest_float("gamma", 0.01, 0.99, step=0.01)
        for key, value in (("group", group.name), ("value", str(failed.value)), ("run_ids", [failed.run_id])):
            trial.set_user_attr(key, value)
        study.tell(trial, state=TrialState.FAIL)
    finally:
        store.close()
    assert work(plan, poll_s=0.01) == 1
    assert RunFolder(run_path(tmp_path, failed.run_id)).has_result()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [failed.run_id]


def test_a_torn_journal_tail_is_set_aside_and_the_sweep_goes_on(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sweep", "gamma", "--values", "0.3,0.5", "--strategy", "hp", "--profile", "smoke", "--subset",
            str(SUBSET), "--epochs", "1", "--data-dir", str(synthetic_root), "--out", str(tmp_path), "--quiet",
            "--threads", "1"]  # fmt: skip
    assert _run(argv, capsys)[0] == 0
    journal = tmp_path / "study.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-7])  # the last operation cut short, as a full disk leaves it
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    (warning,) = [line for line in err.splitlines() if "damaged" in line]
    (aside,) = tmp_path.glob("study.journal.damaged-*")
    assert str(journal) in warning and str(aside) in warning
    assert aside.read_bytes() == whole[whole.rstrip(b"\n").rfind(b"\n") + 1 : -7]
    assert "2 of 2 trials done" in out
    assert _run(argv, capsys)[0] == 0  # and every later command reads it


def test_repair_keeps_every_complete_line_and_leaves_a_whole_journal_alone(tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    journal.write_bytes(b'{"op": 1}\n{"op": 2}\n')
    assert repair_journal(journal) is None and journal.read_bytes() == b'{"op": 1}\n{"op": 2}\n'
    journal.write_bytes(b'{"op": 1}\n{"op": 2\n{"op": 3}\n')  # a garbled line: it and all after it go aside
    note = repair_journal(journal)
    assert note is not None and "kept its 1 complete operations" in note
    assert journal.read_bytes() == b'{"op": 1}\n'
    assert next(tmp_path.glob("study.journal.damaged-*")).read_bytes() == b'{"op": 2\n{"op": 3}\n'


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://host:1/db?password=hunter2", "hunter2"),
        ("postgresql://ann@host:1/db?sslmode=require&password=hunter2&x=1", "hunter2"),
        ("error: cannot reach postgresql://ann:hunter2@db/x?PassWord=swordfish", "swordfish"),
        ("postgresql://db/x?sslpassword=hunter2#frag", "hunter2"),
    ],
)
def test_a_password_in_a_urls_query_string_is_masked(text: str, secret: str) -> None:
    masked = mask_url(text)
    assert secret not in masked and "hunter2" not in masked
    assert masked.count("***") == text.count("hunter2") + text.count("swordfish")  # nothing else is touched


def test_a_query_string_password_never_reaches_the_terminal(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = _run(["sweep", "gamma", "--values", "0.5", "--subset", str(SUBSET), "--data-dir",
                              str(synthetic_root), "--out", str(tmp_path / "r"), "--storage",
                              "postgresql://127.0.0.1:1/nowhere?user=ann&password=hunter2"], capsys)  # fmt: skip
    assert code == 2 and "hunter2" not in err + stdout and "password=***" in err
