"""Every registered strategy honours the base-class contract; Eq. 7, 8 and 10 by hand."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch

from dynhp_bench.memory import batch_cap
from dynhp_bench.models.mlp import GatedMLP
from dynhp_bench.pruning.strategies import STRATEGIES, EpochEnd, GrowthStats, MemoryState, Strategy, WeightPruning
from dynhp_bench.settings.config import TrainConfig

MNIST = 4 * 784  # one MNIST sample's bytes


@pytest.mark.parametrize("key", list(STRATEGIES))
def test_every_registered_strategy_honours_the_contract(key: str) -> None:
    cls = STRATEGIES[key]
    assert issubclass(cls, Strategy)
    assert cls.key == key
    assert set(cls.settings) <= {f.name for f in fields(TrainConfig)}
    config = TrainConfig(strategy=key, batch_size=16)
    strategy = cls(config)
    net = GatedMLP((784, 300, 100, 10), gated=cls.uses_gates)
    rates = [torch.linspace(0, 1, n_in) for n_in, _ in net.shapes] if cls.uses_gates else None
    # Weight pruning: None, or one bool mask per layer shaped like its weight, never after the last epoch.
    falling = tuple(1.0 / (t + 1) ** 3 for t in range(4))  # flattens: DyPrune's dynamic rule prunes at t = 3
    assert strategy.weights_to_prune(net, EpochEnd(1, 20, ())) is None, "nothing to decide from after epoch 1"
    assert strategy.weights_to_prune(net, EpochEnd(4, 4, falling)) is None, "never after the last epoch"
    pruning = strategy.weights_to_prune(net, EpochEnd(4, 20, falling))
    if pruning is not None:
        assert isinstance(pruning, WeightPruning)
        assert [(m.dtype, m.shape) for m in pruning.masks] == [(torch.bool, w.shape) for w in net.weights]
        net.prune_weights(pruning.masks)
    if cls.needs_validation_loss:
        assert config.validation_split is not None and pruning is not None
    masks = strategy.units_to_remove(net, rates)
    assert [m.dtype for m in masks] == [torch.bool] * 3
    assert [m.shape for m in masks] == [torch.Size([n_in]) for n_in, _ in net.shapes]
    assert not bool(masks[0].any()) or cls.uses_gates, "only gated strategies drop input pixels"
    assert isinstance(strategy.removes_physically(), bool)
    if not strategy.removes_physically():
        assert not any(bool(m.any()) for m in masks), "a strategy that keeps memory constant removes nothing"
    stats = GrowthStats(epoch=1, variance_ratio=100.0 if cls.needs_gradient_variance else math.nan)
    memory = MemoryState(config.budget_bytes, 1_066_440, MNIST)
    new_batch = strategy.next_batch_size(16, stats, memory)
    assert isinstance(new_batch, int) and new_batch >= 16
    if memory.cap is not None:
        assert new_batch <= memory.cap
    # Settings a strategy does not read are stored as None, so they never change its run id.
    for name in ("lam", "gamma", "alpha_bs", "budget_bytes"):
        assert (getattr(config, name) is not None) == (name in cls.settings)


def test_hard_pruning_removes_exactly_the_rates_below_gamma() -> None:
    strategy = STRATEGIES["hp"](TrainConfig(strategy="hp", gamma=0.5))
    rates = [torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0])]
    assert strategy.units_to_remove(GatedMLP((5, 2)), rates)[0].tolist() == [True, True, False, False, False]


def test_soft_pruning_and_hard_pruning_keep_the_batch_size() -> None:
    for key in ("dense", "sp", "hp"):
        strategy = STRATEGIES[key](TrainConfig(strategy=key))
        assert strategy.next_batch_size(100, GrowthStats(1, 1e9), MemoryState(None, 10, MNIST)) == 100


@pytest.mark.parametrize(
    ("alpha", "ratio", "rounding", "expected"),
    [
        (0.972, 100.0, "ceil", 16 + 3),  # (1-0.972)·100 = 2.8 → ⌈2.8⌉ = 3
        (0.972, 100.0, "floor", 16 + 2),
        (0.75, 4.0, "ceil", 16 + 1),  # exactly 1: ceil adds nothing extra
        (0.75, 4.0, "floor", 16 + 1),
        (0.972, 100.0, "nearest", 16 + 3),  # 2.8 → 3
        (0.975, 100.0, "nearest", 16 + 3),  # 2.5 → 3 (halves round up)
        (0.976, 100.0, "nearest", 16 + 2),  # 2.4 → 2
        (0.99, 40.0, "nearest", 16),  # 0.4 → 0
        (0.5, 0.0, "ceil", 16),
        (1.0, 1e6, "ceil", 16),
    ],
)
def test_dynhp_growth_follows_eq_8(alpha: float, ratio: float, rounding: str, expected: int) -> None:
    config = TrainConfig(strategy="dynhp", alpha_bs=alpha, growth_rounding=rounding)
    assert (
        STRATEGIES["dynhp"](config).next_batch_size(16, GrowthStats(1, ratio), MemoryState(None, 0, MNIST)) == expected
    )


def test_dynhp_growth_is_capped_by_eq_10() -> None:
    config = TrainConfig(strategy="dynhp", alpha_bs=0.5)
    model = 1_066_440
    memory = MemoryState(config.budget_bytes, model, MNIST)
    assert config.budget_bytes is not None
    cap = batch_cap(config.budget_bytes, model, MNIST)
    assert cap == 512
    strategy = STRATEGIES["dynhp"](config)
    assert strategy.next_batch_size(500, GrowthStats(1, 1000.0), memory) == 512
    # Pruning frees memory: the cap rises by one sample per 3,136 bytes freed.
    assert (
        strategy.next_batch_size(500, GrowthStats(1, 1000.0), MemoryState(config.budget_bytes, model - 31360, MNIST))
        == 522
    )


def test_dynhp_ignores_a_non_finite_ratio() -> None:
    strategy = STRATEGIES["dynhp"](TrainConfig(strategy="dynhp"))
    assert strategy.next_batch_size(16, GrowthStats(1, math.nan), MemoryState(None, 0, MNIST)) == 16
