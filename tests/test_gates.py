"""Hard-concrete gates against SPEC §1's formulas, the penalty by hand, and physical removal."""

from __future__ import annotations

import math

import pytest
import torch

from dynhp_bench.memory import model_bytes
from dynhp_bench.models.mlp import (
    GatedMLP,
    eval_gates,
    prob_nonzero,
    sample_gates,
    uniform_noise,
)


def test_prob_nonzero_is_sigmoid_of_log_alpha_plus_beta_ln11() -> None:
    log_alpha = torch.tensor([-1.0, 0.0, 2.0])
    expected = torch.sigmoid(log_alpha + (2.0 / 3.0) * math.log(11.0))
    assert torch.allclose(prob_nonzero(log_alpha), expected)
    assert round(prob_nonzero(torch.tensor(0.0)).item(), 3) == 0.832


def test_init_expects_250_of_300_and_83_of_100_hidden_neurons_active() -> None:
    net = GatedMLP((784, 300, 100, 10), generator=torch.Generator().manual_seed(0))
    expected = [float(prob_nonzero(a.detach()).sum()) for a in net.log_alphas]
    assert round(expected[1]) == 250
    assert round(expected[2]) == 83
    # drop rate 0.2 at the input: log α ≈ ln 4
    assert float(net.log_alphas[0].detach().mean()) == pytest.approx(math.log(4.0), abs=2e-3)


def test_sampled_gates_are_nonzero_with_probability_prob_nonzero() -> None:
    generator = torch.Generator().manual_seed(1)
    log_alpha = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    draws = sample_gates(log_alpha, uniform_noise((200_000, 5), generator, torch.device("cpu")))
    assert float(draws.min()) >= 0.0 and float(draws.max()) <= 1.0
    empirical = (draws > 0).float().mean(0)
    assert torch.allclose(empirical, prob_nonzero(log_alpha), atol=4e-3)


def test_sample_follows_the_published_formula_for_fixed_noise() -> None:
    u = torch.tensor([0.3])
    log_alpha = torch.tensor([0.7])
    s = 1 / (1 + math.exp(-((math.log(0.3) - math.log(0.7) + 0.7) / (2 / 3))))
    z = min(1.0, max(0.0, s * 1.2 - 0.1))
    assert sample_gates(log_alpha, u).item() == pytest.approx(z, rel=1e-6)


def test_eval_gates_are_deterministic_and_not_binary() -> None:
    log_alpha = torch.tensor([-5.0, 0.0, 5.0])
    gates = eval_gates(log_alpha)
    assert gates[0].item() == 0.0
    assert gates[1].item() == pytest.approx(0.5 * 1.2 - 0.1)
    assert gates[2].item() == 1.0


def test_penalty_by_hand_on_a_tiny_net() -> None:
    net = GatedMLP((2, 3, 2), generator=torch.Generator().manual_seed(0))
    lam, wd, n = 0.01, 5e-4, 100
    expected = 0.0
    params = [[p.detach() for p in group] for group in (net.weights, net.biases, net.log_alphas)]
    for weight, bias, log_alpha in zip(*params, strict=True):
        out = weight.shape[0]
        p = torch.sigmoid(log_alpha + (2 / 3) * math.log(11))
        for j in range(weight.shape[1]):
            expected += float(p[j]) * (lam * out / n + 0.5 * wd * float((weight[:, j] ** 2).sum()))
        expected += 0.5 * wd * float((bias**2).sum())
    got = net.penalty(lam=lam, weight_decay=wd, n_train=n)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    unscaled = net.penalty(lam=lam, weight_decay=0.0, n_train=n, divide_by_n=False)
    scaled = net.penalty(lam=lam, weight_decay=0.0, n_train=n)
    assert unscaled.item() == pytest.approx(n * scaled.item(), rel=1e-5)


def test_clamp_keeps_log_alpha_between_ln_001_and_ln_100() -> None:
    net = GatedMLP((4, 3, 2))
    with torch.no_grad():
        net.log_alphas[0].copy_(torch.tensor([-50.0, 0.0, 50.0, 1.0]))
    net.clamp_log_alphas()
    assert net.log_alphas[0].tolist() == pytest.approx([math.log(0.01), 0.0, math.log(100.0), 1.0])


def _masks(net: GatedMLP, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(a.shape[0], generator=generator) > 0.4 for a in net.log_alphas]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_network_computes_what_the_masked_network_computed(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    net = GatedMLP((784, 300, 100, 10), generator=generator)
    with torch.no_grad():
        for log_alpha in net.log_alphas:
            log_alpha.uniform_(-1.0, 3.0, generator=generator)
    x = torch.rand(64, 784, generator=generator)
    keep = _masks(net, seed)
    with torch.no_grad():
        masked_gates = [g * k for g, k in zip(net.deterministic_gates(), keep, strict=True)]
        masked = net(x, masked_gates)
        net.remove_units(keep)
        pruned = net(x[:, keep[0]], net.deterministic_gates())
    assert torch.allclose(pruned, masked, atol=1e-6, rtol=0)


def test_removal_shrinks_every_tensor_to_the_kept_counts() -> None:
    net = GatedMLP((784, 300, 100, 10), generator=torch.Generator().manual_seed(0))
    keep = _masks(net, 3)
    kept = [int(k.sum()) for k in keep]
    removals = net.remove_units(keep)
    assert net.shapes == [(kept[0], kept[1]), (kept[1], kept[2]), (kept[2], 10)]
    assert [a.shape[0] for a in net.log_alphas] == kept
    assert [b.shape[0] for b in net.biases] == [kept[1], kept[2], 10]
    n_weights = sum(p.numel() for p in net.weight_parameters())
    assert 4 * n_weights == model_bytes(net.shapes)
    # Each layer: a column slice; a hidden layer also slices the previous layer's rows and bias.
    assert len(removals) == 3 * 2 + 2 * 2


def test_removal_keeps_the_same_parameter_objects() -> None:
    net = GatedMLP((6, 4, 2))
    before = [id(p) for p in net.parameters()]
    net.remove_units([torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool), torch.tensor([1, 1, 0, 1], dtype=torch.bool)])
    assert [id(p) for p in net.parameters()] == before


def test_keeping_everything_removes_nothing() -> None:
    net = GatedMLP((6, 4, 2))
    assert net.remove_units([torch.ones(6, dtype=torch.bool), torch.ones(4, dtype=torch.bool)]) == []
    assert net.shapes == [(6, 4), (4, 2)]


def test_dense_network_has_no_gates_and_no_sampling() -> None:
    net = GatedMLP((6, 4, 2), gated=False)
    assert len(net.log_alphas) == 0
    assert net.deterministic_gates() is None
    assert net.sample(None, None).shape == (0,)
    assert net.n_gates == 0


def test_sample_draws_every_layer_at_once_and_split_cuts_it_per_layer() -> None:
    net = GatedMLP((6, 4, 3, 2), generator=torch.Generator().manual_seed(0))
    flat = net.sample(None, torch.Generator().manual_seed(1))
    assert flat.shape == (13,) and net.n_gates == 13
    assert [g.shape for g in net.split(flat)] == [(6,), (4,), (3,)]
    per_example = net.sample(5, torch.Generator().manual_seed(1))
    assert [g.shape for g in net.split(per_example)] == [(5, 6), (5, 4), (5, 3)]


@pytest.mark.parametrize("batch", [1, 3, 50, 400])
def test_folding_gates_into_weights_gives_the_gated_input_product(batch: int) -> None:
    generator = torch.Generator().manual_seed(batch)
    net = GatedMLP((784, 300, 100, 10), generator=generator)
    gates = net.split(net.sample(None, generator))
    x = torch.rand(batch, 784, generator=generator)
    with torch.no_grad():
        h = x
        for layer, (weight, bias) in enumerate(zip(net.weights, net.biases, strict=True)):
            h = (h * gates[layer]) @ weight.T + bias
            h = torch.relu(h) if layer < 2 else h
        assert torch.allclose(net(x, gates), h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("divide_by_n", [True, False])
def test_added_penalty_gradients_equal_autograd_of_the_penalty(divide_by_n: bool) -> None:
    net = GatedMLP((20, 8, 5, 3), generator=torch.Generator().manual_seed(0)).double()
    settings = {"lam": 0.01, "weight_decay": 5e-2, "n_train": 100, "divide_by_n": divide_by_n}
    penalty = net.penalty(**settings)
    expected = torch.autograd.grad(penalty, list(net.parameters()))
    value = net.add_penalty_gradients(**settings)  # grads start as None
    assert value.item() == pytest.approx(penalty.item(), rel=1e-12)
    for param, grad in zip(net.parameters(), expected, strict=True):
        assert torch.allclose(param.grad, grad, rtol=1e-10, atol=1e-15)
    net.add_penalty_gradients(**settings)  # added to what is there
    for param, grad in zip(net.parameters(), expected, strict=True):
        assert torch.allclose(param.grad, 2 * grad, rtol=1e-10, atol=1e-15)
