"""DyPrune (SPEC §7): the rate formula, the slope rule, masks held at zero under Adam, dead-neuron removal,
and a resumed run equal to an uninterrupted one."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dynhp_bench.data.datasets import load_dataset
from dynhp_bench.models.mlp import GatedMLP
from dynhp_bench.pruning.strategies import dead_neurons, magnitude_masks, pruning_epochs, pruning_rate
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training.record import TIMING_COLUMNS, EpochRecord
from dynhp_bench.training.run_folder import RunFolder, run_path
from dynhp_bench.training.trainer import Runtime, Trainer, train

FULL_WEIGHTS = 784 * 300 + 300 * 100 + 100 * 10  # 266,200: biases are never pruned nor counted by the rate


def _count_nonzero_weights(net: GatedMLP) -> int:
    return sum(int(torch.count_nonzero(w)) for w in net.weights)


def test_the_first_rate_of_the_full_network_is_0_6492() -> None:
    assert FULL_WEIGHTS == 266_200
    assert pruning_rate(FULL_WEIGHTS) == pytest.approx((math.log(266_200) - 6) / 10)
    assert round(pruning_rate(FULL_WEIGHTS), 4) == 0.6492
    assert pruning_rate(403) == 0.0  # e^6 ≈ 403: below it the formula would be negative
    assert pruning_rate(10**9) == 0.9  # capped
    assert pruning_rate(0) == 0.0


def test_steps_compound_on_the_weights_still_unpruned() -> None:
    net = GatedMLP((784, 300, 100, 10), gated=False, generator=torch.Generator().manual_seed(0))
    rates, sparsity = [], []
    for _ in range(4):
        nonzero = _count_nonzero_weights(net)
        rate = pruning_rate(nonzero)
        before = nonzero
        net.prune_weights(magnitude_masks(net.weights, net.pruned, rate))
        assert before - _count_nonzero_weights(net) == round(rate * before)  # round(rate · n) of the unpruned n
        rates.append(round(rate, 3))
        sparsity.append(round(100 * (1 - _count_nonzero_weights(net) / FULL_WEIGHTS), 1))
    assert rates == [0.649, 0.544, 0.466, 0.403]
    assert sparsity == [64.9, 84.0, 91.5, 94.9]


def test_magnitude_masks_rank_globally_over_every_layer_output_included() -> None:
    weights = [torch.tensor([[0.5, -0.1], [3.0, 0.2]]), torch.tensor([[-0.05, 4.0]])]
    masks = magnitude_masks(weights, None, 0.5)  # round(0.5 · 6) = 3 smallest |w|: -0.05, -0.1, 0.2
    assert masks[0].tolist() == [[False, True], [False, True]]
    assert masks[1].tolist() == [[True, False]]
    # Already pruned weights stay pruned and are not counted again: 3 left, round(0.34 · 3) = 1 more.
    again = magnitude_masks(weights, masks, 0.34)
    assert again[0].tolist() == [[True, True], [False, True]]
    assert again[1].tolist() == [[True, False]]


# (case, validation losses v_0…, epochs, schedule, interval, slope window, epochs t after which it prunes)
SLOPE_CASES = [
    ("prune: the fall flattens to 2% of the steepest", [1.0, 0.5, 0.49], 10, "dynamic", 4, (0.0, 0.05), [2]),
    ("a flat loss after a fall prunes (ratio 0)", [1.0, 0.5, 0.5], 10, "dynamic", 4, (0.0, 0.05), [2]),
    ("no prune: still falling at 40% of the steepest", [1.0, 0.5, 0.3], 10, "dynamic", 4, (0.0, 0.05), []),
    ("a wider window prunes it", [1.0, 0.5, 0.3], 10, "dynamic", 4, (0.1, 0.5), [2]),
    ("no prune at t=1: its own fall is the steepest", [1.0, 0.99], 10, "dynamic", 4, (0.0, 0.05), []),
    ("rising loss: negative ratio", [1.0, 0.5, 0.6], 10, "dynamic", 4, (0.0, 0.05), []),
    ("a loss that never fell", [1.0, 1.1, 1.1, 1.2], 10, "dynamic", 4, (0.0, 0.05), []),
    ("cooldown: 2 eligible epochs pass", [1.0, 0.5, 0.49, 0.48, 0.47, 0.46], 10, "dynamic", 4, (0.0, 0.05), [2, 5]),
    ("never after the last epoch", [1.0, 0.5, 0.49], 3, "dynamic", 4, (0.0, 0.05), []),
    ("static: every t % 4 == 0", [1.0 - 0.1 * t for t in range(9)], 20, "static", 4, (0.0, 0.05), [4, 8]),
    ("static: no cooldown", [1.0 - 0.1 * t for t in range(5)], 20, "static", 1, (0.0, 0.05), [1, 2, 3, 4]),
    ("static: needs a fall too", [1.0 + 0.1 * t for t in range(9)], 20, "static", 2, (0.0, 0.05), []),
    ("static: never after the last epoch", [1.0 - 0.1 * t for t in range(5)], 5, "static", 2, (0.0, 0.05), [2]),
]


@pytest.mark.parametrize(
    ("losses", "epochs", "schedule", "interval", "window", "expected"),
    [case[1:] for case in SLOPE_CASES],
    ids=[case[0] for case in SLOPE_CASES],
)
def test_the_slope_rule_on_scripted_validation_losses(
    losses: list[float], epochs: int, schedule: str, interval: int, window: tuple[float, float], expected: list[int]
) -> None:
    chosen = pruning_epochs(
        losses, epochs=epochs, schedule=schedule, interval=interval, slope_min=window[0], slope_max=window[1]
    )
    assert chosen == expected


def _dyprune(**changes: object) -> TrainConfig:
    settings: dict[str, object] = {"strategy": "dyprune", "epochs": 7, "batch_size": 32, "validation_split": 64}
    settings |= {"prune_schedule": "static", "prune_interval": 1, "prune_rate": 0.4, **changes}
    return TrainConfig(**settings)  # type: ignore[arg-type]


def test_a_pruned_weight_stays_exactly_zero_through_20_adam_steps(synthetic_root: Path) -> None:
    config = _dyprune(batch_size=16, reset_optimizer=False)
    trainer = Trainer(config, load_dataset("mnist", synthetic_root), torch.device("cpu"))
    trainer._train_steps(1)  # Adam's moments are non-zero everywhere now
    masks = magnitude_masks(trainer.net.weights, None, 0.5)
    trainer.net.prune_weights(masks)
    totals = trainer._train_steps(2)
    assert totals.steps >= 20
    for weight, mask in zip(trainer.net.weights, masks, strict=True):
        assert bool((weight[mask] == 0).all())
        assert bool((weight[~mask] != 0).all())
        moment = trainer.optimizer.state[weight]["exp_avg"]
        # Adam would move them: their first moments are far from zero (the gradient is not masked).
        assert float(moment[mask].abs().max()) > 1e-6


@torch.no_grad()
def test_removing_dead_neurons_computes_what_the_masked_network_computed() -> None:
    generator = torch.Generator().manual_seed(3)
    net = GatedMLP((784, 300, 100, 10), gated=False, generator=generator)
    net.biases[1][:5] = 0.5  # relu(b) > 0: the dropped constant of the neurons cut off from their inputs
    masks = magnitude_masks(net.weights, None, 0.5)
    masks[1][:, :10] = True  # HL-1 neurons 0-9: every outgoing weight pruned
    masks[1][:5, :] = True  # HL-2 neurons 0-4: every incoming weight pruned
    masks[2][:, 5:8] = True  # HL-2 neurons 5-7: every outgoing weight pruned
    net.prune_weights(masks)
    x = torch.rand(64, 784, generator=generator)
    masked_logits = net(x)
    # The masked network's equivalent of the removal: HL-2 neurons 0-4 feed relu(b) forward although
    # nothing reaches them; removing them drops it, so the reference zeroes their biases.
    reference = GatedMLP((784, 300, 100, 10), gated=False)
    reference.load_state_dict(net.state_dict())
    reference.weights[1].masked_fill_(masks[1], 0.0)
    reference.biases[1][:5] = 0.0
    expected = reference(x)
    assert float((masked_logits - expected).abs().max()) > 1e-3, "the dropped relu(b) must matter for this test"

    dead = dead_neurons(net.pruned)  # type: ignore[arg-type]
    assert [int(d.sum()) for d in dead] == [0, 10, 8]
    assert dead[1][:10].all() and dead[2][:8].all()
    net.remove_units([~d for d in dead])
    assert net.shapes == [(784, 290), (290, 92), (92, 10)]
    assert [tuple(p.shape) for p in net.pruned] == [(290, 784), (92, 290), (10, 92)]  # type: ignore[union-attr]
    assert float((net(x) - expected).abs().max()) < 1e-6


def test_dead_neurons_are_found_until_nothing_changes() -> None:
    # 2 inputs → 2 → 2 → 1. HL-2 neuron 1 has no outgoing weight; once it goes, HL-1 neuron 1 (whose one
    # unpruned outgoing weight reaches it) has none left either.
    pruned = [
        torch.zeros(2, 2, dtype=torch.bool),
        torch.tensor([[False, True], [False, False]]),
        torch.tensor([[False, True]]),
    ]
    assert [d.tolist() for d in dead_neurons(pruned)] == [[False, False], [False, True], [False, True]]


def test_removed_neurons_never_return_and_pruned_weights_never_grow_back(synthetic_root: Path) -> None:
    config = _dyprune(prune_rate=0.8, hidden=(30, 20))
    trainer = Trainer(config, load_dataset("mnist", synthetic_root), torch.device("cpu"))
    records: list[EpochRecord] = []
    for epoch in range(1, config.epochs + 1):
        records.append(trainer.run_epoch(epoch, last=epoch == config.epochs))
        if trainer.net.pruned is not None:
            for weight, mask in zip(trainer.net.weights, trainer.net.pruned, strict=True):
                assert bool((weight[mask] == 0).all())
    hidden = [(r.active_1, r.active_2) for r in records]
    assert all(a >= b for a, b in itertools.pairwise(hidden)), hidden
    assert hidden[-1][0] < 30 or hidden[-1][1] < 20, "the run should remove at least one neuron"
    nonzero = [r.nonzero_params for r in records]
    assert all(a > b for a, b in itertools.pairwise(nonzero[1:])), nonzero  # it prunes after epochs 2-6
    assert [r.active_0 for r in records] == [784] * config.epochs  # inputs never go


@pytest.mark.parametrize(
    "changes",
    [{}, {"reset_optimizer": False, "reset_biases": True, "prune_schedule": "dynamic", "slope_max": 1.0}],
    ids=["as-published", "kept-moments-fresh-biases"],
)
def test_a_resumed_dyprune_run_equals_the_uninterrupted_one(
    synthetic_root: Path, tmp_path: Path, changes: dict[str, object]
) -> None:
    config = _dyprune(**changes)
    reference = train(config, Runtime(data_dir=synthetic_root, results_root=tmp_path / "ref", threads=1))
    runtime = Runtime(data_dir=synthetic_root, results_root=tmp_path / "cut", threads=1, checkpoint_every=1)

    class CrashError(Exception):
        pass

    def crash(record: EpochRecord) -> None:
        if record.epoch == 4:
            raise CrashError

    with pytest.raises(CrashError):
        train(config, runtime, on_epoch=crash)
    assert not RunFolder(run_path(runtime.results_root, config.run_id)).is_complete
    resumed = train(config, runtime)
    rows = pd.read_csv(reference.run_dir / "epochs.csv").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(pd.read_csv(resumed.run_dir / "epochs.csv").drop(columns=list(TIMING_COLUMNS)), rows)
    nonzero = rows["nonzero_params"].tolist()
    assert nonzero[1] > nonzero[3] > nonzero[-1], "pruning on both sides of the cut"
    assert resumed.summary["nonzero_params"] == reference.summary["nonzero_params"] == nonzero[-1]


def test_validation_split_holds_out_the_last_images_for_any_strategy(synthetic_root: Path) -> None:
    data = load_dataset("mnist", synthetic_root)
    trainer = Trainer(TrainConfig(strategy="sp", validation_split=100), data, torch.device("cpu"))
    assert trainer.n_train == data.n_train - 100
    assert torch.equal(trainer.val_x, data.train_x[-100:]) and torch.equal(trainer.train_x, data.train_x[:-100])
    loss = trainer.validation_loss()
    with torch.no_grad():
        logits = trainer.net(data.train_x[-100:], trainer.net.deterministic_gates())
    assert loss == pytest.approx(float(F.cross_entropy(logits, data.train_y[-100:])), rel=1e-6)
    assert math.isnan(trainer.run_epoch(1, last=True).validation_loss) is False
    plain = Trainer(TrainConfig(strategy="sp"), data, torch.device("cpu"))
    assert plain.val_x.shape[0] == 0 and math.isnan(plain.run_epoch(1, last=True).validation_loss)
