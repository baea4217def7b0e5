"""L0 hard-concrete gates (Louizos, Welling & Kingma 2018), the gated MLP, and physical unit removal.

Every Linear layer carries one gate per *input* neuron (784 pixels, then the hidden units); the 10
outputs are never gated. Constants, sampling, P(z≠0), the deterministic evaluation gate, the
initialisation of weights and gates, and the penalty follow the published L0 code (biases: see `GatedMLP`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dynhp_bench import memory
from dynhp_bench.models.network import GatedNetwork, Removal
from dynhp_bench.models.variance import squared_norm, variance_l1

if TYPE_CHECKING:
    from dynhp_bench.models.variance import GradientTap

BETA = 2.0 / 3.0
GAMMA_HC = -0.1
ZETA = 1.1
EPS = 1e-6
LOG_ALPHA_MIN = math.log(0.01)
LOG_ALPHA_MAX = math.log(100.0)
# P(z≠0) = sigmoid(log α − β·log(−γ_hc/ζ)); −β·log(−γ_hc/ζ) = β·ln 11.
P_NONZERO_SHIFT = -BETA * math.log(-GAMMA_HC / ZETA)


def prob_nonzero(log_alpha: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """P(z_j ≠ 0) of each gate: the expected L0 norm contribution (written into `out` when given)."""
    return torch.sigmoid(log_alpha + P_NONZERO_SHIFT, out=out)


def sample_gates(log_alpha: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Hard-concrete draw from uniform `noise` u (shape (n,) or (batch, n)), u already in [ε, 1−ε]."""
    s = torch.sigmoid((torch.logit(noise) + log_alpha) / BETA)  # logit(u) = log u − log(1 − u)
    return (s * (ZETA - GAMMA_HC) + GAMMA_HC).clamp_(0.0, 1.0)


def eval_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    """The deterministic (not binary) evaluation gate: clamp(sigmoid(log α)(ζ−γ)+γ, 0, 1)."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA_HC) + GAMMA_HC).clamp(0.0, 1.0)


def l0_charge_per_output(lam: float, *, n_train: int, divide_by_n: bool) -> float:
    """The L0 charge of one expected non-zero weight: λ/N (the published code's scaling) or λ.

    The one place the λ scaling is decided; `GatedMLP.penalty` and its closed-form gradient both use it.
    """
    return lam / n_train if divide_by_n else lam


def uniform_noise(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """u ~ U(ε, 1−ε) of the given shape."""
    u = torch.rand(*shape, generator=generator, device=device)
    return u.mul_(1.0 - 2.0 * EPS).add_(EPS)


FOLD_MIN_ROWS_FIRST_LAYER = 32


def _fold_min_rows(x: torch.Tensor, weight: torch.Tensor) -> int:
    """Fewest batch rows from which W·diag(g) beats x·diag(g) (measured in docs/performance.md).

    Gating the input costs O(rows·in) element-wise work, folding O(out·in). When the input needs no
    gradient (the first layer), gating it also forces a (rows × out × in) matmul for the input's
    gradient that folding avoids, so folding pays from a few dozen rows.
    """
    return weight.shape[0] if x.requires_grad else min(weight.shape[0], FOLD_MIN_ROWS_FIRST_LAYER)


def _add_grad(param: nn.Parameter, grad: torch.Tensor, *, alpha: float = 1.0) -> None:
    if param.grad is None:
        param.grad = grad * alpha if alpha != 1.0 else grad.clone()
    else:
        param.grad.add_(grad, alpha=alpha)


__all__ = ["GatedMLP", "Removal"]


class GatedMLP(GatedNetwork):
    """A ReLU MLP whose Linear layers each gate their inputs with hard-concrete gates.

    `weights[l]` has shape (out, in), `biases[l]` (out,), `log_alphas[l]` (in,). With ``gated=False`` it
    is a plain MLP (the `dense` strategy): no gates and no penalty. `pruned` is None until weights are
    pruned (`prune_weights`); then `pruned[l]` is a bool tensor shaped like `weights[l]`, True where the
    weight is held at exactly zero for good. Its gate groups are the layers' inputs (`gates_inputs`).
    """

    gates_inputs = True
    supports_weight_pruning = True

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        gated: bool = True,
        drop_rates: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
        zero_biases: bool = False,
    ) -> None:
        super().__init__()
        self.gated = gated
        self._outputs_cache: tuple[tuple[tuple[int, int], ...], torch.Tensor] | None = None
        self.pruned: list[torch.Tensor] | None = None
        shapes = [(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.log_alphas = nn.ParameterList()
        rates = list(drop_rates) if drop_rates is not None else [0.2] + [0.5] * (len(shapes) - 1)
        for (n_in, n_out), rate in zip(shapes, rates, strict=True):
            # Weights He-normal (fan = inputs) and log α as in the published L0 code. Biases are drawn from
            # N(0, 0.01²) by default, or set to 0 as the published L0 layer does (`zero_biases`: nothing is drawn
            # for them, so the draws of later parameters shift).
            weight = torch.randn(n_out, n_in, generator=generator) * math.sqrt(2.0 / n_in)
            bias = torch.zeros(n_out) if zero_biases else torch.randn(n_out, generator=generator) * 1e-2
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(bias))
            if gated:
                mean = math.log((1.0 - rate) / rate)
                self.log_alphas.append(nn.Parameter(mean + 1e-2 * torch.randn(n_in, generator=generator)))

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each layer as the network is now."""
        return [(int(w.shape[1]), int(w.shape[0])) for w in self.weights]

    @property
    def n_gates(self) -> int:
        """Number of gates (input neurons of every layer; 0 for an ungated network)."""
        return sum(a.shape[0] for a in self.log_alphas)

    @property
    def n_layers(self) -> int:
        """Number of Linear layers."""
        return len(self.weights)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Weights and biases (what the paper's model bytes count), without the gates."""
        return [*self.weights, *self.biases]

    def forward(
        self, x: torch.Tensor, gates: Sequence[torch.Tensor] | None = None, *, hooks: GradientTap | None = None
    ) -> torch.Tensor:
        """Logits for rows `x`; each layer's input is multiplied by `gates[l]` when given.

        A gate vector shared by the whole batch is folded into the weights instead (W·diag(g)) when the
        batch is large enough for that to be cheaper (`_fold_min_rows`): the same product, and for the
        first layer no gradient with respect to the input batch at all.
        `hooks`, when given, sees each layer's squared (gated) input norms and the gradient of its output.
        """
        last = self.n_layers - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            gate = gates[layer] if gates is not None else None
            if gate is not None and gate.dim() == 1 and x.shape[0] >= _fold_min_rows(x, weight):
                y = F.linear(x, weight * gate, bias)
                if hooks is not None:
                    hooks.watch(x.detach().square() @ gate.detach().square(), y)
            else:
                if gate is not None:
                    x = x * gate
                y = F.linear(x, weight, bias)
                if hooks is not None:
                    hooks.watch(x.detach().square().sum(1), y)
            x = F.relu(y) if layer < last else y
        return x

    def sample(self, batch: int | None, generator: torch.Generator | None) -> torch.Tensor:
        """One training draw of every layer's gates, concatenated: shape (Σ in,) shared by the batch, or
        (batch, Σ in). `split` cuts it into the per-layer gates `forward` takes."""
        log_alpha = torch.cat(list(self.log_alphas)) if self.gated else torch.zeros(0)
        shape = (log_alpha.shape[0],) if batch is None else (batch, log_alpha.shape[0])
        return sample_gates(log_alpha, uniform_noise(shape, generator, log_alpha.device))

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer views of a tensor laid out like `sample`'s (last dimension over all gates)."""
        return list(flat.split([a.shape[0] for a in self.log_alphas], dim=-1))

    def deterministic_gates(self) -> list[torch.Tensor] | None:
        """The evaluation gates of every layer (None for an ungated network)."""
        return [eval_gates(a) for a in self.log_alphas] if self.gated else None

    def penalty(self, *, lam: float, weight_decay: float, n_train: int, divide_by_n: bool = True) -> torch.Tensor:
        """The expected L0 + L2 penalty of SPEC §1.

        Gate j of a layer with `out` outputs costs P(z_j≠0)·(λ·out/N + ½·wd·‖W_j‖²), W_j being the
        weights leaving input j; biases cost ½·wd·‖b‖². With ``divide_by_n=False`` the L0 charge is
        λ·out (the unscaled form of Eq. 1); the scaling lives in `l0_charge_per_output`.
        """
        scale = l0_charge_per_output(lam, n_train=n_train, divide_by_n=divide_by_n)
        total = torch.zeros((), device=self.weights[0].device, dtype=self.weights[0].dtype)
        probs = self.split(prob_nonzero(torch.cat(list(self.log_alphas))))
        for weight, bias, prob in zip(self.weights, self.biases, probs, strict=True):
            per_input = scale * weight.shape[0] + 0.5 * weight_decay * weight.square().sum(0)
            total = total + (prob * per_input).sum() + 0.5 * weight_decay * bias.square().sum()
        return total

    @torch.no_grad()
    def add_penalty_gradients(
        self, *, lam: float, weight_decay: float, n_train: int, divide_by_n: bool = True
    ) -> torch.Tensor:
        """Add the exact gradient of `penalty` to every parameter's ``.grad``; return the penalty's value.

        The trainer's cheap equivalent of ``penalty(...).backward()``: no autograd graph, a dozen tensor
        operations per layer. With c_j = λ·out/N + ½·wd·‖W_j‖² and P_j = P(z_j≠0): ∂/∂W = wd·W·diag(P),
        ∂/∂b = wd·b, ∂/∂log α_j = P_j(1 − P_j)·c_j. Called after the data loss's backward, so the
        gradients read before it (DynHP's ḡ) are the data loss's alone.
        """
        scale = l0_charge_per_output(lam, n_train=n_train, divide_by_n=divide_by_n)
        prob = prob_nonzero(torch.cat(list(self.log_alphas)))
        # c_j for every gate at once: λ·out/N + ½·wd·‖W_j‖² (out of gate j's layer).
        outs = self._gate_outputs(prob)
        column_sq = torch.cat([w.square().sum(0) for w in self.weights])
        charge = column_sq.mul_(0.5 * weight_decay).add_(outs, alpha=scale)
        bias_sq = torch.stack([b.square().sum() for b in self.biases]).sum()
        value = prob.dot(charge) + 0.5 * weight_decay * bias_sq
        probs = self.split(prob)
        for weight, bias, layer_prob in zip(self.weights, self.biases, probs, strict=True):
            _add_grad(weight, weight * layer_prob, alpha=weight_decay)
            _add_grad(bias, bias, alpha=weight_decay)
        log_alpha_grads = self.split(prob.mul(1.0 - prob).mul_(charge))
        for log_alpha, grad in zip(self.log_alphas, log_alpha_grads, strict=True):
            _add_grad(log_alpha, grad)
        return value

    def _gate_outputs(self, like: torch.Tensor) -> torch.Tensor:
        """For every gate, the number of outputs of its layer (cached until the shapes change)."""
        shapes = tuple(self.shapes)
        if self._outputs_cache is None or self._outputs_cache[0] != shapes:
            outs = torch.cat([torch.full((n_in,), float(n_out)) for n_in, n_out in shapes]).to(like)
            self._outputs_cache = (shapes, outs)
        return self._outputs_cache[1]

    @torch.no_grad()
    def clamp_log_alphas(self) -> None:
        """Keep log α in [ln 0.01, ln 100] (after every optimiser step)."""
        for log_alpha in self.log_alphas:
            log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def nonzero_parameters(self) -> int:
        """Non-zero weights and biases (gates not counted): the unstructured size beside the held one."""
        return int(sum(int(torch.count_nonzero(p)) for p in self.weight_parameters()))

    @torch.no_grad()
    def prune_weights(self, masks: Sequence[torch.Tensor]) -> None:
        """Hold the weights marked True in `masks` (one per layer, shaped like its weight) at zero for good."""
        if self.pruned is None:
            self.pruned = [m.to(torch.bool).clone() for m in masks]
        else:
            self.pruned = [old | new.to(torch.bool) for old, new in zip(self.pruned, masks, strict=True)]
        self.zero_pruned()

    @torch.no_grad()
    def zero_pruned(self) -> None:
        """Set every pruned weight back to exactly zero (after each optimiser step).

        Masking the gradient would not be enough: Adam's moments carry an update for an entry after its
        gradient stops. Overwriting the entry after the step holds it at 0 whatever the moments hold
        (masked_fill, not a multiplication, so even a non-finite update leaves an exact 0).
        """
        if self.pruned is not None:
            for weight, pruned in zip(self.weights, self.pruned, strict=True):
                weight.masked_fill_(pruned, 0.0)

    @torch.no_grad()
    def remove_units(self, keep: Sequence[torch.Tensor]) -> list[Removal]:
        """Physically remove the input neurons of each gated layer where `keep[l]` is False.

        Removing input j of layer l drops column j of W_l and gate j of layer l; for a hidden neuron
        (l > 0) also row j of W_{l−1} and entry j of b_{l−1}. The same Parameter objects are kept (only
        their data shrinks), so an optimiser still holds them; the returned removals say how to slice
        its per-parameter state the same way.
        """
        if len(keep) != self.n_layers:
            raise ValueError(f"expected {self.n_layers} keep masks, got {len(keep)}")
        removals: list[Removal] = []
        for layer, mask in enumerate(keep):
            if bool(mask.all()):
                continue
            index = mask.nonzero().squeeze(1).to(self.weights[layer].device)
            removals.append(Removal(self.weights[layer], 1, index))
            if self.gated:
                removals.append(Removal(self.log_alphas[layer], 0, index))
            if layer > 0:
                removals.append(Removal(self.weights[layer - 1], 0, index))
                removals.append(Removal(self.biases[layer - 1], 0, index))
        layer_of = {id(w): layer for layer, w in enumerate(self.weights)}
        for removal in removals:
            removal.param.data = removal.param.data.index_select(removal.dim, removal.index).contiguous()
            removal.param.grad = None
            layer = layer_of.get(id(removal.param))
            if self.pruned is not None and layer is not None:
                self.pruned[layer] = self.pruned[layer].index_select(removal.dim, removal.index).contiguous()
        return removals

    def unit_counts(self) -> list[int]:
        """Inputs of each Linear layer (784 pixels, then the hidden units)."""
        return [n_in for n_in, _ in self.shapes]

    def held_units(self) -> list[int]:
        """`active_k`: the inputs of Linear layer k."""
        return self.unit_counts()

    def expected_units(self, rates: Sequence[torch.Tensor] | None) -> list[float]:
        """`expected_active_k`: Σ_j a_j over layer k's inputs (the held count without gates)."""
        return [float(r.sum()) for r in rates] if rates is not None else [float(n) for n in self.unit_counts()]

    def footprint_bytes(self, batch_size: int, *, masked: bool = False) -> int:
        """`memory.footprint_bytes` of the layers as they are now."""
        return memory.footprint_bytes(self.shapes, batch_size, gated=self.gated, masked=masked)

    def variance_l1(
        self, tap: GradientTap, x: torch.Tensor, y: torch.Tensor, gates: Sequence[torch.Tensor] | None
    ) -> torch.Tensor:
        """‖S‖₁ from the tap's per-example sums and ḡ (the weights' ``.grad`` after the data loss's backward).

        One pass: the rank-one per-example gradients of a Linear layer need no second forward (variance.py).
        """
        mean_grad_sq = squared_norm(p.grad for p in self.weight_parameters() if p.grad is not None)
        return variance_l1(tap.total, mean_grad_sq, x.shape[0])
