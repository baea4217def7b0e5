"""The compiled loops (`kernels`): each against the PyTorch expression it replaces, how they are built and
cached, and what happens where they cannot be built.

Tolerances: element-wise results equal to the bit where the C computes the same float operations in the same
order (-ffp-contract=off); sums within 1e-6 of the largest term's scale, since they are summed in another order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dynhp_bench.cli.commands import main
from dynhp_bench.data.datasets import load_dataset
from dynhp_bench.models.mlp import BETA, EPS, GAMMA_HC, ZETA, sample_gates
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training import kernels
from dynhp_bench.training.fast_step import GATE_SLOPE, FastStep
from dynhp_bench.training.trainer import Runtime, Trainer, train

SUM_TOLERANCE = 1e-6
NO_COMPILER = kernels.load() is None
needs_compiler = pytest.mark.skipif(
    NO_COMPILER, reason=f"the kernels cannot be built here: {kernels.unavailable_reason()}"
)


@pytest.fixture
def fresh_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`kernels.load` forgotten, and its cache folder empty, for the test; restored afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernels.load.cache_clear()
    yield tmp_path / "cache" / "dynhp-bench" / "kernels"
    kernels.load.cache_clear()


def _loaded() -> kernels.Kernels:
    loaded = kernels.load()
    assert loaded is not None
    return loaded


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = max(float(want.abs().max()), 1e-30)
    assert float((got - want).abs().max()) <= SUM_TOLERANCE * scale


def _random(*shape: int, seed: int, low: float = -1.0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * (1.0 - low) + low


@needs_compiler
@pytest.mark.parametrize("statistic", [False, True])
def test_weight_pass_with_a_shared_gate(statistic: bool) -> None:
    fused, address = _loaded(), kernels.address
    out, n_in, wd = 7, 37, 0.25
    m, w = _random(out, n_in, seed=1), _random(out, n_in, seed=2)
    gate, prob = _random(n_in, seed=3, low=0.0), _random(n_in, seed=4, low=0.0)
    grad, gate_grad, column_sq = torch.full((out, n_in), 9.0), torch.full((n_in,), 9.0), torch.full((n_in,), 9.0)
    grad_sq = torch.tensor(0.5)
    fused.weight_pass(
        address(m), address(w), address(grad), address(gate), address(prob), wd, address(gate_grad),
        address(column_sq), address(grad_sq if statistic else None), out, n_in,
    )  # fmt: skip
    assert torch.equal(grad, m * gate + wd * w * prob)
    _close(gate_grad, (m * w).sum(0))
    _close(column_sq, (w * w).sum(0))
    assert float(grad_sq) == pytest.approx(0.5 + float((m * gate).square().sum()) if statistic else 0.5, rel=1e-6)


@needs_compiler
def test_weight_pass_in_place_without_a_gate() -> None:
    """Per-example draws: the data gradient is already in `grad`; the decay joins it in place."""
    fused, address = _loaded(), kernels.address
    out, n_in, wd = 5, 19, 0.5
    data, w, prob = _random(out, n_in, seed=5), _random(out, n_in, seed=6), _random(n_in, seed=7, low=0.0)
    grad, column_sq, grad_sq = data.clone(), torch.empty(n_in), torch.zeros(())
    fused.weight_pass(
        address(grad), address(w), address(grad), 0, address(prob), wd, 0, address(column_sq), address(grad_sq),
        out, n_in,
    )  # fmt: skip
    assert torch.equal(grad, data + wd * w * prob)
    _close(column_sq, (w * w).sum(0))
    assert float(grad_sq) == pytest.approx(float(data.square().sum()), rel=1e-6)


@needs_compiler
@pytest.mark.parametrize("gated", [False, True])
def test_tap_add_is_the_sum_over_examples_of_the_squared_norms(gated: bool) -> None:
    fused, address = _loaded(), kernels.address
    rows, out, n_in = 6, 11, 23
    delta, h, gate = _random(rows, out, seed=8), _random(rows, n_in, seed=9), _random(n_in, seed=10, low=0.0)
    total = torch.tensor(2.0)
    fused.tap_add(address(total), address(delta), address(h), address(gate if gated else None), rows, out, n_in)
    a = h * gate if gated else h
    want = 2.0 + float((delta.square().sum(1) * (a.square().sum(1) + 1.0)).sum())
    assert float(total) == pytest.approx(want, rel=1e-6)


@needs_compiler
@pytest.mark.parametrize(
    ("tap", "grad_sq", "want"),
    [(1.0, 1.0, 4 * 1.0 - (1.0 + 0.25 + 1.0)), (0.5, 1.0, 0.0), (math.nan, 1.0, math.nan)],
)
def test_variance_l1_clamps_at_zero_keeps_nan_and_resets_its_accumulators(
    tap: float, grad_sq: float, want: float
) -> None:
    """‖S‖₁ = B·tap − (‖ḡ_W‖² + ‖ḡ_b‖²), here with B = 4 and bias gradients (0.5, −1): ‖ḡ_b‖² = 1.25."""
    fused, address = _loaded(), kernels.address
    total, weights_sq, s_l1 = torch.tensor(tap), torch.tensor(grad_sq), torch.tensor(-1.0)
    bias_grad = torch.tensor([0.5, -1.0])
    fused.variance_l1(address(s_l1), address(total), address(weights_sq), address(bias_grad), 2, 4)
    if math.isnan(want):
        assert math.isnan(float(s_l1))
    else:
        assert float(s_l1) == pytest.approx(want, rel=1e-6)
    assert float(total) == 0.0 and float(weights_sq) == 0.0


@needs_compiler
def test_gates_draw_is_the_hard_concrete_draw_of_the_same_numbers() -> None:
    fused, address = _loaded(), kernels.address
    n = 4000
    log_alpha = _random(n, seed=11) * 5.0
    raw = torch.rand(n, generator=torch.Generator().manual_seed(12))
    noise = raw * (1.0 - 2.0 * EPS) + EPS  # gates.uniform_noise's arithmetic on the same draw
    sample, pre_clamp, gates, counts = torch.empty(n), torch.empty(n), torch.empty(n), torch.ones(n)
    fused.gates_draw(
        address(raw), address(log_alpha), n, address(sample), address(pre_clamp), address(gates), address(counts),
        1.0 - 2.0 * EPS, EPS, BETA, ZETA, GAMMA_HC,
    )  # fmt: skip
    want = sample_gates(log_alpha, noise)
    _close(gates, want)
    _close(sample, torch.sigmoid((torch.logit(noise) + log_alpha) / BETA))
    assert torch.equal(pre_clamp.clamp(0.0, 1.0), gates)
    assert torch.equal(counts, 1.0 + (gates > 0).float())
    assert 0 < int((gates == 0).sum()) < n and 0 < int((gates == 1).sum()) < n  # both clamps were exercised


@needs_compiler
def test_gates_backward_is_the_chain_rule_and_the_penalty() -> None:
    fused, address = _loaded(), kernels.address
    n, n_bias, wd = 50, 9, 0.3
    sample, prob = _random(n, seed=13, low=0.0), _random(n, seed=14, low=0.0)
    pre_clamp = sample * (ZETA - GAMMA_HC) + GAMMA_HC
    gates = pre_clamp.clamp(0.0, 1.0)
    gate_grad, charge_constant, column_sq = _random(n, seed=15), _random(n, seed=16, low=0.0), _random(n, seed=17)
    biases, bias_grad = _random(n_bias, seed=18), _random(n_bias, seed=19)
    log_alpha_grad, penalty = torch.empty(n), torch.empty(())
    want_bias_grad = bias_grad + wd * biases
    fused.gates_backward(
        address(gate_grad), address(sample), address(pre_clamp), address(gates), address(prob),
        address(charge_constant), address(column_sq), n, GATE_SLOPE, wd, address(log_alpha_grad), address(biases),
        address(bias_grad), n_bias, address(penalty),
    )  # fmt: skip
    charge = charge_constant + 0.5 * wd * column_sq
    through = (pre_clamp == gates) * gate_grad * GATE_SLOPE * sample * (1.0 - sample)
    _close(log_alpha_grad, through + charge * prob * (1.0 - prob))
    assert torch.equal(bias_grad, want_bias_grad)
    want_penalty = float((prob * charge).sum()) + 0.5 * wd * float(biases.square().sum())
    assert float(penalty) == pytest.approx(want_penalty, rel=1e-6)
    assert bool(((pre_clamp != gates) & (through == 0)).any())  # some gates were clamped, and pass nothing


@needs_compiler
def test_the_library_is_compiled_once_and_then_read_from_the_cache(fresh_load: Path) -> None:
    assert kernels.load() is not None
    built = list(fresh_load.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary file left behind
    made = built[0].stat().st_mtime_ns
    kernels.load.cache_clear()
    assert kernels.load() is not None
    assert [p.stat().st_mtime_ns for p in fresh_load.iterdir()] == [made]


def test_without_a_compiler_the_fast_step_runs_on_pytorch_operations(
    fresh_load: Path, monkeypatch: pytest.MonkeyPatch, synthetic_root: Path
) -> None:
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    assert kernels.load() is None
    assert kernels.unavailable_reason() == "no C compiler found ($CC, cc, gcc or clang)"
    data = load_dataset("mnist", synthetic_root, download=False)
    trainer = Trainer(TrainConfig(strategy="sp", batch_size=16, hidden=(12, 8)), data, torch.device("cpu"))
    path = FastStep.bind(trainer)
    assert path is not None and path.kernels is None
    record = trainer.run_epoch(1, last=True)
    assert math.isfinite(record.train_loss)


def test_a_compiler_that_fails_is_reported_in_one_line(fresh_load: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "false")  # found on PATH, exits with 1 and says nothing
    assert kernels.load() is None
    assert kernels.unavailable_reason() == "the C kernels could not be built: false exited with 1: no message"
    assert not fresh_load.exists() or not list(fresh_load.iterdir())  # nothing half-written is kept


@needs_compiler
def test_fast_uses_the_compiled_loops_and_fast_torch_does_not(synthetic_root: Path) -> None:
    data = load_dataset("mnist", synthetic_root, download=False)
    config = TrainConfig(strategy="dynhp", batch_size=16, hidden=(12, 8))
    kinds = {
        step: FastStep.bind(Trainer(config, data, torch.device("cpu"), step=step)) for step in ("fast", "fast_torch")
    }
    assert kinds["fast"] is not None and kinds["fast"].kernels is not None
    assert kinds["fast_torch"] is not None and kinds["fast_torch"].kernels is None
    dense = Trainer(TrainConfig(strategy="dense", batch_size=16, hidden=(12, 8)), data, torch.device("cpu"))
    path = FastStep.bind(dense)
    assert path is not None and path.kernels is None  # an ungated network has nothing for them to do


@pytest.mark.parametrize(("step", "noted"), [("fast", True), ("fast_torch", False)])
def test_train_says_when_the_fast_step_has_no_compiled_loops(
    fresh_load: Path,
    monkeypatch: pytest.MonkeyPatch,
    synthetic_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    step: str,
    noted: bool,
) -> None:
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    with pytest.raises(SystemExit) as info:
        main(["train", "--strategy", "sp", "--profile", "smoke", "--epochs", "1", "--subset", "64", "--data-dir",
              str(synthetic_root), "--out", str(tmp_path / "out"), "--threads", "1", "--step", step])  # fmt: skip
    err = capsys.readouterr().err
    assert info.value.code in (0, None), err
    note = (
        "note: no C compiler found ($CC, cc, gcc or clang); the fast step runs on PyTorch operations alone "
        "(as --step fast_torch), up to 1.3 × slower at small batches"
    )
    assert (note in " ".join(err.split())) == noted
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    runtime = json.loads((run_dir / "config.json").read_text())["runtime"]
    assert runtime["step"] == step and runtime["compiled_loops"] is False


@needs_compiler
def test_config_json_records_that_the_compiled_loops_ran(synthetic_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(strategy="sp", epochs=1, batch_size=16, subset=64)
    recorded = {}
    for step in ("fast", "fast_torch", "autograd"):
        result = train(config, Runtime(data_dir=synthetic_root, results_root=tmp_path / step, threads=1, step=step))
        recorded[step] = json.loads((result.run_dir / "config.json").read_text())["runtime"]["compiled_loops"]
    assert recorded == {"fast": True, "fast_torch": False, "autograd": False}
