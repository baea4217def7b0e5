"""The CIFAR ResNet of He et al. 2016 (§4.2) with an L0 gate on each basic block's inner channels.

Layout: a 3×3 stem convolution to 16 channels, then 3 stages of n basic blocks with 16, 32 and 64
channels (depth 6n + 2: 20, 32, 44, 56 for n = 3, 5, 7, 9), global average pooling and one Linear
layer. The first block of stages 2 and 3 halves the resolution with a stride-2 convolution. Shortcuts
are He et al.'s option A (identity; subsampled and padded with zero channels where the shape changes),
so they carry no parameters.

What is gated, and why: each basic block's *inner* channels, between its two convolutions (after the
first convolution's batch norm and ReLU). Following Louizos, Welling & Kingma (2018), who gate a
convolution's output feature maps as groups, gate j zeroes feature map j of the block's first
convolution; nothing else reads that map, so removing it is structurally safe and exact: conv1's
filter j, batch norm 1's entries j (γ, β, running mean and variance), conv2's input slice j and gate j
leave together. The block's output channels are not gated: they are summed with the shortcut, and every
block of a stage shares them, so removing one would need the same channel gone from the whole stage.

A block whose inner channels are all removed keeps its shortcut; its residual branch is then conv2 of an
all-zero input, i.e. zeros through batch norm 2, which is what the masked network computes too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dynhp_bench.memory import BYTES_PER_FLOAT
from dynhp_bench.models.mlp import (
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    _add_grad,
    eval_gates,
    l0_charge_per_output,
    prob_nonzero,
    sample_gates,
    uniform_noise,
)
from dynhp_bench.models.network import GatedNetwork, Removal

if TYPE_CHECKING:
    from dynhp_bench.models.variance import GradientTap

STAGE_CHANNELS = (16, 32, 64)
KERNEL = 3
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
DEPTHS = (20, 32, 44, 56)


def blocks_per_stage(depth: int) -> int:
    """n of a depth-(6n + 2) CIFAR ResNet."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"ResNet depth {depth} is not 6n + 2 with n ≥ 1")
    return (depth - 2) // 6


def resnet_weight_count(depth: int, in_channels: int, n_classes: int) -> int:
    """Parameters of the full network without gates: convolutions, batch norms' γ and β, the Linear layer."""
    count = STAGE_CHANNELS[0] * in_channels * KERNEL**2 + 2 * STAGE_CHANNELS[0]
    c_in = STAGE_CHANNELS[0]
    for c_out in STAGE_CHANNELS:
        for _ in range(blocks_per_stage(depth)):
            count += c_out * c_in * KERNEL**2 + 2 * c_out + c_out * c_out * KERNEL**2 + 2 * c_out
            c_in = c_out
    return count + STAGE_CHANNELS[-1] * n_classes + n_classes


def _conv_weight(c_out: int, c_in: int, generator: torch.Generator | None) -> nn.Parameter:
    """He-normal in fan-out mode (torchvision's ResNet initialisation)."""
    std = math.sqrt(2.0 / (c_out * KERNEL**2))
    return nn.Parameter(torch.randn(c_out, c_in, KERNEL, KERNEL, generator=generator) * std)


@dataclass
class _Record:
    """One layer's output and what its per-example weight gradients need (see `GatedResNet.per_example_gradients`).

    kind ``conv``: params (weight,), saved the layer input, stride; ``bn``: params (γ, β), saved x̂;
    ``linear``: params (W, b), saved the layer input.
    """

    kind: str
    params: tuple[nn.Parameter, ...]
    saved: torch.Tensor
    output: torch.Tensor
    stride: int = 1

    def gradients(self, delta: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """Per-example gradients (batch first) of each parameter, from δ_i = ∂loss_i/∂output_i."""
        if self.kind == "conv":
            # The weight gradient of a grouped convolution with one group per example: the examples' inputs
            # and output gradients side by side as channels of a batch of one (several times faster on the CPU
            # than unfold and a batched matrix product).
            (weight,) = self.params
            batch = delta.shape[0]
            per_example = torch.nn.grad.conv2d_weight(
                self.saved.reshape(1, -1, *self.saved.shape[2:]),
                (batch * weight.shape[0], *weight.shape[1:]),
                delta.reshape(1, -1, *delta.shape[2:]),
                stride=self.stride,
                padding=1,
                groups=batch,
            )
            return [(weight, per_example.view(batch, *weight.shape))]
        if self.kind == "bn":
            gamma, beta = self.params
            return [(gamma, (delta * self.saved).sum((2, 3))), (beta, delta.sum((2, 3)))]
        weight, bias = self.params
        return [(weight, torch.einsum("bo,bi->boi", delta, self.saved)), (bias, delta)]


def _conv(x: torch.Tensor, weight: torch.Tensor, stride: int, records: list[_Record] | None) -> torch.Tensor:
    out = F.conv2d(x, weight, stride=stride, padding=1)
    if records is not None:
        records.append(_Record("conv", (weight,), x.detach(), out, stride))  # type: ignore[arg-type]
    return out


class BatchNorm(nn.Module):
    """2-d batch norm as parameters and buffers that `GatedResNet.remove_units` can slice.

    With `records` (the gradient-variance pass) the batch's statistics are taken as constants, so each
    example's loss depends on its own example alone; the running statistics are then left untouched.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, h: torch.Tensor, records: list[_Record] | None = None) -> torch.Tensor:
        """Normalise with the batch's statistics in training mode, the running ones in eval mode."""
        if records is None:
            return F.batch_norm(
                h, self.running_mean, self.running_var, self.weight, self.bias, self.training, BN_MOMENTUM, BN_EPS
            )
        # The batch's mean and 1/√(var + ε) from the training-mode kernel, on a detached input: constants.
        saved, mean, inv_std = torch.native_batch_norm(h.detach(), None, None, None, None, True, 0.0, BN_EPS)
        scale = inv_std * self.weight  # γ·(h − μ)/σ + β as one multiply-add over the maps
        out = h * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]
        records.append(_Record("bn", (self.weight, self.bias), saved, out))
        return out


class BasicBlock(nn.Module):
    """conv 3×3 → BN → ReLU → gate → conv 3×3 → BN, plus the option-A shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, generator: torch.Generator | None) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.conv1 = _conv_weight(c_out, c_in, generator)
        self.bn1 = BatchNorm(c_out)
        self.conv2 = _conv_weight(c_out, c_out, generator)
        self.bn2 = BatchNorm(c_out)

    @property
    def inner_channels(self) -> int:
        """The gated channels still held between the two convolutions."""
        return int(self.conv1.shape[0])

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None, records: list[_Record] | None) -> torch.Tensor:
        """The block's output; `gate` (shape (inner,) or (batch, inner)) multiplies the inner channels."""
        if self.inner_channels > 0:
            h = F.relu(self.bn1(_conv(x, self.conv1, self.stride, records), records))
            if gate is not None:
                h = h * (gate[:, None, None] if gate.dim() == 1 else gate[:, :, None, None])
            h = _conv(h, self.conv2, 1, records)
        else:  # conv2 of nothing: zeros, as the fully masked block computes
            rows, cols = ((size - 1) // self.stride + 1 for size in x.shape[2:])
            h = x.new_zeros(x.shape[0], self.c_out, rows, cols)
        return F.relu(self.bn2(h, records) + _shortcut(x, self.c_out, self.stride))

    def gated_slices(self) -> list[tuple[nn.Parameter, int]]:
        """The parameters that inner channel j owns, as (parameter, dimension indexed by j)."""
        return [(self.conv1, 0), (self.bn1.weight, 0), (self.bn1.bias, 0), (self.conv2, 1)]

    def parameters_per_channel(self) -> int:
        """Parameters one inner channel owns: a conv1 filter, γ and β, a conv2 input slice."""
        return self.c_in * KERNEL**2 + 2 + self.c_out * KERNEL**2


def _shortcut(x: torch.Tensor, c_out: int, stride: int) -> torch.Tensor:
    """Option A: identity, subsampled by `stride`, with zero channels appended up to `c_out`."""
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    if x.shape[1] < c_out:
        x = F.pad(x, (0, 0, 0, 0, 0, c_out - x.shape[1]))
    return x


class GatedResNet(GatedNetwork):
    """He et al.'s CIFAR ResNet of `depth` layers on images of `input_shape` (C, H, W), read from flat rows.

    Gate groups: one per basic block, over its inner channels (module docstring). The penalty charges
    gate j P(z_j≠0)·(λ/N·m + ½·wd·‖θ_j‖²), m being the parameters channel j owns (`parameters_per_channel`)
    and θ_j those parameters; every other parameter costs ½·wd·‖θ‖² (batch norms' γ and β included).
    """

    def __init__(
        self,
        depth: int,
        input_shape: tuple[int, int, int],
        n_classes: int = 10,
        *,
        gated: bool = True,
        drop_rate: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.gated = gated
        self.input_shape = tuple(input_shape)
        n = blocks_per_stage(depth)
        self.stem = _conv_weight(STAGE_CHANNELS[0], input_shape[0], generator)
        self.stem_bn = BatchNorm(STAGE_CHANNELS[0])
        self.blocks = nn.ModuleList()
        self.stage_of: list[int] = []
        c_in = STAGE_CHANNELS[0]
        for stage, c_out in enumerate(STAGE_CHANNELS):
            for index in range(n):
                self.blocks.append(BasicBlock(c_in, c_out, 2 if stage > 0 and index == 0 else 1, generator))
                self.stage_of.append(stage)
                c_in = c_out
        bound = 1.0 / math.sqrt(c_in)  # nn.Linear's default initialisation
        self.fc_weight = nn.Parameter(torch.rand(n_classes, c_in, generator=generator) * 2 * bound - bound)
        self.fc_bias = nn.Parameter(torch.rand(n_classes, generator=generator) * 2 * bound - bound)
        self.log_alphas = nn.ParameterList()
        if gated:
            mean = math.log((1.0 - drop_rate) / drop_rate)
            for block in self._blocks():
                noise = torch.randn(block.inner_channels, generator=generator)
                self.log_alphas.append(nn.Parameter(mean + 1e-2 * noise))

    def _blocks(self) -> list[BasicBlock]:
        return [block for block in self.blocks if isinstance(block, BasicBlock)]

    def unit_counts(self) -> list[int]:
        """Inner channels of each basic block."""
        return [block.inner_channels for block in self._blocks()]

    def held_units(self) -> list[int]:
        """`active_k`: the inner channels held in stage k + 1, summed over its blocks."""
        held = [0] * len(STAGE_CHANNELS)
        for stage, count in zip(self.stage_of, self.unit_counts(), strict=True):
            held[stage] += count
        return held

    def expected_units(self, rates: Sequence[torch.Tensor] | None) -> list[float]:
        """`expected_active_k`: Σ_j a_j over stage k + 1's inner channels (the held count without gates)."""
        if rates is None:
            return [float(n) for n in self.held_units()]
        expected = [0.0] * len(STAGE_CHANNELS)
        for stage, rate in zip(self.stage_of, rates, strict=True):
            expected[stage] += float(rate.sum())
        return expected

    def weight_parameters(self) -> list[nn.Parameter]:
        """Convolutions, batch norms' γ and β, the Linear layer: everything but the gates."""
        return [p for name, p in self.named_parameters() if not name.startswith("log_alphas")]

    def forward(
        self, x: torch.Tensor, gates: Sequence[torch.Tensor] | None = None, *, hooks: GradientTap | None = None
    ) -> torch.Tensor:
        """Logits for flat rows `x`; `gates[b]` multiplies block b's inner channels. `hooks` is not used: the
        gradient variance takes its own pass (`variance_l1`)."""
        return self._forward(x, gates, None)

    def _forward(
        self, x: torch.Tensor, gates: Sequence[torch.Tensor] | None, records: list[_Record] | None
    ) -> torch.Tensor:
        h = x.view(x.shape[0], *self.input_shape)
        h = F.relu(self.stem_bn(_conv(h, self.stem, 1, records), records))
        for index, block in enumerate(self._blocks()):
            h = block(h, gates[index] if gates is not None else None, records)
        pooled = h.mean((2, 3))
        logits = F.linear(pooled, self.fc_weight, self.fc_bias)
        if records is not None:
            records.append(_Record("linear", (self.fc_weight, self.fc_bias), pooled.detach(), logits))
        return logits

    def sample(self, batch: int | None, generator: torch.Generator | None) -> torch.Tensor:
        """One training draw of every block's gates, concatenated (shape (n_gates,) or (batch, n_gates))."""
        log_alpha = torch.cat(list(self.log_alphas)) if self.gated else torch.zeros(0)
        shape = (log_alpha.shape[0],) if batch is None else (batch, log_alpha.shape[0])
        return sample_gates(log_alpha, uniform_noise(shape, generator, log_alpha.device))

    def deterministic_gates(self) -> list[torch.Tensor] | None:
        """The evaluation gates of every block (None for an ungated network)."""
        return [eval_gates(a) for a in self.log_alphas] if self.gated else None

    def penalty(self, *, lam: float, weight_decay: float, n_train: int, divide_by_n: bool = True) -> torch.Tensor:
        """The expected L0 + L2 penalty of the class docstring."""
        scale = l0_charge_per_output(lam, n_train=n_train, divide_by_n=divide_by_n)
        total = torch.zeros((), device=self.fc_weight.device)
        gated_ids: set[int] = set()
        if self.gated:
            for block, log_alpha in zip(self._blocks(), self.log_alphas, strict=True):
                squares = torch.zeros_like(log_alpha)
                for param, dim in block.gated_slices():
                    others = [d for d in range(param.dim()) if d != dim]
                    squares = squares + (param.square().sum(others) if others else param.square())
                    gated_ids.add(id(param))
                charge = scale * block.parameters_per_channel() + 0.5 * weight_decay * squares
                total = total + (prob_nonzero(log_alpha) * charge).sum()
        for param in self.weight_parameters():
            if id(param) not in gated_ids:
                total = total + 0.5 * weight_decay * param.square().sum()
        return total

    def add_penalty_gradients(
        self, *, lam: float, weight_decay: float, n_train: int, divide_by_n: bool = True
    ) -> torch.Tensor:
        """`penalty`'s gradient by autograd (a few dozen small tensors), added to each ``.grad``."""
        params = list(self.parameters())
        with torch.enable_grad():
            value = self.penalty(lam=lam, weight_decay=weight_decay, n_train=n_train, divide_by_n=divide_by_n)
            grads = torch.autograd.grad(value, params, allow_unused=True)
        with torch.no_grad():
            for param, grad in zip(params, grads, strict=True):
                if grad is not None:
                    _add_grad(param, grad)
        return value.detach()

    def per_example_gradients(
        self, x: torch.Tensor, y: torch.Tensor, gates: Sequence[torch.Tensor] | None
    ) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """g_i for every weight parameter: the gradient of example i's cross-entropy, batch dimension first.

        Batch norm uses the batch's statistics, taken as constants, so loss_i depends on example i alone
        and one backward of Σ_i loss_i to the layer outputs gives every δ_i. From δ_i and the layer's saved
        input: a convolution's g_i = its weight gradient for example i alone, batch norm's g_i(γ) = Σ_pixels δ_i·x̂_i and
        g_i(β) = Σ_pixels δ_i, the Linear layer's g_i = δ_i a_iᵀ and δ_i.
        """
        records: list[_Record] = []
        fixed = None if gates is None else [g.detach() for g in gates]
        with torch.enable_grad():
            logits = self._forward(x, fixed, records)
            loss = F.cross_entropy(logits, y, reduction="sum")
            deltas = torch.autograd.grad(loss, [r.output for r in records])
        return [pair for record, delta in zip(records, deltas, strict=True) for pair in record.gradients(delta)]

    def variance_l1(
        self, tap: GradientTap, x: torch.Tensor, y: torch.Tensor, gates: Sequence[torch.Tensor] | None
    ) -> torch.Tensor:
        """‖S‖₁ = Σ over parameters of (1/B)·Σ_i g_i² − ḡ², ḡ the mean of the `per_example_gradients`.

        A second forward and backward pass (to the layer outputs only) with batch norm's statistics held;
        `tap` is not used.
        """
        batch = x.shape[0]
        sum_sq = torch.zeros((), device=x.device)
        mean_sq = torch.zeros((), device=x.device)
        for _, per_example in self.per_example_gradients(x, y, gates):
            sum_sq = sum_sq + per_example.square().sum()
            mean_sq = mean_sq + per_example.mean(0).square().sum()
        return (sum_sq / batch - mean_sq).clamp_min(0.0)

    @torch.no_grad()
    def clamp_log_alphas(self) -> None:
        """Keep log α in [ln 0.01, ln 100] (after every optimiser step)."""
        for log_alpha in self.log_alphas:
            log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    @torch.no_grad()
    def remove_units(self, keep: Sequence[torch.Tensor]) -> list[Removal]:
        """Remove inner channel j of block b where `keep[b][j]` is False: conv1's filter, batch norm 1's γ, β
        and running statistics, conv2's input slice and the gate."""
        blocks = self._blocks()
        if len(keep) != len(blocks):
            raise ValueError(f"expected {len(blocks)} keep masks, got {len(keep)}")
        removals: list[Removal] = []
        for number, (block, mask) in enumerate(zip(blocks, keep, strict=True)):
            if bool(mask.all()):
                continue
            index = mask.nonzero().squeeze(1).to(block.conv1.device)
            removals += [Removal(param, dim, index) for param, dim in block.gated_slices()]
            if self.gated:
                removals.append(Removal(self.log_alphas[number], 0, index))
            block.bn1.running_mean = block.bn1.running_mean.index_select(0, index)
            block.bn1.running_var = block.bn1.running_var.index_select(0, index)
        for removal in removals:
            removal.param.data = removal.param.data.index_select(removal.dim, removal.index).contiguous()
            removal.param.grad = None
        return removals

    def footprint_bytes(self, batch_size: int, *, masked: bool = False) -> int:
        """An estimate of what training holds: parameters (gates too) ×4 (values, gradients, Adam's two
        moments), batch norms' running statistics, per example three maps per convolution (its output, batch
        norm's, the ReLU's; a fourth for the gated inner maps), and the batch with its int64 labels.
        `masked` is unused (no weight masks)."""
        channels, rows, cols = self.input_shape
        image = channels * rows * cols
        activations = 3 * STAGE_CHANNELS[0] * rows * cols
        for block in self._blocks():
            rows, cols = (rows - 1) // block.stride + 1, (cols - 1) // block.stride + 1
            inner = block.inner_channels * rows * cols
            activations += (4 if self.gated else 3) * inner + 3 * block.c_out * rows * cols
        buffers = sum(b.numel() for b in self.buffers())
        per_example = BYTES_PER_FLOAT * (activations + image) + 8
        params = self.trainable_parameters()
        return BYTES_PER_FLOAT * (4 * params + buffers) + batch_size * per_example
