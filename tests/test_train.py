"""The training loop end to end on tiny synthetic data: determinism, run folders, pruning, batch growth."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from dynhp_bench.data.datasets import load_dataset
from dynhp_bench.memory import model_bytes
from dynhp_bench.models.registry import ARCHITECTURES
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training.record import TIMING_COLUMNS, EpochRecord
from dynhp_bench.training.run_folder import COMPLETE_MARKER, RunFolder
from dynhp_bench.training.trainer import Runtime, Trainer, train


def _runtime(root: Path, results: Path) -> Runtime:
    return Runtime(data_dir=root, results_root=results, threads=1, device="cpu")


def _epochs(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "epochs.csv")


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(strategy="hp", epochs=3, batch_size=32, gamma=0.84),
        TrainConfig(strategy="dynhp", epochs=3, batch_size=16, gamma=0.84, alpha_bs=0.9),
    ],
    ids=["hp", "dynhp"],
)
def test_same_seed_same_machine_gives_identical_epochs_csv(
    synthetic_root: Path, tmp_path: Path, config: TrainConfig
) -> None:
    first = train(config, _runtime(synthetic_root, tmp_path / "a")).run_dir
    second = train(config, _runtime(synthetic_root, tmp_path / "b")).run_dir
    a, b = _epochs(first).drop(columns=list(TIMING_COLUMNS)), _epochs(second).drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(a, b)
    assert a["active_1"].iloc[-1] < 300, "the comparison should cover at least one pruning step"
    other_seed = train(TrainConfig(**{**config.__dict__, "seed": 1}), _runtime(synthetic_root, tmp_path / "c"))
    assert not _epochs(other_seed.run_dir)["train_loss"].equals(_epochs(first)["train_loss"])


def test_run_folder_holds_config_epochs_summary_and_marker(synthetic_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(strategy="sp", epochs=2, batch_size=64)
    result = train(config, _runtime(synthetic_root, tmp_path))
    run_dir = result.run_dir
    assert run_dir == tmp_path / "runs" / config.run_id
    assert (run_dir / COMPLETE_MARKER).is_file()
    document = json.loads((run_dir / "config.json").read_text())
    assert TrainConfig.from_dict(document["settings"]) == config
    assert {"torch", "torchvision", "python", "dynhp_bench"} <= set(document["versions"])
    epochs = _epochs(run_dir)
    assert list(epochs.columns) == EpochRecord.columns()
    assert epochs["epoch"].tolist() == [1, 2]
    assert (epochs["model_bytes"] == 1_066_440).all() and (epochs["batch_bytes"] == 64 * 3136).all()
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("final_error_pct", "best_error_pct", "model_size_mb", "training_memory_mb", "epochs", "strategy",
                "dataset", "seed"):  # fmt: skip
        assert key in summary
    assert summary["training_memory_mb"] == pytest.approx(epochs["memory_mb"].sum() / 1000)
    assert summary["final_error_pct"] == epochs["test_error_pct"].iloc[-1]
    assert summary["model_size_mb"] == pytest.approx(1_066_440 / 1024 / 1000)


def test_training_learns_the_synthetic_task(synthetic_root: Path, tmp_path: Path) -> None:
    result = train(TrainConfig(strategy="dense", epochs=4, batch_size=32), _runtime(synthetic_root, tmp_path))
    losses = [r.train_loss for r in result.records]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.5 * losses[0]
    assert result.records[-1].test_error_pct < 20.0
    assert [r.expected_active_1 for r in result.records] == [300.0] * 4


def test_hard_pruning_shrinks_every_tensor_and_never_grows(synthetic_root: Path) -> None:
    data = load_dataset("mnist", synthetic_root, download=False)
    trainer = Trainer(TrainConfig(strategy="hp", epochs=5, batch_size=32, gamma=0.84), data, torch.device("cpu"))
    shapes, kept_pixels = [], []
    for epoch in range(1, 5):
        record = trainer.run_epoch(epoch, last=False)
        assert record.model_bytes == model_bytes(shapes[-1] if shapes else [(784, 300), (300, 100), (100, 10)])
        shapes.append(trainer.net.shapes)
        kept_pixels.append(set(trainer.input_index.tolist()))
        for param in trainer.net.parameters():
            state = trainer.optimizer.state[param]
            assert state["exp_avg"].shape == param.shape and state["exp_avg_sq"].shape == param.shape
        assert trainer.train_x.shape[1] == trainer.net.shapes[0][0] == trainer.test_x.shape[1]
    widths = [[s[0] for s in layer] + [layer[-1][1]] for layer in shapes]
    for before, after in itertools.pairwise(widths):
        assert all(b >= a for b, a in zip(before, after, strict=True))
    assert widths[-1][1] < 300 and widths[-1][2] < 100
    for before, after in itertools.pairwise(kept_pixels):
        assert after <= before, "a removed input pixel came back"


def test_pruning_keeps_adam_moments_of_surviving_weights(synthetic_root: Path) -> None:
    data = load_dataset("mnist", synthetic_root, download=False)
    # γ = 0 removes nothing by itself, so the removal below is the only one.
    trainer = Trainer(TrainConfig(strategy="hp", epochs=2, batch_size=64, gamma=0.0), data, torch.device("cpu"))
    trainer.run_epoch(1, last=False)
    w1 = trainer.net.weights[1]
    before = trainer.optimizer.state[w1]["exp_avg"].clone()
    remove = [
        torch.zeros(784, dtype=torch.bool),
        torch.zeros(300, dtype=torch.bool),
        torch.zeros(100, dtype=torch.bool),
    ]
    remove[1][::3] = True  # hidden-1 neurons: columns of W_1, rows of W_0
    remove[2][:10] = True  # hidden-2 neurons: columns of W_2, rows of W_1
    assert trainer.remove_units(remove)
    expected = before[10:][:, ~remove[1]]
    assert torch.equal(trainer.optimizer.state[w1]["exp_avg"], expected)
    trainer.run_epoch(2, last=True)  # Adam keeps stepping on the sliced state


def test_dynhp_batch_never_exceeds_its_cap_nor_memory_its_budget(synthetic_root: Path, tmp_path: Path) -> None:
    budget = 1_066_440 + 40 * 4 * 784
    config = TrainConfig(strategy="dynhp", epochs=5, batch_size=16, alpha_bs=0.0, budget_bytes=budget, gamma=0.84)
    records = train(config, _runtime(synthetic_root, tmp_path)).records
    sizes = [r.batch_size for r in records]
    assert sizes[0] == 16 and sizes == sorted(sizes) and max(sizes) > 16
    for previous, record in itertools.pairwise(records):
        assert previous.batch_cap is not None and record.batch_size <= previous.batch_cap
    assert all(r.model_bytes + r.batch_bytes <= budget for r in records)


def test_dynhp_batch_stops_at_the_cap_when_nothing_is_pruned(synthetic_root: Path, tmp_path: Path) -> None:
    budget = 1_066_440 + 20 * 4 * 784
    config = TrainConfig(strategy="dynhp", epochs=4, batch_size=16, alpha_bs=0.0, budget_bytes=budget, gamma=0.0)
    records = train(config, _runtime(synthetic_root, tmp_path)).records
    assert [r.batch_size for r in records] == [16, 20, 20, 20]
    assert [r.batch_cap for r in records] == [20, 20, 20, 20]


def test_step_cadence_grows_the_batch_within_an_epoch(synthetic_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(strategy="dynhp", epochs=1, batch_size=4, alpha_bs=0.5, growth_cadence="step")
    record = train(config, _runtime(synthetic_root, tmp_path)).records[0]
    assert record.batch_size > 4
    assert record.steps < 512 // 4


def test_per_example_gate_draws_count_every_draw(synthetic_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(strategy="sp", epochs=1, batch_size=64, gate_draws="example")
    record = train(config, _runtime(synthetic_root, tmp_path)).records[0]
    assert 0 < record.expected_active_1 < 300


def test_a_complete_run_is_skipped_unless_forced(synthetic_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(strategy="sp", epochs=1, batch_size=128)
    first = train(config, _runtime(synthetic_root, tmp_path))
    again = train(config, _runtime(synthetic_root, tmp_path))
    assert again.skipped and again.summary == first.summary
    forced = train(config, _runtime(synthetic_root, tmp_path), force=True)
    assert not forced.skipped and len(forced.records) == 1
    assert RunFolder(forced.run_dir).is_complete


def test_ema_follows_the_published_l0_code_and_is_evaluation_only(synthetic_root: Path) -> None:
    data = load_dataset("mnist", synthetic_root, download=False)
    config = TrainConfig(strategy="sp", epochs=1, batch_size=64, ema_decay=0.9)
    trainer = Trainer(config, data, torch.device("cpu"))
    params = list(trainer.net.parameters())
    p0 = [p.detach().clone() for p in params]
    p1 = [p + 1.0 for p in p0]
    p2 = [p - 2.0 for p in p0]
    for values in (p1, p2):
        for param, value in zip(params, values, strict=True):
            param.data = value.clone()
        trainer._update_ema()
    # L0MLP: avg starts at the initial parameters; avg ← 0.9·avg + 0.1·p after each step.
    for average, a, b, c in zip(trainer.ema or [], p0, p1, p2, strict=True):
        torch.testing.assert_close(average, 0.81 * a + 0.09 * b + 0.1 * c)
    # Evaluation reads avg / (1 − 0.9²) and puts the trained parameters back.
    averaged = trainer.test_error_pct()
    assert all(torch.equal(p, c) for p, c in zip(params, p2, strict=True))
    for param, average in zip(params, trainer.ema or [], strict=True):
        param.data = average / (1.0 - 0.9**2)
    assert trainer._test_error_pct() == averaged


def test_ema_is_sliced_with_pruning_and_changes_nothing_but_test_error(synthetic_root: Path) -> None:
    data = load_dataset("mnist", synthetic_root, download=False)
    plain = TrainConfig(strategy="dynhp", epochs=3, batch_size=16, gamma=0.84, alpha_bs=0.9)
    runs = {}
    for decay in (None, 0.99):
        trainer = Trainer(TrainConfig(**{**plain.__dict__, "ema_decay": decay}), data, torch.device("cpu"))
        records = [trainer.run_epoch(epoch, last=epoch == 3) for epoch in range(1, 4)]
        if decay is not None:
            assert [t.shape for t in trainer.ema or []] == [p.shape for p in trainer.net.parameters()]
        runs[decay] = pd.DataFrame(records).drop(columns=[*TIMING_COLUMNS, "test_error_pct"])
    assert runs[None]["active_1"].iloc[-1] < 300, "the comparison should cover at least one pruning step"
    pd.testing.assert_frame_equal(runs[None], runs[0.99])


def test_ema_survives_a_checkpoint(synthetic_root: Path) -> None:
    data = load_dataset("mnist", synthetic_root, download=False)
    config = TrainConfig(strategy="hp", epochs=2, batch_size=64, gamma=0.84, ema_decay=0.95)
    first = Trainer(config, data, torch.device("cpu"))
    first.run_epoch(1, last=False)
    state = first.state_dict()
    uninterrupted = first.run_epoch(2, last=True)
    resumed = Trainer(config, data, torch.device("cpu"))
    resumed.load_state_dict(state)
    again = resumed.run_epoch(2, last=True)
    assert again.test_error_pct == uninterrupted.test_error_pct
    assert resumed.ema_steps == first.ema_steps
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema or [], first.ema or [], strict=True))


def test_augmented_cifar10_resumes_exactly_after_inputs_were_removed(cifar_root: Path) -> None:
    data = load_dataset("cifar10", cifar_root, download=False)
    config = TrainConfig(dataset="cifar10", strategy="hp", epochs=3, batch_size=64, gamma=0.84)
    assert config.augment and config.normalize
    first = Trainer(config, data, torch.device("cpu"))
    first.run_epoch(1, last=False)
    assert first.train_columns is not None and first.train_columns.shape[0] < 3072, "HP removed input pixels"
    assert first.train_x.shape[1] == 3072, "the training images stay whole for augmentation"
    state = first.state_dict()
    uninterrupted = [first.run_epoch(epoch, last=epoch == 3) for epoch in (2, 3)]
    resumed = Trainer(config, data, torch.device("cpu"))
    resumed.load_state_dict(state)
    again = [resumed.run_epoch(epoch, last=epoch == 3) for epoch in (2, 3)]
    for a, b in zip(uninterrupted, again, strict=True):
        assert {**a.__dict__, "wall_s": 0, "peak_rss_bytes": 0} == {**b.__dict__, "wall_s": 0, "peak_rss_bytes": 0}
    unaugmented = Trainer(TrainConfig(**{**config.__dict__, "augment": False}), data, torch.device("cpu"))
    unaugmented.load_state_dict(state)
    assert unaugmented.run_epoch(2, last=False).train_loss != uninterrupted[0].train_loss


def test_normalised_training_images_have_channel_mean_0_and_std_1(cifar_root: Path) -> None:
    data = load_dataset("cifar10", cifar_root, download=False)
    config = TrainConfig(dataset="cifar10", strategy="hp", epochs=1, validation_split=100, augment=False)
    trainer = Trainer(config, data, torch.device("cpu"))
    batch = trainer.training_batch(torch.arange(trainer.n_train))
    channels = batch.reshape(-1, 3, 1024).transpose(0, 1).reshape(3, -1)
    assert channels.mean(1).abs().max() < 1e-5 and (channels.std(1, correction=0) - 1).abs().max() < 1e-5
    # Validation and test images use the training images' statistics, not their own.
    raw = data.train_x[-100:].reshape(-1, 3, 1024)
    mean = data.train_x[:-100].reshape(-1, 3, 1024).mean(dim=(0, 2))
    std = data.train_x[:-100].reshape(-1, 3, 1024).std(dim=(0, 2), correction=0)
    expected = ((raw - mean.view(1, 3, 1)) / std.view(1, 3, 1)).reshape(100, -1)
    assert torch.allclose(trainer.val_x, expected, atol=1e-5)
    plain = Trainer(TrainConfig(dataset="cifar10", strategy="sp", epochs=1, normalize=False), data, torch.device("cpu"))
    assert torch.equal(plain.train_x, data.train_x)
    # Removed input pixels leave the batch with their own channel's numbers: the kept columns of the full batch.
    remove = [torch.zeros(n_in, dtype=torch.bool) for n_in, _ in trainer.net.shapes]
    remove[0][::3] = True  # every third column: all three channels lose some
    trainer.remove_units(remove)
    index = torch.tensor([0, 5, 7])
    assert torch.equal(trainer.training_batch(index), batch[index][:, ~remove[0]])


@pytest.mark.parametrize("strategy", ["sp", "hp"])
def test_the_averages_raw_error_is_exactly_the_same_run_without_the_average(
    synthetic_root: Path, tmp_path: Path, strategy: str
) -> None:
    # The parameter average changes what is evaluated, nothing that is trained: the averaged run's trained parameters
    # are the plain run's, so its final_error_raw_pct is the plain run's final error (the calibration's pairing).
    settings = {"strategy": strategy, "batch_size": 64, "epochs": 3, "profile": "smoke", "subset": 256}
    plain = train(TrainConfig(**settings), _runtime(synthetic_root, tmp_path))  # type: ignore[arg-type]
    averaged = train(TrainConfig(**settings, ema_decay=0.9), _runtime(synthetic_root, tmp_path))  # type: ignore[arg-type]
    assert "final_error_raw_pct" not in plain.summary
    assert averaged.summary["final_error_raw_pct"] == plain.summary["final_error_pct"]
    same = [c for c in EpochRecord.columns() if c not in (*TIMING_COLUMNS, "test_error_pct")]
    pd.testing.assert_frame_equal(_epochs(averaged.run_dir)[same], _epochs(plain.run_dir)[same])
    assert not _epochs(averaged.run_dir)["test_error_pct"].equals(_epochs(plain.run_dir)["test_error_pct"])


def test_zero_biases_start_at_zero_and_the_default_keeps_its_run_id() -> None:
    default = TrainConfig(strategy="sp", batch_size=512)
    assert default.bias_init == "normal"
    assert TrainConfig(strategy="sp", batch_size=512, bias_init="normal").run_id == default.run_id
    assert TrainConfig(strategy="sp", batch_size=512, bias_init="zeros").run_id != default.run_id
    assert default.run_id.endswith(TrainConfig(strategy="sp", batch_size=512, bias_init=None).run_id[-8:])
    zeros = ARCHITECTURES["mlp"].build(
        TrainConfig(strategy="sp", bias_init="zeros"), (1, 28, 28), torch.Generator().manual_seed(0)
    )
    drawn = ARCHITECTURES["mlp"].build(default, (1, 28, 28), torch.Generator().manual_seed(0))
    assert all(float(b.detach().abs().max()) == 0.0 for b in zeros.biases)  # type: ignore[union-attr]
    assert all(0.0 < float(b.detach().std()) < 0.02 for b in drawn.biases)  # type: ignore[union-attr]
    # The first layer's weights are drawn before any bias, so they agree.
    assert torch.equal(zeros.weights[0], drawn.weights[0])  # type: ignore[index]
