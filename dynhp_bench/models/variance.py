"""The gradient-variance statistic of DynHP's batch growth (Eq. 8), after Balles, Romero & Hennig 2017.

S = (1/B)·Σ_i g_i² − ḡ² per parameter (the form of their published code), where g_i is example i's
gradient of its own data loss and ḡ their mean; ‖S‖₁ sums it over all weights and biases. Gate
parameters are left out: they are the method's bookkeeping, and their per-example gradients do not
factor through a layer's input and output gradient.

Only ‖S‖₁ is needed, and for a Linear layer Σ over its entries of Σ_i g_i² is Σ_i ‖B·δ_i‖²·‖a_i‖² for
the weights (g_i = B·δ_i a_iᵀ is rank one) and Σ_i ‖B·δ_i‖² for the bias, with δ_i the gradient of
the mean-reduced loss w.r.t. the layer output and a_i the (gated) layer input. Hence

    ‖S‖₁ = B·Σ_l Σ_i ‖δ_i‖²·(‖a_i‖² + 1) − ‖ḡ‖²,

costing O(B·(in + out)) per layer on top of the usual backward pass, with no loop over examples.

`growth_ratio` turns ‖S‖₁ into Eq. 8's ‖S‖₁/F under each reading of the paper: S with Bessel's
correction B/(B−1) or not, S of the examples or of their mean (S/B), F the data loss or the objective,
and S and F either as measured or smoothed by `RunningAverages` (Balles et al.'s code).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class GradientTap:
    """Collects Σ_l Σ_i ‖δ_i‖²·(‖a_i‖² + 1) over the layers it watches during one forward/backward."""

    def __init__(self) -> None:
        self.total = torch.zeros(())

    def reset(self, device: torch.device) -> None:
        """Start a new step."""
        self.total = torch.zeros((), device=device)

    def watch(self, input_sq_norms: torch.Tensor, layer_output: torch.Tensor) -> None:
        """Remember ‖a_i‖² (each example's squared gated-input norm) and hook the layer output's gradient."""
        if not layer_output.requires_grad:
            return
        input_sq = input_sq_norms + 1.0

        def hook(grad: torch.Tensor) -> None:
            self.total = self.total + grad.square().sum(1).dot(input_sq)

        layer_output.register_hook(hook)


def squared_norm(grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """Σ of squared entries over tensors (‖ḡ‖² for the mean data-loss gradient), in one foreach call."""
    return torch.nn.utils.get_total_norm(list(grads), norm_type=2.0).square()


def variance_l1(tap_total: torch.Tensor, mean_grad_sq: torch.Tensor, batch_size: int) -> torch.Tensor:
    """‖S‖₁ = B·(tap total) − ‖ḡ‖², clamped at 0 against rounding."""
    return (batch_size * tap_total - mean_grad_sq).clamp_min(0.0)


class RunningAverages:
    """Balles et al.'s running averages of S and F (`CABSOptimizer`: ``running_avg_constant`` 0.95; the
    variance average starts at 0 and the loss average at 1, as there), updated once per training step."""

    CONSTANT = 0.95

    def __init__(self) -> None:
        self.variance = torch.zeros(())
        self.loss = torch.ones(())

    def update(self, variance: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one step's S and F; return the averages including them."""
        c = self.CONSTANT
        self.variance = c * self.variance.to(variance.device) + (1.0 - c) * variance
        self.loss = c * self.loss.to(loss.device) + (1.0 - c) * loss
        return self.variance, self.loss

    def state_dict(self) -> dict[str, float]:
        """The two averages (what a checkpoint holds)."""
        return {"variance": float(self.variance), "loss": float(self.loss)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue from `state_dict()` output."""
        self.variance = torch.tensor(state["variance"], dtype=torch.float32)
        self.loss = torch.tensor(state["loss"], dtype=torch.float32)


def growth_ratio(
    s_l1: torch.Tensor,
    data_loss: torch.Tensor,
    penalty: torch.Tensor | float,
    batch_size: int,
    *,
    variance: str,
    loss: str,
    correction: str,
    averages: RunningAverages | None = None,
) -> torch.Tensor:
    """Eq. 8's ‖S‖₁/F from `variance_l1`'s per-example ‖S‖₁.

    `correction` ``bessel`` scales S by B/(B−1) (the unbiased variance; B = 1 leaves it, S is 0 there);
    `variance` ``mean`` divides it by B (the variance of the mini-batch mean gradient); `loss`
    ``objective`` divides by data loss + penalty instead of the data loss alone. With `averages`, S and F
    (so read) enter their running averages first and the ratio is of the averages.
    """
    s = s_l1
    if correction == "bessel" and batch_size > 1:
        s = s * (batch_size / (batch_size - 1))
    if variance == "mean":
        s = s / batch_size
    f = data_loss + penalty if loss == "objective" else data_loss
    if averages is not None:
        s, f = averages.update(s, f)
    return s / f
