"""Settings: resolution order, validation messages, and the run id."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dynhp_bench.errors import SettingsError
from dynhp_bench.settings.config import DIGEST_OMITTED_AT_DEFAULT, TrainConfig, default_budget_bytes, resolve_config


def test_resolution_order_is_defaults_profile_file_cli(tmp_path: Path) -> None:
    assert resolve_config({}).epochs == 20  # quick profile by default
    assert resolve_config({"profile": "smoke"}).epochs == 2
    assert resolve_config({"profile": "smoke"}).subset == 2000
    settings = tmp_path / "run.toml"
    settings.write_text('[train]\nprofile = "paper"\nepochs = 7\nbatch-size = 32\nstrategy = "hp"\n')
    from_file = resolve_config({}, settings_file=settings)
    assert (from_file.epochs, from_file.batch_size, from_file.strategy, from_file.subset) == (7, 32, "hp", None)
    overridden = resolve_config({"epochs": 3, "batch_size": None}, settings_file=settings)
    assert (overridden.epochs, overridden.batch_size) == (3, 32)


def test_defaults_follow_the_papers_best_configurations() -> None:
    assert resolve_config({"strategy": "sp"}).batch_size == 512
    assert resolve_config({"strategy": "hp"}).batch_size == 100
    assert resolve_config({"strategy": "sp", "dataset": "fashion"}).batch_size == 128
    dynhp = resolve_config({"strategy": "dynhp", "dataset": "fashion"})
    assert (dynhp.batch_size, dynhp.alpha_bs, dynhp.lam, dynhp.gamma) == (16, 0.98, 0.01, 0.5)


def test_default_budget_is_the_best_sp_epoch_memory() -> None:
    assert default_budget_bytes("mnist", (300, 100)) == 1_066_440 + 512 * 3136
    assert default_budget_bytes("fashion", (300, 100)) == 1_066_440 + 128 * 3136
    assert resolve_config({"strategy": "dynhp"}).budget_bytes == 1_066_440 + 512 * 3136


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ({"lam": 1.5}, "--lambda=1.5 is outside (0, 1)"),
        ({"lam": 0.0}, "--lambda=0.0 is outside (0, 1)"),
        ({"alpha_bs": -0.1}, "--alpha-bs=-0.1 is outside [0, 1]"),
        ({"gamma": 2}, "--gamma=2 is outside [0, 1]"),
        ({"dataset": "cifar"}, "--dataset='cifar' is not known; expected one of mnist, fashion"),
        ({"strategy": "magic"}, "--strategy='magic' is not known"),
        ({"profile": "long"}, "--profile='long' is not known"),
        ({"epochs": 0}, "--epochs=0 is not valid"),
        ({"batch_size": -3}, "--batch-size=-3 is not valid"),
        ({"strategy": "sp", "alpha_bs": 0.97}, "--alpha-bs=0.97 does not apply to strategy 'sp'"),
        ({"strategy": "dense", "lambda": 0.1}, "--lambda=0.1 does not apply to strategy 'dense'"),
        ({"strategy": "dynhp", "budget_bytes": 1_000_000}, "smaller than the network (1,066,440 bytes)"),
        ({"hidden": "300"}, "expected two positive layer widths"),
        ({"growth_rounding": "round"}, "--growth-rounding='round' is not known; expected one of ceil, floor"),
        ({"nonsense": 1}, "unknown setting 'nonsense'"),
    ],
)
def test_bad_settings_name_the_value_and_what_is_expected(given: dict[str, object], fragment: str) -> None:
    with pytest.raises(SettingsError, match=None) as info:
        resolve_config(given)
    assert fragment in str(info.value)


def test_a_broken_settings_file_is_a_settings_error(tmp_path: Path) -> None:
    broken = tmp_path / "bad.toml"
    broken.write_text("epochs = [")
    with pytest.raises(SettingsError, match="not valid TOML"):
        resolve_config({}, settings_file=broken)
    with pytest.raises(SettingsError, match="does not exist"):
        resolve_config({}, settings_file=tmp_path / "missing.toml")


def test_run_id_is_stable_readable_and_changes_with_any_setting() -> None:
    a = resolve_config({"strategy": "dynhp", "alpha_bs": 0.973, "seed": 1})
    assert a.run_id == resolve_config({"strategy": "dynhp", "alpha_bs": 0.973, "seed": 1}).run_id
    assert a.run_id.startswith("mnist-dynhp-b16-a0.973-e20-s1-")
    assert a.run_id != resolve_config({"strategy": "dynhp", "alpha_bs": 0.973, "seed": 1, "gamma": 0.4}).run_id


@pytest.mark.parametrize(
    "later", [{"growth_loss": "objective"}, {"growth_variance": "mean"}, {"growth_correction": "bessel"},
              {"ema_decay": 0.999}, {"growth_rounding": "nearest"}, {"growth_smoothing": "running"},
              {"normalize": True}, {"augment": True}, {"arch": "resnet20"}],
)  # fmt: skip
def test_later_settings_leave_default_run_ids_unchanged(later: dict[str, object]) -> None:
    config = resolve_config({"strategy": "dynhp", "alpha_bs": 0.973})
    # The hash of a default config is the hash of the settings that existed before these were added.
    before = {k: v for k, v in config.to_dict().items() if k not in DIGEST_OMITTED_AT_DEFAULT}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:8]
    assert config.run_id.endswith("-" + digest)
    changed = resolve_config({"strategy": "dynhp", "alpha_bs": 0.973, **later})
    assert changed.run_id != config.run_id
    assert TrainConfig.from_dict(changed.to_dict()) == changed  # saved in config.json, read back whole


def test_growth_readings_are_unused_by_other_strategies() -> None:
    assert resolve_config({"strategy": "hp"}).growth_variance is None
    with pytest.raises(SettingsError, match="--growth-loss='objective' does not apply to strategy 'hp'"):
        resolve_config({"strategy": "hp", "growth_loss": "objective"})


@pytest.mark.parametrize("decay", [1.0, -0.5, 1.5, float("nan")])
def test_ema_decay_outside_zero_to_one_is_refused(decay: float) -> None:
    with pytest.raises(SettingsError, match=r"--ema-decay=.* is outside \[0, 1\)"):
        resolve_config({"strategy": "sp", "ema_decay": decay})


def test_the_paper_profile_evaluates_with_the_average_and_zero_turns_it_off() -> None:
    paper = resolve_config({"strategy": "sp", "profile": "paper"})
    assert paper.ema_decay == 0.999 and paper.epochs == 2000
    explicit = resolve_config({"strategy": "sp", "profile": "paper", "ema_decay": 0.999})
    assert explicit == paper and explicit.run_id == paper.run_id  # a calibration run with it given is that run
    off = resolve_config({"strategy": "sp", "profile": "paper", "ema_decay": 0})
    assert off.ema_decay is None and off.run_id != paper.run_id
    for profile in ("smoke", "quick"):
        assert resolve_config({"strategy": "sp", "profile": profile}).ema_decay is None


def test_config_round_trips_through_its_dict() -> None:
    config = resolve_config({"strategy": "dynhp", "hidden": "50,20", "growth_cadence": "step"})
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["lambda"] == 0.01


def test_cifar10_normalises_and_augments_by_default_and_mnist_does_not() -> None:
    cifar = resolve_config({"dataset": "cifar10", "strategy": "sp"})
    assert (cifar.normalize, cifar.augment) == (True, True)
    assert (resolve_config({}).normalize, resolve_config({}).augment) == (False, False)
    plain = resolve_config({"dataset": "cifar10", "strategy": "sp", "augment": False})
    assert plain.run_id != cifar.run_id and plain.run_id.startswith("cifar10-sp-b128-e20-s0-")
    assert TrainConfig.from_dict(cifar.to_dict()) == cifar
    with pytest.raises(SettingsError, match="--augment='yes' is not valid; expected true or false"):
        resolve_config({"augment": "yes"})


def test_cifar10_mlp_and_default_budget_count_3072_input_values() -> None:
    config = resolve_config({"dataset": "cifar10", "strategy": "dynhp"})
    assert config.shapes == [(3072, 300), (300, 100), (100, 10)]
    assert config.sample_bytes == 12_288
    network = 4 * (3072 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    assert config.budget_bytes == default_budget_bytes("cifar10", (300, 100)) == network + 128 * 12_288
    assert (config.batch_size, config.alpha_bs) == (16, 0.98)
