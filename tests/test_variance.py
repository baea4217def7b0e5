"""‖S‖₁ from layer inputs and output gradients equals the brute-force per-example computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynhp_bench.models.mlp import GatedMLP
from dynhp_bench.models.variance import GradientTap, RunningAverages, growth_ratio, squared_norm, variance_l1


def _brute_force_s_l1(net: GatedMLP, x: torch.Tensor, y: torch.Tensor, gates: list[torch.Tensor]) -> float:
    """S = (1/B)·Σ_i g_i² − ḡ² summed over weights and biases, with one autograd call per example."""
    per_example = []
    for i in range(x.shape[0]):
        example_gates = [g[i : i + 1] if g.dim() == 2 else g for g in gates]
        loss = F.cross_entropy(net(x[i : i + 1], example_gates), y[i : i + 1])
        grads = torch.autograd.grad(loss, net.weight_parameters())
        per_example.append(torch.cat([g.flatten() for g in grads]))
    g = torch.stack(per_example)
    return float(((g**2).mean(0) - g.mean(0) ** 2).sum())


def _tap_s_l1(net: GatedMLP, x: torch.Tensor, y: torch.Tensor, gates: list[torch.Tensor]) -> float:
    tap = GradientTap()
    tap.reset(x.device)
    net.zero_grad()
    F.cross_entropy(net(x, gates, hooks=tap), y).backward()
    mean_grad_sq = squared_norm(p.grad for p in net.weight_parameters())
    return float(variance_l1(tap.total, mean_grad_sq, x.shape[0]))


@pytest.mark.parametrize("per_example_gates", [False, True])
@pytest.mark.parametrize("batch", [2, 7, 32])  # 2, 7: gated inputs; 32: gates folded into every layer's weights
def test_variance_l1_matches_per_example_brute_force(per_example_gates: bool, batch: int) -> None:
    generator = torch.Generator().manual_seed(batch)
    net = GatedMLP((12, 8, 5, 3), generator=generator).double()
    x = torch.rand(batch, 12, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,), generator=generator)
    gates = net.split(net.sample(batch if per_example_gates else None, generator).double())
    expected = _brute_force_s_l1(net, x, y, gates)
    assert expected > 0
    assert _tap_s_l1(net, x, y, gates) == pytest.approx(expected, rel=1e-9)


def test_variance_l1_of_identical_examples_is_zero() -> None:
    generator = torch.Generator().manual_seed(0)
    net = GatedMLP((12, 8, 5, 3), generator=generator).double()
    x = torch.rand(1, 12, generator=generator, dtype=torch.float64).repeat(9, 1)
    y = torch.ones(9, dtype=torch.int64)
    gates = net.split(net.sample(None, generator).double())
    assert _tap_s_l1(net, x, y, gates) == pytest.approx(0.0, abs=1e-12)


def test_ungated_network_statistic_matches_too() -> None:
    generator = torch.Generator().manual_seed(5)
    net = GatedMLP((10, 6, 4), gated=False, generator=generator).double()
    x = torch.rand(11, 10, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (11,), generator=generator)
    tap = GradientTap()
    tap.reset(x.device)
    F.cross_entropy(net(x, None, hooks=tap), y).backward()
    got = float(variance_l1(tap.total, squared_norm(p.grad for p in net.weight_parameters()), 11))
    per_example = []
    for i in range(11):
        grads = torch.autograd.grad(F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]), net.weight_parameters())
        per_example.append(torch.cat([g.flatten() for g in grads]))
    g = torch.stack(per_example)
    assert got == pytest.approx(float(((g**2).mean(0) - g.mean(0) ** 2).sum()), rel=1e-9)


def _per_example_grads(net: GatedMLP, x: torch.Tensor, y: torch.Tensor, gates: list[torch.Tensor]) -> torch.Tensor:
    rows = []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(net(x[i : i + 1], gates), y[i : i + 1])
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, net.weight_parameters())]))
    return torch.stack(rows)


@pytest.mark.parametrize("variance", ["examples", "mean"])
@pytest.mark.parametrize("correction", ["none", "bessel"])
@pytest.mark.parametrize("loss", ["data", "objective"])
def test_every_reading_of_eq_8_matches_brute_force(variance: str, correction: str, loss: str) -> None:
    batch = 9
    generator = torch.Generator().manual_seed(11)
    net = GatedMLP((12, 8, 5, 3), generator=generator).double()
    x = torch.rand(batch, 12, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,), generator=generator)
    gates = net.split(net.sample(None, generator).double())
    g = _per_example_grads(net, x, y, gates)
    # Brute force: torch's own variance over the examples, biased (÷B) or unbiased (÷(B−1)).
    s_examples = float(g.var(0, unbiased=correction == "bessel").sum())
    expected_s = s_examples / batch if variance == "mean" else s_examples
    # The mean of the per-example losses is the mini-batch data loss; the objective adds the penalty.
    data_loss = F.cross_entropy(net(x, gates), y).detach()
    penalty = torch.tensor(0.25, dtype=torch.float64)
    expected_f = float(data_loss) + (0.25 if loss == "objective" else 0.0)
    got = growth_ratio(
        torch.tensor(_tap_s_l1(net, x, y, gates), dtype=torch.float64),
        data_loss,
        penalty,
        batch,
        variance=variance,
        loss=loss,
        correction=correction,
    )
    assert float(got) == pytest.approx(expected_s / expected_f, rel=1e-9)


def test_bessel_correction_leaves_a_single_example_alone() -> None:
    # B/(B−1) is undefined at B = 1, where S is 0 anyway: the statistic is passed through, not divided by 0.
    got = growth_ratio(
        torch.tensor(3.0), torch.tensor(2.0), 0.0, 1, variance="examples", loss="data", correction="bessel"
    )
    assert float(got) == 1.5


def test_running_averages_follow_balles_et_al_by_hand() -> None:
    # Constant 0.95, S from 0 and F from 1 (CABSOptimizer). Steps (S, F) = (2, 0.5) then (4, 0.25):
    # S: 0.05·2 = 0.1, then 0.95·0.1 + 0.05·4 = 0.295; F: 0.95 + 0.025 = 0.975, then 0.95·0.975 + 0.0125 = 0.93875.
    averages = RunningAverages()
    first = growth_ratio(torch.tensor(2.0), torch.tensor(0.5), 0.0, 16, variance="examples", loss="data",
                         correction="none", averages=averages)  # fmt: skip
    assert float(first) == pytest.approx(0.1 / 0.975, rel=1e-6)
    # S/B and F = data + penalty are what is averaged: 64/16 = 4 and 0.2 + 0.05 = 0.25.
    second = growth_ratio(torch.tensor(64.0), torch.tensor(0.2), 0.05, 16, variance="mean", loss="objective",
                          correction="none", averages=averages)  # fmt: skip
    assert float(second) == pytest.approx(0.295 / 0.93875, rel=1e-6)
    restored = RunningAverages()
    restored.load_state_dict(averages.state_dict())
    assert (float(restored.variance), float(restored.loss)) == (float(averages.variance), float(averages.loss))
    assert restored.variance.dtype == averages.variance.dtype == torch.float32
