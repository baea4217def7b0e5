"""The strategies: how each one differs from the others, in a few hooks, and the one registry.

Adding a strategy is a subclass of `Strategy`, one line in `STRATEGIES`, and one line in the README.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from dynhp_bench.memory import batch_cap
from dynhp_bench.models.mlp import GatedMLP
from dynhp_bench.models.network import GatedNetwork

if TYPE_CHECKING:
    from dynhp_bench.settings.config import TrainConfig

GATE_SETTINGS = ("lam", "gate_draws", "lambda_scaling")
DYPRUNE_SETTINGS = (
    "prune_schedule", "prune_interval", "slope_min", "slope_max", "prune_rate", "reset_optimizer", "reset_biases",
)  # fmt: skip
DYPRUNE_COOLDOWN = 2  # eligible epochs without pruning after a dynamic pruning step, as published


@dataclass(frozen=True)
class GrowthStats:
    """What the trainer measured for the batch-size schedule.

    `variance_ratio` is ‖S‖₁ / F (gradient-variance L1 norm over the mini-batch loss, each as the
    `growth_variance`, `growth_correction`, `growth_loss` and `growth_smoothing` settings read them) averaged over
    the steps since the last call: the epoch's steps, or the last step with ``growth_cadence="step"``.
    It is NaN when the strategy does not ask for it (`needs_gradient_variance` is False).
    """

    epoch: int
    variance_ratio: float


@dataclass(frozen=True)
class EpochEnd:
    """What the trainer knows at an epoch's end, after evaluation, for `weights_to_prune`.

    `epoch` counts from 1 to `epochs`. `validation_losses` holds the mean cross-entropy on the validation
    split after each epoch so far, this one last; it is empty when the run has no validation split.
    """

    epoch: int
    epochs: int
    validation_losses: tuple[float, ...]


@dataclass(frozen=True)
class WeightPruning:
    """Weights to hold at exactly zero from now on, and what the trainer resets with them.

    `masks[l]` is a bool tensor shaped like Linear layer l's weight (out, in): True prunes the weight
    (weights already pruned stay pruned). `reset_optimizer` starts Adam afresh (its moments are lost);
    `reset_biases` draws every bias again as a new `nn.Linear` would, U(±1/√fan_in).
    """

    masks: list[torch.Tensor]
    reset_optimizer: bool = False
    reset_biases: bool = False


@dataclass(frozen=True)
class MemoryState:
    """The memory side of Eq. 9-10, after this epoch's pruning; `sample_bytes` is one training sample's bytes in
    the paper's metric (`memory.sample_bytes`: 4 · 784 for MNIST)."""

    budget_bytes: int | None
    model_bytes: int
    sample_bytes: int

    @property
    def cap(self) -> int | None:
        """The largest batch the budget leaves room for, or None without a budget."""
        return None if self.budget_bytes is None else batch_cap(self.budget_bytes, self.model_bytes, self.sample_bytes)


class Strategy:
    """Base class of a training strategy. The trainer owns the loop; a strategy only decides.

    The trainer calls, in each epoch:

    1. the training steps at the current batch size. When `needs_gradient_variance` is True it measures
       ‖S‖₁ / F at every step (costing a little extra per step) for `next_batch_size`. Weights pruned by
       step 3 of an earlier epoch are set back to exactly zero after every optimiser step;
    2. the evaluation of test error with deterministic gates, and, when the run has a validation split
       (``validation_split``, which `needs_validation_loss` makes compulsory), the validation loss;
    3. `weights_to_prune(net, end)`; when it returns a `WeightPruning`, the trainer holds those weights
       at zero for good (an unstructured mask) and resets what it asks for after step 4;
    4. `units_to_remove(net, activation_rates)`, only if `removes_physically()` is True; the trainer then
       slices the weights, masks, biases, gates, Adam moments and input columns of the units marked True;
    5. `next_batch_size(batch_size, stats, memory)` for the next epoch (after every step instead, with
       ``growth_cadence="step"``); `grows_batch` True says it may return more than it was given (estimates
       made at the initial batch size are then upper bounds).

    Steps 3 and 4 are skipped after the last epoch, so the reported model is the one evaluated.
    `uses_gates` False gives a plain network with no gates and no penalty. `prunes_weights` True says the
    strategy returns `WeightPruning`s, which only an architecture with `supports_weight_pruning` takes
    (TrainConfig refuses the others). Every hook sees the network through `network.GatedNetwork`, whatever
    the architecture. `settings` names the fields of
    `TrainConfig` the strategy reads; the others are stored as None for it, and a user naming one of
    them for this strategy gets an error.
    """

    key: ClassVar[str]
    uses_gates: ClassVar[bool] = True
    needs_gradient_variance: ClassVar[bool] = False
    needs_validation_loss: ClassVar[bool] = False
    grows_batch: ClassVar[bool] = False
    prunes_weights: ClassVar[bool] = False
    settings: ClassVar[tuple[str, ...]] = GATE_SETTINGS

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def weights_to_prune(self, net: GatedNetwork, end: EpochEnd) -> WeightPruning | None:
        """Weights to hold at zero from now on (see `WeightPruning`), or None to prune none."""
        return None

    def units_to_remove(self, net: GatedNetwork, activation_rates: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
        """Per gate group (`net.unit_counts()`: an MLP layer's inputs, a ResNet block's inner channels), a bool
        mask over its units: True removes the unit for good.

        `activation_rates[g][j]` is a_j of Eq. 6: the share of the epoch's gate draws with z_j > 0
        (None for a network without gates).
        """
        return [torch.zeros(n, dtype=torch.bool) for n in net.unit_counts()]

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

    def units_to_remove(self, net: GatedNetwork, activation_rates: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
        """Eq. 7: remove neuron j when a_j < γ."""
        assert self.config.gamma is not None  # set for every pruning strategy by TrainConfig
        assert activation_rates is not None  # HP's network is gated
        return [rates < self.config.gamma for rates in activation_rates]

    def removes_physically(self) -> bool:
        """Yes: rows and columns leave the weight matrices."""
        return True


class DynamicHardPruning(HardPruning):
    """DynHP: hard pruning, plus a batch size that grows by Eq. 8 into the memory freed, capped by Eq. 10."""

    key = "dynhp"
    needs_gradient_variance = True
    grows_batch = True
    settings = (
        *HardPruning.settings,
        "alpha_bs",
        "budget_bytes",
        "growth_cadence",
        "growth_rounding",
        "growth_loss",
        "growth_variance",
        "growth_correction",
        "growth_smoothing",
    )

    def next_batch_size(self, batch_size: int, stats: GrowthStats, memory: MemoryState) -> int:
        """b + round((1 − α_bs)·‖S‖₁/F) (Eq. 8), then min with ⌊(C − N_i)/sample bytes⌋ (Eq. 10)."""
        assert self.config.alpha_bs is not None  # set for dynhp by TrainConfig
        increment = (1.0 - self.config.alpha_bs) * stats.variance_ratio
        if not math.isfinite(increment):
            increment = 0.0
        rounding = self.config.growth_rounding
        rounded = math.ceil(increment) if rounding == "ceil" else math.floor(increment + (rounding == "nearest") * 0.5)
        candidate = batch_size + max(0, rounded)
        cap = memory.cap
        return candidate if cap is None else min(candidate, cap)


class DyPrune(Strategy):
    """DyPrune (Jonker et al., EPIA 2023): global L1 magnitude pruning of the weights, at a rate scaled to the
    network's size, when the validation loss flattens (or every k epochs); dead neurons then leave.

    A plain MLP, as in the published code: no gates, no penalty. See `pruning_epochs`, `pruning_rate`,
    `magnitude_masks` and `dead_neurons` for the three rules, and SPEC §7.
    """

    key = "dyprune"
    uses_gates = False
    needs_validation_loss = True
    prunes_weights = True
    settings = DYPRUNE_SETTINGS

    def weights_to_prune(self, net: GatedNetwork, end: EpochEnd) -> WeightPruning | None:
        """The rule of `pruning_epochs` replayed over the validation losses; at the rate of `pruning_rate`."""
        config = self.config
        assert config.prune_schedule is not None and config.prune_interval is not None  # set by TrainConfig
        assert config.slope_min is not None and config.slope_max is not None
        chosen = pruning_epochs(
            end.validation_losses,
            epochs=end.epochs,
            schedule=config.prune_schedule,
            interval=config.prune_interval,
            slope_min=config.slope_min,
            slope_max=config.slope_max,
        )
        if end.epoch - 1 not in chosen:
            return None
        assert isinstance(net, GatedMLP)  # TrainConfig allows DyPrune on the MLP only
        nonzero = sum(int(torch.count_nonzero(w)) for w in net.weights)
        rate = config.prune_rate if config.prune_rate is not None else pruning_rate(nonzero)
        return WeightPruning(
            magnitude_masks(net.weights, net.pruned, rate),
            reset_optimizer=bool(config.reset_optimizer),
            reset_biases=bool(config.reset_biases),
        )

    def removes_physically(self) -> bool:
        """Yes: neurons cut off by pruned weights leave the weight matrices."""
        return True

    def units_to_remove(self, net: GatedNetwork, activation_rates: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
        """The dead neurons of `dead_neurons` (none before the first pruning)."""
        if net.pruned is None:
            return super().units_to_remove(net, activation_rates)
        assert isinstance(net, GatedMLP)  # TrainConfig allows DyPrune on the MLP only
        return dead_neurons(net.pruned)


def pruning_rate(nonzero: int) -> float:
    """DyPrune's rate for a network with `nonzero` non-zero weights: (ln(nonzero) − 6) / 10 in [0, 0.9]."""
    if nonzero <= 0:
        return 0.0
    return min(max((math.log(nonzero) - 6.0) / 10.0, 0.0), 0.9)


def pruning_epochs(
    validation_losses: Sequence[float],
    *,
    epochs: int,
    schedule: str,
    interval: int,
    slope_min: float,
    slope_max: float,
) -> list[int]:
    """The 0-based epochs t after which DyPrune prunes, given the validation losses v_0, v_1, … so far.

    For each t > 0 that is not the last epoch, d = v_t − v_{t−1} joins the history L (never reset).
    With no cooldown left and min(L) < 0 (the loss has fallen at least once): *dynamic* prunes when
    slope_min ≤ L[-1] / min(L) ≤ slope_max (the loss still falls, by at most slope_max of its steepest
    fall) and then waits 2 eligible epochs; *static* prunes when t % interval == 0, with no cooldown.
    Otherwise the cooldown counts down by one. The rule depends on nothing but the losses, so it is
    replayed from them (a resumed run needs no other state).
    """
    history: list[float] = []
    cooldown = 0
    chosen: list[int] = []
    for t in range(1, len(validation_losses)):
        if t + 1 >= epochs:  # never after the last epoch
            break
        history.append(validation_losses[t] - validation_losses[t - 1])
        if cooldown > 0:
            cooldown -= 1
            continue
        steepest = min(history)
        if steepest >= 0:
            continue
        if schedule == "dynamic":
            if slope_min <= history[-1] / steepest <= slope_max:
                chosen.append(t)
                cooldown = DYPRUNE_COOLDOWN
        elif t % interval == 0:
            chosen.append(t)
    return chosen


def magnitude_masks(
    weights: Sequence[torch.Tensor], pruned: Sequence[torch.Tensor] | None, rate: float
) -> list[torch.Tensor]:
    """Global unstructured L1 pruning: the round(rate · n) smallest |w| of the n weights still unpruned,
    ranked over every weight matrix together (biases never), on top of those `pruned` already.

    Returns the new masks (True = pruned), old prunings included. Ties at the threshold go to the
    lower flat index (torch.topk), as `torch.nn.utils.prune.global_unstructured` ranks them.
    """
    old = [torch.zeros_like(w, dtype=torch.bool) for w in weights] if pruned is None else list(pruned)
    scores = torch.cat([w.detach().abs().masked_fill(p, math.inf).flatten() for w, p in zip(weights, old, strict=True)])
    unpruned = int(sum(int((~p).sum()) for p in old))
    count = round(rate * unpruned)  # Python's round, as torch's pruning uses
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    if count > 0:
        chosen[torch.topk(scores, count, largest=False, sorted=False).indices] = True
    return [p | c.view_as(p) for p, c in zip(old, chosen.split([p.numel() for p in old]), strict=True)]


def dead_neurons(pruned: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, its input neurons cut off by pruned weights (True), for `units_to_remove`.

    A first-hidden-layer neuron goes when all its outgoing weights are pruned; a deeper hidden neuron
    when all its incoming or all its outgoing weights are. Input pixels and outputs never go. Repeated
    until nothing changes, since removing a neuron can cut off one in the next or previous layer.
    Removing a neuron whose incoming weights are all pruned drops the constant relu(b) it fed forward,
    as the published code does; every other removal leaves the network's function as it was.
    """
    alive = [torch.ones(p.shape[1], dtype=torch.bool, device=p.device) for p in pruned]
    outputs_alive = torch.ones(pruned[-1].shape[0], dtype=torch.bool, device=pruned[-1].device)
    changed = True
    while changed:
        changed = False
        for layer in range(1, len(pruned)):
            receivers = alive[layer + 1] if layer + 1 < len(pruned) else outputs_alive
            dead = ~(~pruned[layer] & receivers[:, None]).any(0)
            if layer >= 2:
                dead |= ~(~pruned[layer - 1] & alive[layer - 1][None, :]).any(1)
            still = alive[layer] & ~dead
            if not torch.equal(still, alive[layer]):
                alive[layer] = still
                changed = True
    return [~a for a in alive]


STRATEGIES: dict[str, type[Strategy]] = {
    "dense": Dense,
    "sp": SoftPruning,
    "hp": HardPruning,
    "dynhp": DynamicHardPruning,
    "dyprune": DyPrune,
}
