"""The only training loop. It owns the data, the optimiser, the run folder and the logging; the strategy
(`strategies.py`) decides what to prune and how the batch size moves, and this module acts on it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from dynhp_bench import __version__
from dynhp_bench.data.augmentation import augmented, column_statistics
from dynhp_bench.data.datasets import Dataset, input_shape, load_dataset, resolve_data_dir
from dynhp_bench.errors import Interrupted, ResultsError, SettingsError
from dynhp_bench.memory import batch_bytes, memory_mb, to_mb, training_memory_mb
from dynhp_bench.models.network import GatedNetwork
from dynhp_bench.models.registry import ARCHITECTURES
from dynhp_bench.models.variance import GradientTap, RunningAverages, growth_ratio
from dynhp_bench.pruning.strategies import STRATEGIES, EpochEnd, GrowthStats, MemoryState, Strategy, WeightPruning
from dynhp_bench.settings.config import MAX_EPOCHS, TrainConfig, check_count
from dynhp_bench.training import kernels
from dynhp_bench.training.fast_step import FastStep
from dynhp_bench.training.interrupts import StopRequest, stop_on_signals
from dynhp_bench.training.record import EpochRecord, peak_rss_bytes
from dynhp_bench.training.run_folder import RunFolder, run_path
from dynhp_bench.training.threads import check_threads, default_threads

DEVICES = ("auto", "cpu", "cuda")
# `Runtime.step`: the fast path where it covers the network (with its compiled loops where a C compiler is found,
# or on PyTorch operations alone), else autograd; or autograd always.
STEP_KINDS = ("fast", "fast_torch", "autograd")
FAST_STEPS = STEP_KINDS[:2]
EVAL_CHUNK = 10_000
CHECKPOINT_INTERVAL_S = 300.0  # without --checkpoint-every: at most ~5 minutes of work are lost


@dataclass(frozen=True)
class Runtime:
    """Where and how a run executes; none of it changes the results' identity (the run id)."""

    data_dir: Path | None = None
    results_root: Path = Path("results")
    threads: int | None = None  # None: `threads.default_threads` picks per run
    device: str = "auto"
    checkpoint_every: int | None = None
    workers: int = 1  # processes sharing this machine's cores (a sweep's workers)
    step: str = "fast"  # the training step, one of STEP_KINDS

    def __post_init__(self) -> None:
        check_count("--checkpoint-every", self.checkpoint_every, low=1, high=MAX_EPOCHS)
        if self.device not in DEVICES:
            raise SettingsError(f"--device={self.device!r} is not known; expected one of {', '.join(DEVICES)}")
        check_threads(self.threads)
        if self.step not in STEP_KINDS:
            raise SettingsError(f"--step={self.step!r} is not known; expected one of {', '.join(STEP_KINDS)}")

    def torch_device(self) -> torch.device:
        """The torch device: `auto` is CUDA when available, else the CPU."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SettingsError("--device=cuda but no CUDA device is available; expected --device cpu or auto")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclass
class RunResult:
    """What `train` returns: the run folder, its summary and (unless skipped) its epoch records."""

    run_dir: Path
    summary: dict[str, Any]
    records: list[EpochRecord] = field(default_factory=list)
    skipped: bool = False


EpochCallback = Callable[[EpochRecord], None]
# Within an epoch: (epoch, images trained so far, images in the epoch), at most every STEP_REPORT_S seconds.
StepCallback = Callable[[int, int, int], None]
STEP_REPORT_S = 0.5


class _StopNow(Exception):  # noqa: N818 - control flow inside this module only
    """Raised after a step when a stop was requested; `train` writes the checkpoint and stops."""


@dataclass
class StepTotals:
    """Sums over one epoch's training steps (device tensors, read once at the epoch's end)."""

    loss_sum: torch.Tensor
    penalty_sum: torch.Tensor
    ratio_sum: torch.Tensor
    counts: torch.Tensor
    draws: int = 0
    steps: int = 0
    largest_batch: int = 0


class StepPath(Protocol):
    """One way of computing a training step, made for one epoch's steps (`Trainer.step_path`)."""

    def gradients(self, xb: torch.Tensor, yb: torch.Tensor, totals: StepTotals) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the gates and put the objective's gradient in every parameter's ``.grad``; add the step's open
        gates, penalty and growth ratio to `totals`; return (data loss, growth ratio or NaN)."""
        ...

    def update(self) -> None:
        """Adam's step, then pruned weights back to zero and log α clamped."""
        ...

    def release(self) -> None:
        """The epoch's steps are over (also after an exception)."""
        ...


class AutogradStep:
    """The reference step: the network's forward under autograd, the closed-form penalty gradient, the trainer's
    Adam. Every architecture and optimiser; the fast path is tested against it."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def gradients(self, xb: torch.Tensor, yb: torch.Tensor, totals: StepTotals) -> tuple[torch.Tensor, torch.Tensor]:
        """See `StepPath.gradients`."""
        trainer = self.trainer
        config, net, device = trainer.config, trainer.net, trainer.device
        per_example = config.gate_draws == "example"
        track_variance = trainer.strategy.needs_gradient_variance
        rows = xb.shape[0]
        gates = None
        if net.gated:
            flat_gates = net.sample(rows if per_example else None, trainer.device_generator)
            totals.counts += (flat_gates > 0).sum(0) if per_example else (flat_gates > 0)
            totals.draws += rows if per_example else 1
            gates = net.split(flat_gates)
        if track_variance:
            trainer.tap.reset(device)
        logits = net(xb, gates, hooks=trainer.tap if track_variance else None)
        data_loss = F.cross_entropy(logits, yb)
        trainer.optimizer.zero_grad(set_to_none=True)
        data_loss.backward()
        if track_variance:
            # The penalty's gradient is not added yet: the gradients are the data loss's, ḡ.
            s_l1 = net.variance_l1(trainer.tap, xb, yb, gates)
        penalty = torch.zeros((), device=device)
        if net.gated:
            penalty = net.add_penalty_gradients(
                lam=config.lam or 0.0,
                weight_decay=config.weight_decay,
                n_train=trainer.n_train,
                divide_by_n=config.lambda_scaling == "divide_by_n",
            )
            totals.penalty_sum += penalty
        ratio = torch.full((), math.nan)
        if track_variance:
            ratio = trainer.growth_ratio(s_l1, data_loss.detach(), penalty.detach(), rows)
            totals.ratio_sum += ratio
        return data_loss.detach(), ratio

    def update(self) -> None:
        """See `StepPath.update`."""
        net = self.trainer.net
        self.trainer.optimizer.step()
        if net.pruned is not None:
            net.zero_pruned()
        if net.gated:
            net.clamp_log_alphas()

    def release(self) -> None:
        """Nothing to give back."""


class Trainer:
    """One run's state: the network, Adam, the data as currently fed (pruned input columns), the batch size.

    With ``normalize`` every image is normalised per channel with the statistics of the images trained on (the
    validation and test images once, the training images batch by batch).
    With ``augment`` the training images are kept whole and each batch is augmented (`augmentation.augmented`,
    drawing from the run's device generator) before its pruned input columns are selected.
    `step` is `Runtime.step`: ``fast`` trains with `fastpath.FastStep` where it covers the network, using the
    compiled loops of `kernels` where they can be built; ``fast_torch`` the same on PyTorch operations alone;
    ``autograd`` with the reference `AutogradStep` always.
    """

    def __init__(self, config: TrainConfig, data: Dataset, device: torch.device, *, step: str = "fast") -> None:
        self.config = config
        self.step_kind = step
        self.device = device
        self.strategy: Strategy = STRATEGIES[config.strategy](config)
        self.cpu_generator = torch.Generator().manual_seed(config.seed)
        self.device_generator = (
            self.cpu_generator if device.type == "cpu" else torch.Generator(device=device).manual_seed(config.seed)
        )
        architecture = ARCHITECTURES[config.arch]
        self.net: GatedNetwork = architecture.build(config, input_shape(config.dataset), self.cpu_generator).to(device)
        self.optimizer = make_adam(list(self.net.parameters()), lr=config.lr)
        self.data = data
        self.stop: StopRequest | None = None
        self.on_step: StepCallback | None = None
        held_out = config.validation_split or 0
        if held_out >= data.n_train:
            raise SettingsError(
                f"--validation-split={held_out} leaves none of the {data.n_train} training images to train on; "
                f"expected fewer than {data.n_train}"
            )
        # The validation split is the last `held_out` training images; the others are trained on.
        self.n_train = data.n_train - held_out
        self.image_shape = input_shape(config.dataset)
        # With normalize: each input column's channel mean and standard deviation (full width), and those of the
        # columns of `train_x` (selected as input pixels are removed, unless augment keeps the images whole).
        self.column_mean_std: tuple[torch.Tensor, torch.Tensor] | None = None
        self.fed_mean_std: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.normalize:
            mean, std = column_statistics(data.train_x[: self.n_train], self.image_shape)
            self.column_mean_std = (mean.to(device), std.to(device))
        self.train_columns: torch.Tensor | None = None  # with augment: the input columns kept, else None
        self.input_index = torch.arange(data.train_x.shape[1])
        self._feed(self.input_index)
        self.train_y = data.train_y[: self.n_train].to(device)
        self.val_y = data.train_y[self.n_train :].to(device)
        self.test_y = data.test_y.to(device)
        self.validation_losses: list[float] = []
        self.batch_size = config.batch_size
        self.tap = GradientTap()
        self.growth_averages = RunningAverages() if config.growth_smoothing == "running" else None
        # The published L0 code's averaging (L0MLP.update_ema / load_ema_params): the average starts at
        # the initial parameters and is read divided by 1 − decay^steps. Evaluation only; pruning slices it.
        self.ema: list[torch.Tensor] | None = (
            None if config.ema_decay is None else [p.detach().clone() for p in self.net.parameters()]
        )
        self.ema_steps = 0

    def _feed(self, columns: torch.Tensor) -> None:
        """Put the training, validation and test images on the device, keeping the input pixels `columns` (the
        training images whole with ``augment``, selected after each augmentation). With ``normalize`` the
        validation and test images are normalised here; the training images batch by batch (`training_batch`),
        so that no second copy of the training set is held."""
        columns = columns.to(self.device)
        images = self.data.train_x.to(self.device)
        all_columns = columns.shape[0] == images.shape[1]
        kept = None if all_columns else columns
        train = images[: self.n_train]
        self.train_columns = kept if self.config.augment else None
        self.train_x = train if kept is None or self.config.augment else train.index_select(1, kept)
        if self.column_mean_std is not None:
            mean, std = self.column_mean_std
            fed = None if self.config.augment else kept
            self.fed_mean_std = (_selected(mean, fed, dim=0), _selected(std, fed, dim=0))
        self.val_x = _selected(self._normalized(images[self.n_train :]), kept)
        self.test_x = _selected(self._normalized(self.data.test_x.to(self.device)), kept)

    def _normalized(self, rows: torch.Tensor) -> torch.Tensor:
        if self.column_mean_std is None:
            return rows
        mean, std = self.column_mean_std
        return (rows - mean) / std

    def training_batch(self, index: torch.Tensor) -> torch.Tensor:
        """The training images `index` as the network is fed them: normalised (``normalize``), augmented
        (``augment``, drawing from the run's device generator), with the removed input pixels left out."""
        xb = self.train_x.index_select(0, index)
        if self.fed_mean_std is not None:
            mean, std = self.fed_mean_std
            xb = (xb - mean) / std
        if self.config.augment:
            xb = augmented(xb, self.image_shape, self.device_generator)
            if self.train_columns is not None:
                xb = xb.index_select(1, self.train_columns)
        return xb

    def state_dict(self) -> dict[str, Any]:
        """A detached copy of everything that decides the rest of the run (what a checkpoint holds)."""
        return {
            "params": [p.detach().cpu().clone() for p in self.net.parameters()],
            "buffers": [b.detach().cpu().clone() for b in self.net.buffers()],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "cpu_generator": self.cpu_generator.get_state(),
            "device_generator": None if self.device.type == "cpu" else self.device_generator.get_state(),
            "input_index": self.input_index.clone(),
            "batch_size": self.batch_size,
            "pruned": None if self.net.pruned is None else [p.cpu().clone() for p in self.net.pruned],
            "validation_losses": list(self.validation_losses),
            "ema": None if self.ema is None else [t.detach().cpu().clone() for t in self.ema],
            "ema_steps": self.ema_steps,
            "growth_averages": None if self.growth_averages is None else self.growth_averages.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` output: shapes, weights, masks, Adam, generators, pixels fed, batch size,
        validation losses."""
        params = list(self.net.parameters())
        saved = state["params"]
        index = state["input_index"]
        buffers = dict(self.net.named_buffers())
        saved_buffers = state.get("buffers", [])  # none before ResNets (the MLP has no buffers)
        inputs_differ = self.net.gates_inputs and int(saved[0].shape[1]) != len(index)
        if len(saved) != len(params) or len(saved_buffers) != len(buffers) or inputs_differ:
            raise ResultsError("checkpoint does not match this run's network; expected one written by this run")
        for param, value in zip(params, saved, strict=True):
            param.data = value.to(self.device).clone()
            param.grad = None
        for name, value in zip(buffers, saved_buffers, strict=True):
            self.net.get_buffer(name).data = value.to(self.device).clone()
        pruned = state["pruned"]
        self.net.pruned = None if pruned is None else [p.to(self.device).clone() for p in pruned]
        self.optimizer.load_state_dict(state["optimizer"])
        self.cpu_generator.set_state(state["cpu_generator"])
        if state["device_generator"] is not None and self.device.type != "cpu":
            self.device_generator.set_state(state["device_generator"])
        self.input_index = index.clone()
        self._feed(index)
        self.batch_size = int(state["batch_size"])
        self.validation_losses = [float(v) for v in state["validation_losses"]]
        if self.ema is not None:
            self.ema = [t.to(self.device).clone() for t in state["ema"]]
            self.ema_steps = int(state["ema_steps"])
        if self.growth_averages is not None:
            self.growth_averages.load_state_dict(state["growth_averages"])

    def run_epoch(self, epoch: int, *, last: bool) -> EpochRecord:
        """Train one epoch, evaluate, let the strategy prune and resize; return the epoch's record. Subnormal
        floats are flushed to zero meanwhile (`flushing_subnormals`)."""
        with flushing_subnormals():
            return self._run_epoch(epoch, last=last)

    def _run_epoch(self, epoch: int, *, last: bool) -> EpochRecord:
        started = time.perf_counter()
        net = self.net
        masked = net.pruned is not None
        totals = self._train_steps(epoch)
        steps = totals.steps
        rates = net.split(totals.counts / max(totals.draws, 1)) if net.gated else None
        # The record describes the network as trained in this epoch, before the pruning at its end.
        epoch_model_bytes = net.model_bytes()
        trainable = net.trainable_parameters()
        footprint = net.footprint_bytes(totals.largest_batch, masked=masked)
        active = net.held_units()
        expected = net.expected_units(rates)
        error_pct = self.test_error_pct()
        nonzero = self.net.nonzero_parameters()
        validation_loss = math.nan
        if self.val_x.shape[0] > 0:
            validation_loss = self.validation_loss()
            self.validation_losses.append(validation_loss)

        if not last:
            end = EpochEnd(epoch, self.config.epochs, tuple(self.validation_losses))
            pruning = self.strategy.weights_to_prune(self.net, end)
            if pruning is not None:
                self.net.prune_weights(pruning.masks)
            if self.strategy.removes_physically():
                self.remove_units(self.strategy.units_to_remove(self.net, rates))
            if pruning is not None:
                self.reset_after_pruning(pruning)
        memory = MemoryState(self.config.budget_bytes, self.net.model_bytes(), self.config.sample_bytes)
        mean_ratio = float(totals.ratio_sum / steps) if self.strategy.needs_gradient_variance else math.nan
        epoch_batch = totals.largest_batch
        if self.config.growth_cadence != "step":
            self.batch_size = self.strategy.next_batch_size(self.batch_size, GrowthStats(epoch, mean_ratio), memory)

        epoch_batch_bytes = batch_bytes(epoch_batch, self.config.sample_bytes)
        return EpochRecord(
            epoch=epoch,
            strategy=self.config.strategy,
            dataset=self.config.dataset,
            seed=self.config.seed,
            batch_size=epoch_batch,
            train_loss=float(totals.loss_sum / steps),
            train_penalty=float(totals.penalty_sum / steps),
            test_error_pct=error_pct,
            validation_loss=validation_loss,
            active_0=active[0],
            active_1=active[1],
            active_2=active[2],
            expected_active_0=expected[0],
            expected_active_1=expected[1],
            expected_active_2=expected[2],
            model_bytes=epoch_model_bytes,
            batch_bytes=epoch_batch_bytes,
            memory_mb=memory_mb(epoch_model_bytes, epoch_batch_bytes),
            model_size_mb=to_mb(epoch_model_bytes),
            trainable_params=trainable,
            nonzero_params=nonzero,
            footprint_bytes=footprint,
            variance_ratio=mean_ratio,
            batch_cap=memory.cap,
            steps=steps,
            wall_s=time.perf_counter() - started,
            peak_rss_bytes=peak_rss_bytes(),
        )

    def _train_steps(self, epoch: int) -> StepTotals:
        config, net, device = self.config, self.net, self.device
        step_growth = self.strategy.needs_gradient_variance and config.growth_cadence == "step"
        n = self.train_x.shape[0]
        perm = torch.randperm(n, generator=self.cpu_generator).to(device)
        zero = torch.zeros((), device=device)
        totals = StepTotals(zero.clone(), zero.clone(), zero.clone(), torch.zeros(net.n_gates, device=device))
        # Shapes change only between epochs.
        memory = MemoryState(config.budget_bytes, net.model_bytes(), config.sample_bytes)
        start = 0
        next_report = time.monotonic() + STEP_REPORT_S
        net.train()
        path = self.step_path()
        try:
            while start < n:
                index = perm[start : start + self.batch_size]
                start += self.batch_size
                totals.largest_batch = max(totals.largest_batch, self.batch_size)
                xb = self.training_batch(index)
                yb = self.train_y.index_select(0, index)
                data_loss, ratio = path.gradients(xb, yb, totals)
                path.update()
                if self.ema is not None:
                    self._update_ema()
                totals.loss_sum += data_loss.detach()
                totals.steps += 1
                if self.stop is not None and self.stop.requested:
                    raise _StopNow
                if self.on_step is not None and time.monotonic() >= next_report:
                    self.on_step(epoch, min(start, n), n)
                    next_report = time.monotonic() + STEP_REPORT_S
                if step_growth:
                    self.batch_size = self.strategy.next_batch_size(
                        self.batch_size, GrowthStats(epoch, float(ratio)), memory
                    )
        finally:
            path.release()
        return totals

    def growth_ratio(
        self, s_l1: torch.Tensor, data_loss: torch.Tensor, penalty: torch.Tensor, rows: int
    ) -> torch.Tensor:
        """One step's Eq. 8 ratio ‖S‖₁/F as this run's readings of it say (`variance.growth_ratio`), feeding the
        running averages with ``growth_smoothing="running"``. Both step paths call it."""
        config = self.config
        return growth_ratio(
            s_l1,
            data_loss,
            penalty,
            rows,
            variance=config.growth_variance or "examples",
            loss=config.growth_loss or "data",
            correction=config.growth_correction or "none",
            averages=self.growth_averages,
        )

    def step_path(self) -> StepPath:
        """The training step for the network as it is now: the fast path (`fastpath.FastStep`) where it covers
        the network and `step_kind` is one of its kinds, else the autograd reference (`AutogradStep`)."""
        fast = FastStep.bind(self) if self.step_kind in FAST_STEPS else None
        return fast if fast is not None else AutogradStep(self)

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.ema is not None and self.config.ema_decay is not None
        self.ema_steps += 1
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.net.parameters()], 1.0 - self.config.ema_decay)

    @torch.no_grad()
    def test_error_pct(self) -> float:
        """Misclassification error (%) on the test set with deterministic gates (and averaged parameters
        with ``ema_decay``: swapped in for the evaluation, then the trained ones put back)."""
        if self.ema is None or self.ema_steps == 0:
            return self._test_error_pct()
        assert self.config.ema_decay is not None
        params = list(self.net.parameters())
        trained = [p.data for p in params]
        correction = 1.0 - self.config.ema_decay**self.ema_steps
        for param, average in zip(params, self.ema, strict=True):
            param.data = average / correction
        try:
            return self._test_error_pct()
        finally:
            for param, data in zip(params, trained, strict=True):
                param.data = data

    @torch.no_grad()
    def raw_test_error_pct(self) -> float:
        """The test error (%) of the trained parameters themselves, averaged or not (``ema_decay``)."""
        return self._test_error_pct()

    def _test_error_pct(self) -> float:
        wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        for logits, labels in self._evaluated(self.test_x, self.test_y):
            wrong += (logits.argmax(1) != labels).sum()
        return 100.0 * float(wrong) / self.test_x.shape[0]

    def _evaluated(self, images: torch.Tensor, labels: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Logits and labels in chunks of `EVAL_CHUNK` images, with deterministic gates (call under no_grad)."""
        self.net.eval()
        gates = self.net.deterministic_gates()
        for start in range(0, images.shape[0], EVAL_CHUNK):
            yield self.net(images[start : start + EVAL_CHUNK], gates), labels[start : start + EVAL_CHUNK]

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean cross-entropy on the validation split, with deterministic gates."""
        total = torch.zeros((), device=self.device)
        for logits, labels in self._evaluated(self.val_x, self.val_y):
            total += F.cross_entropy(logits, labels, reduction="sum")
        return float(total) / self.val_x.shape[0]

    @torch.no_grad()
    def reset_after_pruning(self, pruning: WeightPruning) -> None:
        """What a strategy asks for with its pruning: fresh biases (U(±1/√fan_in) as a new nn.Linear draws
        them, from the run's generator), a fresh Adam, or neither."""
        if pruning.reset_biases:
            for bias, (n_in, _) in zip(self.net.biases, self.net.shapes, strict=True):
                bound = 1.0 / math.sqrt(n_in) if n_in > 0 else 0.0
                fresh = torch.rand(bias.shape, generator=self.cpu_generator).mul_(2 * bound).sub_(bound)
                bias.copy_(fresh.to(bias.device))
        if pruning.reset_optimizer:
            self.optimizer = make_adam(list(self.net.parameters()), lr=self.config.lr)

    def remove_units(self, remove_masks: Sequence[torch.Tensor]) -> bool:
        """Remove the units marked True, per gate group, from the network, Adam's state (and, when the first
        group is the input, the data fed)."""
        keep = [~mask.to(torch.bool) for mask in remove_masks]
        if all(bool(k.all()) for k in keep):
            return False
        position = {id(p): i for i, p in enumerate(self.net.parameters())}
        removals = self.net.remove_units(keep)
        for removal in removals:
            if self.ema is not None:
                i = position[id(removal.param)]
                self.ema[i] = self.ema[i].index_select(removal.dim, removal.index).contiguous()
            state = self.optimizer.state.get(removal.param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() == removal.param.dim():
                    state[key] = value.index_select(removal.dim, removal.index).contiguous()
        if self.net.gates_inputs and not bool(keep[0].all()):
            columns = keep[0].nonzero().squeeze(1).to(self.device)
            self.input_index = self.input_index[keep[0].cpu()]
            if self.config.augment:  # the training images stay whole: columns are selected after augmentation
                self.train_columns = self.input_index.to(self.device)
            else:
                self.train_x = self.train_x.index_select(1, columns).contiguous()
                if self.fed_mean_std is not None:
                    self.fed_mean_std = (self.fed_mean_std[0][columns], self.fed_mean_std[1][columns])
            self.val_x = self.val_x.index_select(1, columns).contiguous()
            self.test_x = self.test_x.index_select(1, columns).contiguous()
        return True


def _selected(rows: torch.Tensor, columns: torch.Tensor | None, *, dim: int = 1) -> torch.Tensor:
    return rows.contiguous() if columns is None else rows.index_select(dim, columns).contiguous()


def subnormals_flushed() -> bool:
    """Whether this thread's CPU arithmetic now flushes subnormal float32 results to zero."""
    return bool((torch.full((), 1e-30) * 1e-10).item() == 0.0)  # 1e-40 is subnormal in float32


@contextlib.contextmanager
def flushing_subnormals() -> Iterator[None]:
    """Flush subnormal floats to zero on the CPU inside the block, then restore the caller's mode.

    The first layer's weights on always-black pixels get only the penalty's weight-decay gradient, which is
    proportional to the weight: Adam shrinks them into the subnormal range (below 1.2e-38), their gradients and
    `exp_avg` follow, and CPU arithmetic on subnormals made a batch-16 SP epoch 3.7 times slower. Flushed, they
    become 0, which no error, size or memory figure can show (docs/performance.md, "Subnormal floats"). The mode
    is the thread's (CPU flags), so it is restored on the way out: a process embedding the trainer keeps IEEE
    arithmetic outside training. Where the CPU cannot flush, nothing changes.
    """
    was = subnormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was:
            torch.set_flush_denormal(False)


def make_adam(params: list[torch.nn.Parameter], *, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where the platform has one (CPU and CUDA in recent torch): the same
    update, one kernel for all parameters instead of several per parameter."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def config_document(config: TrainConfig, runtime: Runtime, device: torch.device, data_root: Path) -> dict[str, Any]:
    """What config.json holds: the run id, every resolved setting, the runtime and versions."""
    return {
        "run_id": config.run_id,
        "settings": config.to_dict(),
        "runtime": {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "step": runtime.step,
            # Whether `--step fast` had its compiled loops (`kernels`) on this machine.
            "compiled_loops": kernels.for_step(runtime.step, device) is not None,
            "data_dir": str(data_root),
        },
        "versions": {
            "dynhp_bench": __version__,
            "torch": torch.__version__,
            "torchvision": _package_version("torchvision"),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def summarize(config: TrainConfig, records: list[EpochRecord], *, n_train: int, wall_s: float) -> dict[str, Any]:
    """The per-run summary (summary.json)."""
    final = records[-1]
    best = min(records, key=lambda r: r.test_error_pct)
    return {
        "run_id": config.run_id,
        "status": "complete",
        "strategy": config.strategy,
        "dataset": config.dataset,
        "seed": config.seed,
        "profile": config.profile,
        "epochs": len(records),
        "n_train": n_train,
        "final_error_pct": final.test_error_pct,
        "best_error_pct": best.test_error_pct,
        "best_epoch": best.epoch,
        "model_bytes": final.model_bytes,
        "model_size_mb": final.model_size_mb,
        "nonzero_params": final.nonzero_params,
        "training_memory_mb": training_memory_mb([r.memory_mb for r in records]),
        "mean_memory_mb": sum(r.memory_mb for r in records) / len(records),
        "batch_size_initial": records[0].batch_size,
        "batch_size_final": final.batch_size,
        "active_final": [final.active_0, final.active_1, final.active_2],
        "settings": config.to_dict(),
        "wall_s": wall_s,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def train(
    config: TrainConfig,
    runtime: Runtime | None = None,
    *,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
    force: bool = False,
    wait: bool = False,
) -> RunResult:
    """Train one run to completion and write its folder.

    A complete run (marker and readable summary) is skipped unless `force`. An unfinished run with a checkpoint
    continues from it (the rows of epochs trained after the checkpoint are trained again, identically on the CPU);
    `force` starts afresh. The dataset is loaded and checked before anything is written. One process at a time
    trains a run: it holds the run folder's writer lock, and another process waits for it (`wait`, as sweep
    workers do) or stops with a ResultsError naming the holder. Checkpoints are written every
    `runtime.checkpoint_every` epochs, else every 5 minutes, and at the end. SIGINT / SIGTERM finish the current
    step, write a checkpoint of the last epoch boundary, mark the run interrupted and raise `Interrupted`.
    """
    runtime = runtime or Runtime()
    folder = RunFolder(run_path(runtime.results_root, config.run_id))
    if folder.has_result() and not force:
        return RunResult(folder.path, folder.read_summary(), skipped=True)
    device = runtime.torch_device()
    torch.set_num_threads(runtime.threads or default_threads(batch_size=config.batch_size, workers=runtime.workers))
    data_root = resolve_data_dir(runtime.data_dir)
    data = load_dataset(config.dataset, data_root, subset=config.subset)
    with folder.writer_lock(wait=wait):
        if folder.has_result() and not force:  # another process finished it while this one waited
            return RunResult(folder.path, folder.read_summary(), skipped=True)
        return _train_holding_lock(
            config,
            runtime,
            folder,
            data,
            device=device,
            data_root=data_root,
            on_epoch=on_epoch,
            on_step=on_step,
            force=force,
        )


def _train_holding_lock(
    config: TrainConfig,
    runtime: Runtime,
    folder: RunFolder,
    data: Dataset,
    *,
    device: torch.device,
    data_root: Path,
    on_epoch: EpochCallback | None,
    on_step: StepCallback | None,
    force: bool,
) -> RunResult:
    trainer = Trainer(config, data, device, step=runtime.step)
    records: list[EpochRecord] = []
    earlier_wall_s = 0.0  # the wall time of earlier stretches of this run, up to the checkpoint resumed from
    if not force and folder.checkpoint_path.is_file():
        state = folder.read_checkpoint(config.run_id)
        trainer.load_state_dict(state["trainer"])
        records = [EpochRecord(**row) for row in state["records"]]
        earlier_wall_s = float(state.get("wall_s", sum(r.wall_s for r in records)))
        folder.resume(records)
    else:
        folder.start(config_document(config, runtime, device, data_root))
    started = time.perf_counter()

    def checkpoint(snapshot: dict[str, Any]) -> None:
        folder.write_checkpoint(
            {
                "run_id": config.run_id,
                "epoch": len(records),
                "trainer": snapshot,
                "records": [asdict(r) for r in records],
                "wall_s": earlier_wall_s + time.perf_counter() - started,
            }
        )

    last_saved = time.monotonic()
    snapshot = trainer.state_dict()
    with stop_on_signals() as stop:
        trainer.stop = stop
        trainer.on_step = on_step
        try:
            for epoch in range(len(records) + 1, config.epochs + 1):
                record = trainer.run_epoch(epoch, last=epoch == config.epochs)
                folder.append_epoch(record)
                records.append(record)
                snapshot = trainer.state_dict()
                every = runtime.checkpoint_every
                due = epoch % every == 0 if every else time.monotonic() - last_saved >= CHECKPOINT_INTERVAL_S
                if due and epoch < config.epochs:
                    checkpoint(snapshot)
                    last_saved = time.monotonic()
                if on_epoch is not None:
                    on_epoch(record)
                if stop.requested:
                    raise _StopNow
        except _StopNow:
            with stop.shield():  # a second signal now would leave the run without its marker
                checkpoint(snapshot)
                folder.mark_interrupted(signal_name=stop.signal_name, epochs_done=len(records))
            raise Interrupted(stop.signal_name, stop.exit_status, str(folder.path)) from None
        finally:
            trainer.stop = None
            trainer.on_step = None
    checkpoint(snapshot)
    summary = summarize(config, records, n_train=trainer.n_train, wall_s=earlier_wall_s + time.perf_counter() - started)
    if trainer.ema is not None:
        # The average only changes what is evaluated, so the trained parameters are exactly those of the same run
        # without it: their error is the paired reading of --ema-decay's effect (docs/fidelity.md).
        summary["final_error_raw_pct"] = trainer.raw_test_error_pct()
    folder.finish(summary)
    return RunResult(folder.path, summary, records)
