"""The one interface every architecture implements (`GatedNetwork`), and what a unit removal hands back.

The trainer and the strategies see a network only through this class: `gates.GatedMLP` and
`resnet.GatedResNet` implement it, and `architectures.ARCHITECTURES` names them. A *gate group* is
one set of units that one layer of hard-concrete gates watches (the MLP: each Linear layer's inputs;
the ResNet: each basic block's inner channels); the gates of all groups are laid out one after the
other in `sample`'s flat tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from dynhp_bench.memory import BYTES_PER_FLOAT

if TYPE_CHECKING:
    from dynhp_bench.models.variance import GradientTap


@dataclass(frozen=True)
class Removal:
    """One tensor's slice after units were removed: keep `index` along `dim` (apply it to Adam's moments too)."""

    param: nn.Parameter
    dim: int
    index: torch.Tensor


class GatedNetwork(nn.Module):
    """Base class of a network with L0 hard-concrete gates on groups of units that can leave it physically.

    The trainer calls, per training step: `sample` (when `gated`), `split`, `forward` (with the tap when
    the strategy needs the gradient variance), the data loss's backward, `variance_l1` (DynHP only, before
    the penalty's gradient is added), `add_penalty_gradients` (when `gated`), the optimiser step,
    `zero_pruned` (when `pruned` is set) and `clamp_log_alphas` (when `gated`). At each epoch's end:
    `deterministic_gates` and `forward` in eval mode for the test error, the record's counts
    (`model_bytes`, `trainable_parameters`, `nonzero_parameters`, `footprint_bytes`, `held_units`,
    `expected_units`), then `remove_units` with the strategy's masks (`unit_counts` gives their lengths).

    `gated` False is the plain network of `dense` / `dyprune`: no gates, no penalty. `pruned` is None
    unless the network supports unstructured weight pruning (`supports_weight_pruning`, DyPrune's).
    `gates_inputs` says whether the first gate group is the input features, whose removal also drops
    the input columns the trainer feeds.
    """

    gates_inputs: ClassVar[bool] = False
    supports_weight_pruning: ClassVar[bool] = False
    gated: bool
    log_alphas: nn.ParameterList
    pruned: list[torch.Tensor] | None = None

    @property
    def n_gates(self) -> int:
        """Number of gates over all groups (0 for an ungated network)."""
        return sum(a.shape[0] for a in self.log_alphas)

    def unit_counts(self) -> list[int]:
        """Units of each gate group as the network is now (also for an ungated network)."""
        raise NotImplementedError

    def held_units(self) -> list[int]:
        """The three `active_k` columns of the epoch record (see `training.record.EpochRecord`)."""
        raise NotImplementedError

    def expected_units(self, rates: Sequence[torch.Tensor] | None) -> list[float]:
        """The three `expected_active_k` columns: the activation rates summed like `held_units`."""
        raise NotImplementedError

    def weight_parameters(self) -> list[nn.Parameter]:
        """The trained model's parameters (what model bytes count), without the gates."""
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, gates: Sequence[torch.Tensor] | None = None, *, hooks: GradientTap | None = None
    ) -> torch.Tensor:
        """Logits for the flat image rows `x`, each group's units multiplied by `gates[g]` when given
        (shape (units,) shared by the batch, or (batch, units)); `hooks` is the MLP's gradient tap."""
        raise NotImplementedError

    def sample(self, batch: int | None, generator: torch.Generator | None) -> torch.Tensor:
        """One training draw of every gate, concatenated over groups: shape (n_gates,) or (batch, n_gates)."""
        raise NotImplementedError

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-group views of a tensor laid out like `sample`'s (last dimension over all gates)."""
        return list(flat.split([a.shape[0] for a in self.log_alphas], dim=-1))

    def deterministic_gates(self) -> list[torch.Tensor] | None:
        """The evaluation gates of every group (None for an ungated network)."""
        raise NotImplementedError

    def penalty(self, *, lam: float, weight_decay: float, n_train: int, divide_by_n: bool = True) -> torch.Tensor:
        """The expected L0 + L2 penalty (SPEC §1), differentiable."""
        raise NotImplementedError

    def add_penalty_gradients(
        self, *, lam: float, weight_decay: float, n_train: int, divide_by_n: bool = True
    ) -> torch.Tensor:
        """Add `penalty`'s gradient to every parameter's ``.grad``; return the penalty's value."""
        raise NotImplementedError

    def variance_l1(
        self, tap: GradientTap, x: torch.Tensor, y: torch.Tensor, gates: Sequence[torch.Tensor] | None
    ) -> torch.Tensor:
        """‖S‖₁ of the weight parameters' per-example data-loss gradients for the batch (x, y), after the
        data loss's backward and before the penalty's gradients (`tap` saw that forward and backward)."""
        raise NotImplementedError

    def clamp_log_alphas(self) -> None:
        """Keep log α in [ln 0.01, ln 100] (after every optimiser step)."""
        raise NotImplementedError

    def zero_pruned(self) -> None:
        """Set weights held at zero back to exactly zero (networks with `supports_weight_pruning`)."""

    def prune_weights(self, masks: Sequence[torch.Tensor]) -> None:
        """Hold the weights marked True at zero for good (networks with `supports_weight_pruning`)."""
        raise NotImplementedError(f"{type(self).__name__} does not support weight pruning")

    def remove_units(self, keep: Sequence[torch.Tensor]) -> list[Removal]:
        """Physically remove the units of each group where `keep[g]` is False; the same Parameter objects
        are kept (their data shrinks) and the returned removals say how to slice optimiser state alike."""
        raise NotImplementedError

    def footprint_bytes(self, batch_size: int, *, masked: bool = False) -> int:
        """What training holds at this batch size (parameters ×4, activations, batch): see memory.py."""
        raise NotImplementedError

    def model_bytes(self) -> int:
        """The paper's model bytes: 4 · the parameters of `weight_parameters` (gates not counted)."""
        return BYTES_PER_FLOAT * sum(p.numel() for p in self.weight_parameters())

    def trainable_parameters(self) -> int:
        """Every trained parameter, gates' log α included."""
        return sum(p.numel() for p in self.parameters())

    def nonzero_parameters(self) -> int:
        """Non-zero entries of `weight_parameters` (gates not counted)."""
        return int(sum(int(torch.count_nonzero(p)) for p in self.weight_parameters()))
