"""The fast path: the MLP's training step written out by hand, with every parameter a view of one flat buffer.

The reference path (`train.AutogradStep`) builds an autograd graph of ~230 tensor operations a step for SP; at
batch 16 a step's cost is the fixed cost of those operations, not arithmetic (docs/performance.md). This
module computes the same step in about a third as many:

* forward: per layer one ``addmm`` (the shared gate folded into the weights or multiplied into the input by the
  same rule as `GatedMLP.forward`, so the logits are the reference's to the bit), one ReLU;
* loss: the ATen kernels autograd itself calls for cross-entropy and its gradient;
* backward: per layer the weight-gradient ``mm``, the bias-gradient sum, the input-gradient ``mm``, the gate's
  gradient, the ReLU mask (``threshold_backward``); the gates' chain rule through the hard-concrete draw for all
  gates at once;
* DynHP's statistic of `variance` read from the δ and inputs the backward already has (‖ḡ‖² one dot product);
* the penalty's gradient (`GatedMLP.add_penalty_gradients`' formulas) over the flat log α, the flat biases and
  one ``addcmul`` per weight;
* Adam as one fused call over one tensor, the log α clamp one call, DyPrune's mask one ``masked_fill``.

Under ``--step fast`` a gated network's element-wise passes run as compiled loops (`kernels`, where a C compiler
is found): per layer one pass over M = δᵀ·h and W for the weight gradient with the penalty's decay, the gates'
gradient, the column sums of W² and DynHP's ‖ḡ‖²; DynHP's per-example norms one call per layer; the shared
gates' draw and their chain rule with the penalty one call each. ``--step fast_torch`` (and ``fast`` where the
loops cannot be built) computes the same with the PyTorch operations above.

Weights, biases and log α are views of one flat buffer (in `GatedMLP.parameters()` order), and so are their
gradients and Adam's moments: `FastStep.bind` packs them at the start of an epoch's steps (shapes change only
between epochs), so checkpoints, pruning, EMA and evaluation see ordinary parameters and optimiser state.
`FastStep.covers` says when it applies (the gated or plain MLP on the CPU, fused Adam); the trainer uses the
reference path otherwise. Tests hold it to the reference path's gradients (tests/test_fastpath.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dynhp_bench.models.mlp import (
    BETA,
    EPS,
    FOLD_MIN_ROWS_FIRST_LAYER,
    GAMMA_HC,
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    ZETA,
    GatedMLP,
    l0_charge_per_output,
    prob_nonzero,
    uniform_noise,
)
from dynhp_bench.models.variance import variance_l1
from dynhp_bench.training import kernels

if TYPE_CHECKING:
    from dynhp_bench.training.trainer import StepTotals, Trainer

# d gate / d log α = (ζ − γ)/β · s(1 − s) where the draw is not clamped (s the sigmoid of the draw).
GATE_SLOPE = (ZETA - GAMMA_HC) / BETA
MEAN_REDUCTION = 1  # ATen's Reduction::Mean
IGNORE_INDEX = -100  # F.cross_entropy's default


@dataclass
class _Layer:
    """One Linear layer's views into the flat buffers, and what its forward keeps for the backward."""

    weight: torch.Tensor
    bias: torch.Tensor
    weight_grad: torch.Tensor
    weight_grad_flat: torch.Tensor  # the same, one row
    bias_grad: torch.Tensor
    gates: slice  # its columns in the flat gate layout (empty for an ungated network)
    fold_min_rows: int
    scratch: torch.Tensor  # (out, in) work space: W·diag(g) when the gate is folded into the weight
    scratch_grad: torch.Tensor  # (out, in) work space: W² for the penalty, then the folded weight's gradient
    grad_sq: torch.Tensor  # 0-dim: ‖∂(data loss)/∂W‖² (DynHP's ‖ḡ‖², weights' share)
    weight_t: torch.Tensor  # Wᵀ and (W·diag(g))ᵀ, the views the forward multiplies by, made once
    scratch_t: torch.Tensor
    # Views of the shared (one draw per batch) gate buffers, made once: slicing them each step costs an operation.
    gate: torch.Tensor | None = None  # the draw
    gate_grad: torch.Tensor | None = None  # d(data loss)/d gate
    prob: torch.Tensor | None = None  # P(gate ≠ 0)
    column_sq: torch.Tensor | None = None  # Σ_i W_ij², then the gate's charge c_j


class FastStep:
    """One epoch's training steps of a `GatedMLP` (gated or plain) under fused Adam, without autograd.

    Made by `bind` at the start of an epoch's steps; `gradients` then `update` per step, as the reference path.
    """

    def __init__(self, trainer: Trainer) -> None:
        net, optimizer = trainer.net, trainer.optimizer
        self.net = net
        self.config = trainer.config
        self.generator = trainer.device_generator
        self.n_train = trainer.n_train
        self.track_variance = trainer.strategy.needs_gradient_variance
        self.growth_ratio = trainer.growth_ratio
        self.per_example = trainer.config.gate_draws == "example"
        # The compiled loops (`kernels`) for a gated network under ``--step fast``; None: PyTorch operations.
        self.kernels = kernels.for_step(trainer.step_kind, trainer.device) if net.gated else None
        params = list(net.parameters())
        device = params[0].device
        sizes = [p.numel() for p in params]
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.flat)
        group = optimizer.param_groups[0]
        self.lr = float(group["lr"])
        self.beta1, self.beta2 = (float(b) for b in group["betas"])
        self.eps = float(group["eps"])
        states = [optimizer.state[p] for p in params]
        if all(len(s) == 0 for s in states):  # before Adam's first step: its lazy initialisation, all at once
            self.exp_avg = torch.zeros_like(self.flat)
            self.exp_avg_sq = torch.zeros_like(self.flat)
            self.step_count = torch.zeros((), dtype=torch.float32, device=device)
        else:
            self.exp_avg = torch.cat([s["exp_avg"].reshape(-1) for s in states])
            self.exp_avg_sq = torch.cat([s["exp_avg_sq"].reshape(-1) for s in states])
            self.step_count = states[0]["step"].clone()
        # Every parameter, its gradient and its moments become views of the flat buffers.
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        for i, (param, state) in enumerate(zip(params, states, strict=True)):
            part = slice(offsets[i], offsets[i + 1])
            param.data = self.flat[part].view_as(param)
            param.grad = self.grad[part].view_as(param)
            state["exp_avg"] = self.exp_avg[part].view_as(param)
            state["exp_avg_sq"] = self.exp_avg_sq[part].view_as(param)
            state["step"] = self.step_count  # one counter for all, given back one each by `release`
        self.optimizer_state = states
        n_layers = net.n_layers
        weights_end = offsets[n_layers]
        biases_end = offsets[2 * n_layers]
        self.weights_flat = self.flat[:weights_end]
        self.biases_flat = self.flat[weights_end:biases_end]
        self.log_alpha = self.flat[biases_end:]
        self.biases_grad = self.grad[weights_end:biases_end]
        self.log_alpha_grad = self.grad[biases_end:]
        self.pruned = None if net.pruned is None else torch.cat([m.reshape(-1) for m in net.pruned])
        self.layers: list[_Layer] = []
        self.grad_sq = torch.empty(n_layers, device=device)  # per layer, the squared norm of its weights' data gradient
        # Preallocated (out, in) work spaces: a fresh 1 MB tensor a step costs its page faults every step.
        self.scratch = torch.empty_like(self.weights_flat)
        self.scratch_grad = torch.empty_like(self.weights_flat)
        gate_start = 0
        for layer, (n_in, n_out) in enumerate(net.shapes):
            gates = slice(gate_start, gate_start + n_in) if net.gated else slice(0, 0)
            gate_start += n_in if net.gated else 0
            self.layers.append(
                _Layer(
                    weight=self.flat[offsets[layer] : offsets[layer + 1]].view(n_out, n_in),
                    bias=self.flat[offsets[n_layers + layer] : offsets[n_layers + layer + 1]],
                    weight_grad=self.grad[offsets[layer] : offsets[layer + 1]].view(n_out, n_in),
                    weight_grad_flat=self.grad[offsets[layer] : offsets[layer + 1]],
                    bias_grad=self.grad[offsets[n_layers + layer] : offsets[n_layers + layer + 1]],
                    gates=gates,
                    # GatedMLP.forward's rule (`_fold_min_rows`): the first layer's input needs no gradient.
                    fold_min_rows=min(n_out, FOLD_MIN_ROWS_FIRST_LAYER) if layer == 0 else n_out,
                    scratch=self.scratch[offsets[layer] : offsets[layer + 1]].view(n_out, n_in),
                    scratch_grad=self.scratch_grad[offsets[layer] : offsets[layer + 1]].view(n_out, n_in),
                    grad_sq=self.grad_sq[layer],
                    weight_t=self.flat[offsets[layer] : offsets[layer + 1]].view(n_out, n_in).t(),
                    scratch_t=self.scratch[offsets[layer] : offsets[layer + 1]].view(n_out, n_in).t(),
                )
            )
        if net.gated:
            config = self.config
            self.weight_decay = config.weight_decay
            scale = l0_charge_per_output(
                config.lam or 0.0, n_train=self.n_train, divide_by_n=config.lambda_scaling == "divide_by_n"
            )
            # λ·out/N for every gate (out of the gate's layer): the constant part of its charge c_j.
            self.charge_constant = torch.cat(
                [torch.full((n_in,), scale * n_out, device=device) for n_in, n_out in net.shapes]
            )
            self.column_sq = torch.empty_like(self.log_alpha)
            self.prob = torch.empty_like(self.log_alpha)
            self.gate_values = torch.empty_like(self.log_alpha)
            self.gate_grad = torch.empty_like(self.log_alpha)
            # The compiled draw's buffers: the uniform numbers, the sigmoids, the values before the clamp.
            self.noise = torch.empty_like(self.log_alpha)
            self.sample = torch.empty_like(self.log_alpha)
            self.pre_clamp = torch.empty_like(self.log_alpha)
            self.penalty = torch.zeros((), device=device)
            for spec in self.layers:
                spec.column_sq, spec.prob = self.column_sq[spec.gates], self.prob[spec.gates]
                spec.gate, spec.gate_grad = self.gate_values[spec.gates], self.gate_grad[spec.gates]
        self.one = torch.ones((), device=device)
        self.zero = torch.zeros((), device=device)  # the penalty of an ungated network (never written to)
        self.no_ratio = torch.full((), math.nan, device=device)
        # The compiled loops' accumulators: Σ_l Σ_i ‖δ_i‖²·(‖a_i‖² + 1), the weights' ‖ḡ‖², and ‖S‖₁.
        self.tap_total = torch.zeros((), device=device)
        self.grad_sq_total = torch.zeros((), device=device)
        self.s_l1 = torch.zeros((), device=device)
        # (2, layers, rows): per layer, each example's ‖δ_i‖ and ‖a_i‖ (DynHP), combined once after the backward.
        self.norms = torch.empty(0, device=device)
        self.norm_views: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: its rows of `norms`
        self.square = torch.empty(0, device=device)  # work space for a folded layer's (rows, in) gated input

    @staticmethod
    def covers(trainer: Trainer) -> bool:
        """Whether this path computes the trainer's step: a `GatedMLP` of float32 CPU parameters under one fused
        Adam with PyTorch's defaults but the learning rate (what `train.make_adam` makes where the platform can).
        CUDA is left to the autograd path: the fast path was neither tested nor timed on a GPU."""
        optimizer = trainer.optimizer
        if not isinstance(trainer.net, GatedMLP) or not isinstance(optimizer, torch.optim.Adam):
            return False
        if len(optimizer.param_groups) != 1:
            return False
        group = optimizer.param_groups[0]
        params = list(trainer.net.parameters())
        plain_adam = not (group["amsgrad"] or group["maximize"] or group["weight_decay"] or group["capturable"])
        return (
            bool(group["fused"])
            and plain_adam
            and not torch.is_tensor(group["lr"])
            and len(group["params"]) == len(params)
            and all(a is b for a, b in zip(group["params"], params, strict=True))
            and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
        )

    @classmethod
    def bind(cls, trainer: Trainer) -> FastStep | None:
        """The fast step for the trainer's network as it is now, or None where it does not cover it."""
        return cls(trainer) if cls.covers(trainer) else None

    def release(self) -> None:
        """Give every parameter its own Adam step counter back (the views stay; they are ordinary tensors)."""
        for state in self.optimizer_state:
            state["step"] = self.step_count.clone()

    def gradients(self, xb: torch.Tensor, yb: torch.Tensor, totals: StepTotals) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the gates, and write the objective's gradient into every parameter's ``.grad`` (views of one
        buffer); add the draw's open gates, the penalty and the growth ratio to `totals`. Returns the data loss
        and the growth ratio (NaN without the statistic)."""
        net = self.net
        rows = xb.shape[0]
        gated = net.gated
        gates = sample = pre_clamp = None
        fused = self.kernels
        shared_fused = fused is not None and not self.per_example
        if fused is not None:
            xb = xb.contiguous()  # the compiled loops read rows by plain strides (a no-op for a gathered batch)
        if shared_fused:
            assert fused is not None
            gates, sample, pre_clamp = self._draw_fused(fused, totals)
        elif gated:
            noise = uniform_noise(
                (rows, self.log_alpha.shape[0]) if self.per_example else (self.log_alpha.shape[0],),
                self.generator,
                self.flat.device,
            )
            # gates.sample_gates, keeping its sigmoid s and the value before the clamp for the backward.
            sample = torch.sigmoid((torch.logit(noise) + self.log_alpha) / BETA)
            pre_clamp = sample * (ZETA - GAMMA_HC) + GAMMA_HC
            gates = torch.clamp(pre_clamp, 0.0, 1.0, out=None if self.per_example else self.gate_values)
            totals.counts += (gates > 0).sum(0) if self.per_example else (gates > 0)
            totals.draws += rows if self.per_example else 1

        # Forward: each layer's ungated input h and what multiplies W (h·g, h, or h with g folded into W).
        raws: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        folded: list[torch.Tensor | None] = []
        x = xb
        last = len(self.layers) - 1
        for layer, spec in enumerate(self.layers):
            raws.append(x)
            gate = self._gate(spec, gates)
            weight_t = spec.weight_t
            if gate is not None and gate.dim() == 1 and rows >= spec.fold_min_rows:
                folded.append(torch.mul(spec.weight, gate, out=spec.scratch))
                weight_t = spec.scratch_t
            else:
                if gate is not None:
                    x = x * gate
                folded.append(None)
            inputs.append(x)
            y = torch.addmm(spec.bias, x, weight_t)
            if gated and self.kernels is None:  # Σ_i W_ij² for the gates' charges, while W is in cache
                torch.sum(torch.mul(spec.weight, spec.weight, out=spec.scratch_grad), 0, out=spec.column_sq)
            x = torch.relu(y) if layer < last else y
        log_probs = torch.log_softmax(x, 1)
        data_loss, total_weight = torch.ops.aten.nll_loss_forward(log_probs, yb, None, MEAN_REDUCTION, IGNORE_INDEX)
        grad_loss = torch.ops.aten.nll_loss_backward(
            self.one, log_probs, yb, None, MEAN_REDUCTION, IGNORE_INDEX, total_weight
        )
        delta = torch.ops.aten._log_softmax_backward_data(grad_loss, log_probs, 1, log_probs.dtype)

        # Backward, last layer first; delta is the gradient of the mean data loss w.r.t. the layer's output.
        gate_grad = None
        if gates is not None:
            gate_grad = torch.empty_like(gates) if self.per_example else self.gate_grad
            # PyTorch's sigmoid, as the reference's: d P/d log α = P(1 − P) loses digits as P nears 1, where a
            # sigmoid one ulp off would be far off.
            prob_nonzero(self.log_alpha, out=self.prob)
        tap = self._tap_buffers(rows) if self.track_variance and fused is None else None
        for layer in range(last, -1, -1):
            spec, raw, a, weight_eff = self.layers[layer], raws[layer], inputs[layer], folded[layer]
            gate = self._gate(spec, gates)
            if fused is not None:
                assert gate is not None and gate_grad is not None
                grad_raw = self._fused_backward(fused, spec, delta, raw, a, gate, weight_eff, gate_grad, layer > 0)
                if grad_raw is not None:
                    delta = torch.ops.aten.threshold_backward(grad_raw, raw, 0.0)
                continue
            if tap is not None:  # ‖δ_i‖ and ‖a_i‖, a_i the gated input (variance.GradientTap); squared below
                gated_input = a
                if weight_eff is not None:
                    gated_input = torch.mul(raw, gate, out=self.square[: raw.numel()].view_as(raw))
                delta_norms, input_norms = self.norm_views[layer]
                # vector_norm reduces in one pass; vecdot and square().sum() each write a temporary first.
                torch.linalg.vector_norm(gated_input, dim=1, out=input_norms)
                torch.linalg.vector_norm(delta, dim=1, out=delta_norms)
            torch.sum(delta, 0, out=spec.bias_grad)
            grad_raw: torch.Tensor | None = None
            if weight_eff is not None:  # y = h·(W·diag(g))ᵀ + b
                assert gate is not None and spec.gate_grad is not None
                grad_eff = torch.mm(delta.t(), raw, out=spec.scratch_grad)
                torch.mul(grad_eff, gate, out=spec.weight_grad)
                torch.sum(grad_eff.mul_(spec.weight), 0, out=spec.gate_grad)
                if layer > 0:
                    grad_raw = delta.mm(weight_eff)
            else:  # y = (h·g)·Wᵀ + b, or h·Wᵀ + b
                torch.mm(delta.t(), a, out=spec.weight_grad)
                if gate is not None:
                    assert gate_grad is not None
                    grad_a = delta.mm(spec.weight)
                    if self.per_example:
                        torch.mul(grad_a, raw, out=gate_grad[:, spec.gates])
                    else:
                        torch.sum(grad_a * raw, 0, out=spec.gate_grad)
                    if layer > 0:
                        grad_raw = grad_a.mul_(gate)
                elif layer > 0:
                    grad_raw = delta.mm(spec.weight)
            if tap is not None:  # ‖ḡ‖²'s share of this weight, before the penalty's gradient joins it
                torch.dot(spec.weight_grad_flat, spec.weight_grad_flat, out=spec.grad_sq)
            if gated:  # the penalty's weight decay, wd·W·diag(P), while W and its gradient are in cache
                spec.weight_grad.addcmul_(spec.weight, spec.prob, value=self.weight_decay)
            if grad_raw is not None:  # through the ReLU below: its output is this layer's h
                delta = torch.ops.aten.threshold_backward(grad_raw, raw, 0.0)
        ratio = self.no_ratio
        s_l1 = self.s_l1
        if tap is not None:  # Σ_l Σ_i ‖δ_i‖²·(‖a_i‖² + 1)
            tap.square_()
            tap_total = self.delta_norms_flat.dot(self.input_norms_flat.add_(1.0))
            mean_grad_sq = torch.add(self.biases_grad.dot(self.biases_grad), self.grad_sq.sum())
            s_l1 = variance_l1(tap_total, mean_grad_sq, rows)
        elif fused is not None and self.track_variance:
            address = kernels.address
            biases_grad = self.biases_grad
            fused.variance_l1(
                address(s_l1),
                address(self.tap_total),
                address(self.grad_sq_total),
                address(biases_grad),
                biases_grad.numel(),
                rows,
            )
        penalty = self.zero
        if shared_fused:
            assert fused is not None
            penalty = self._gates_backward_fused(fused)
            totals.penalty_sum += penalty
        elif gated:
            assert sample is not None and pre_clamp is not None and gates is not None and gate_grad is not None
            # Through the draw: clamp (passes where 0 ≤ value ≤ 1, as autograd's clamp), sigmoid, ÷ β.
            slope = torch.ops.aten.sigmoid_backward((pre_clamp == gates) * GATE_SLOPE, sample)
            if self.per_example:
                torch.sum(gate_grad.mul_(slope), 0, out=self.log_alpha_grad)
            else:
                torch.mul(gate_grad, slope, out=self.log_alpha_grad)
            penalty = self._add_penalty_gradients()
            totals.penalty_sum += penalty
        if self.track_variance:
            ratio = self.growth_ratio(s_l1, data_loss, penalty, rows)
            totals.ratio_sum += ratio
        return data_loss, ratio

    def _draw_fused(
        self, fused: kernels.Kernels, totals: StepTotals
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The shared gates' draw with the compiled loop, from the same uniform numbers as `uniform_noise`; adds
        the open gates to `totals`. Returns the gates, their sigmoids and pre-clamp values."""
        address = kernels.address
        torch.rand(self.noise.shape, generator=self.generator, out=self.noise)
        counts = totals.counts
        assert counts.dtype == torch.float32 and counts.is_contiguous()
        fused.gates_draw(
            address(self.noise),
            address(self.log_alpha),
            self.noise.numel(),
            address(self.sample),
            address(self.pre_clamp),
            address(self.gate_values),
            address(counts),
            1.0 - 2.0 * EPS,
            EPS,
            BETA,
            ZETA,
            GAMMA_HC,
        )
        totals.draws += 1
        return self.gate_values, self.sample, self.pre_clamp

    def _gates_backward_fused(self, fused: kernels.Kernels) -> torch.Tensor:
        """The gates' chain rule, the biases' decay and the penalty's value with the compiled loop (the shared
        draw's `_add_penalty_gradients`); returns the penalty."""
        address = kernels.address
        fused.gates_backward(
            address(self.gate_grad),
            address(self.sample),
            address(self.pre_clamp),
            address(self.gate_values),
            address(self.prob),
            address(self.charge_constant),
            address(self.column_sq),
            self.log_alpha.numel(),
            GATE_SLOPE,
            self.weight_decay,
            address(self.log_alpha_grad),
            address(self.biases_flat),
            address(self.biases_grad),
            self.biases_flat.numel(),
            address(self.penalty),
        )
        return self.penalty

    def _fused_backward(
        self,
        fused: kernels.Kernels,
        spec: _Layer,
        delta: torch.Tensor,
        raw: torch.Tensor,
        a: torch.Tensor,
        gate: torch.Tensor,
        weight_eff: torch.Tensor | None,
        gate_grad: torch.Tensor,
        needs_input_grad: bool,
    ) -> torch.Tensor | None:
        """One gated layer's backward with the compiled loops: its bias, weight and gate gradients, the penalty's
        decay, the column sums of W² and DynHP's shares of the statistic; returns d(loss)/d(ungated input), or
        None for the first layer.

        With a shared draw, one product M = δᵀ·h (h the ungated input) gives both the weight's gradient M·diag(g)
        and the gate's, Σ_k M_kj·W_kj, in one pass over M and W: the first layer needs no δ·W at all."""
        address = kernels.address
        n_out, n_in = spec.weight.shape
        rows = delta.shape[0]
        shared = gate.dim() == 1
        grad_sq = self.grad_sq_total if self.track_variance else None
        if self.track_variance:  # a_i = h_i ⊙ g: the folded layer's gated input was never formed
            gated_input, input_gate = (raw, gate) if weight_eff is not None else (a, None)
            fused.tap_add(
                address(self.tap_total), address(delta), address(gated_input), address(input_gate), rows, n_out, n_in
            )
        torch.sum(delta, 0, out=spec.bias_grad)
        grad_raw = None
        if shared:
            product = torch.mm(delta.t(), raw, out=spec.scratch_grad)
            fused.weight_pass(
                address(product),
                address(spec.weight),
                address(spec.weight_grad),
                address(gate),
                address(spec.prob),
                self.weight_decay,
                address(spec.gate_grad),
                address(spec.column_sq),
                address(grad_sq),
                n_out,
                n_in,
            )
            if needs_input_grad:
                grad_raw = delta.mm(weight_eff) if weight_eff is not None else delta.mm(spec.weight).mul_(gate)
            return grad_raw
        torch.mm(delta.t(), a, out=spec.weight_grad)
        grad_a = delta.mm(spec.weight)
        torch.mul(grad_a, raw, out=gate_grad[:, spec.gates])
        if needs_input_grad:
            grad_raw = grad_a.mul_(gate)
        fused.weight_pass(
            address(spec.weight_grad),
            address(spec.weight),
            address(spec.weight_grad),
            0,
            address(spec.prob),
            self.weight_decay,
            0,
            address(spec.column_sq),
            address(grad_sq),
            n_out,
            n_in,
        )
        return grad_raw

    def _gate(self, spec: _Layer, gates: torch.Tensor | None) -> torch.Tensor | None:
        """The layer's gates in this step's draw: a view made once for a shared draw, a slice of a per-example one."""
        if gates is None or not self.per_example:
            return spec.gate if gates is not None else None
        return gates[:, spec.gates]

    def _tap_buffers(self, rows: int) -> torch.Tensor:
        """(2, layers, rows) for each example's ‖δ_i‖ and ‖a_i‖ per layer; and the gated inputs' work space."""
        if self.norms.shape[-1:] != (rows,):
            self.norms = torch.empty(2, len(self.layers), rows, device=self.flat.device)
            self.norm_views = [(self.norms[0, layer], self.norms[1, layer]) for layer in range(len(self.layers))]
            self.delta_norms_flat, self.input_norms_flat = self.norms[0].view(-1), self.norms[1].view(-1)
        widest = rows * max(spec.weight.shape[1] for spec in self.layers)
        if self.square.numel() < widest:
            self.square = torch.empty(widest, device=self.flat.device)
        return self.norms

    def _add_penalty_gradients(self) -> torch.Tensor:
        """`GatedMLP.add_penalty_gradients` on the flat views, but for the weights' decay, which the backward
        added layer by layer, and the column sums of W², which the forward (or the compiled weight pass) took;
        returns the penalty's value."""
        wd, prob = self.weight_decay, self.prob
        charge = torch.add(self.charge_constant, self.column_sq, alpha=0.5 * wd, out=self.column_sq)
        value = torch.add(prob.dot(charge), self.biases_flat.dot(self.biases_flat), alpha=0.5 * wd)
        self.biases_grad.add_(self.biases_flat, alpha=wd)
        self.log_alpha_grad.add_(torch.ops.aten.sigmoid_backward(charge, prob))
        return value

    def update(self) -> None:
        """Adam over the one flat tensor, then pruned weights back to zero and log α clamped."""
        self.step_count.add_(1)
        torch._fused_adam_(
            [self.flat],
            [self.grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            [],
            [self.step_count],
            amsgrad=False,
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )
        if self.pruned is not None:
            self.weights_flat.masked_fill_(self.pruned, 0.0)
        if self.net.gated:
            self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)
