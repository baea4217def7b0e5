"""The strategies: how each one differs from the others, in three hooks, and the one registry.

Adding a strategy is a subclass of `Strategy`, one line in `STRATEGIES`, and one line in the README.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from dynhp_bench.gates import GatedMLP
from dynhp_bench.metrics import batch_cap

if TYPE_CHECKING:
    from dynhp_bench.config import TrainConfig

GATE_SETTINGS = ("lam", "gate_draws", "lambda_scaling")


@dataclass(frozen=True)
class GrowthStats:
    """What the trainer measured for the batch-size schedule.

    `variance_ratio` is ‖S‖₁ / F (gradient-variance L1 norm over the mini-batch loss, each as the
    `growth_variance`, `growth_correction` and `growth_loss` settings read them) averaged over
    the steps since the last call: the epoch's steps, or the last step with ``growth_cadence="step"``.
    It is NaN when the strategy does not ask for it (`needs_gradient_variance` is False).
    """

    epoch: int
    variance_ratio: float


@dataclass(frozen=True)
class MemoryState:
    """The memory side of Eq. 9-10, after this epoch's pruning."""

    budget_bytes: int | None
    model_bytes: int

    @property
    def cap(self) -> int | None:
        """The largest batch the budget leaves room for, or None without a budget."""
        return None if self.budget_bytes is None else batch_cap(self.budget_bytes, self.model_bytes)


class Strategy:
    """Base class of a training strategy. The trainer owns the loop; a strategy only decides.

    The trainer calls, in each epoch:

    1. the training steps at the current batch size. When `needs_gradient_variance` is True it measures
       ‖S‖₁ / F at every step (costing a little extra per step) for `next_batch_size`;
    2. the evaluation of test error with deterministic gates;
    3. `units_to_remove(net, activation_rates)`, only if `removes_physically()` is True; the trainer then
       slices the weights, biases, gates, Adam moments and input columns of the units marked True.
       The trainer skips this after the last epoch, so the reported model is the one evaluated;
    4. `next_batch_size(batch_size, stats, memory)` for the next epoch (after every step instead, with
       ``growth_cadence="step"``).

    `uses_gates` False gives a plain MLP with no gates and no penalty. `settings` names the fields of
    `TrainConfig` the strategy reads; the others are stored as None for it, and a user naming one of
    them for this strategy gets an error.
    """

    key: ClassVar[str]
    uses_gates: ClassVar[bool] = True
    needs_gradient_variance: ClassVar[bool] = False
    settings: ClassVar[tuple[str, ...]] = GATE_SETTINGS

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def units_to_remove(self, net: GatedMLP, activation_rates: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per gated layer, a bool mask over its input neurons: True removes the neuron for good.

        `activation_rates[l][j]` is a_j of Eq. 6: the share of the epoch's gate draws with z_j > 0.
        """
        return [torch.zeros_like(rates, dtype=torch.bool) for rates in activation_rates]

    def removes_physically(self) -> bool:
        """Whether neurons leave the network during training (memory shrinks)."""
        return False

    def next_batch_size(self, batch_size: int, stats: GrowthStats, memory: MemoryState) -> int:
        """The batch size for what follows; unchanged unless the strategy grows it."""
        return batch_size


class Dense(Strategy):
    """Plain training without gates: the reference every table can be read against."""

    key = "dense"
    uses_gates = False
    settings = ()


class SoftPruning(Strategy):
    """SP: L0 gates learn which neurons matter, but nothing is removed, so memory stays constant."""

    key = "sp"


class HardPruning(Strategy):
    """HP: at each epoch's end, neurons whose activation rate a_j < γ are removed physically, for good."""

    key = "hp"
    settings = (*GATE_SETTINGS, "gamma")

    def units_to_remove(self, net: GatedMLP, activation_rates: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Eq. 7: remove neuron j when a_j < γ."""
        assert self.config.gamma is not None  # set for every pruning strategy by TrainConfig
        return [rates < self.config.gamma for rates in activation_rates]

    def removes_physically(self) -> bool:
        """Yes: rows and columns leave the weight matrices."""
        return True


class DynamicHardPruning(HardPruning):
    """DynHP: hard pruning, plus a batch size that grows by Eq. 8 into the memory freed, capped by Eq. 10."""

    key = "dynhp"
    needs_gradient_variance = True
    settings = (
        *HardPruning.settings,
        "alpha_bs",
        "budget_bytes",
        "growth_cadence",
        "growth_rounding",
        "growth_loss",
        "growth_variance",
        "growth_correction",
    )

    def next_batch_size(self, batch_size: int, stats: GrowthStats, memory: MemoryState) -> int:
        """b + round((1 − α_bs)·‖S‖₁/F) (Eq. 8), then min with ⌊(C − N_i)/(4·784)⌋ (Eq. 10)."""
        assert self.config.alpha_bs is not None  # set for dynhp by TrainConfig
        increment = (1.0 - self.config.alpha_bs) * stats.variance_ratio
        if not math.isfinite(increment):
            increment = 0.0
        rounding = self.config.growth_rounding
        rounded = math.ceil(increment) if rounding == "ceil" else math.floor(increment + (rounding == "nearest") * 0.5)
        candidate = batch_size + max(0, rounded)
        cap = memory.cap
        return candidate if cap is None else min(candidate, cap)


STRATEGIES: dict[str, type[Strategy]] = {
    "dense": Dense,
    "sp": SoftPruning,
    "hp": HardPruning,
    "dynhp": DynamicHardPruning,
}
