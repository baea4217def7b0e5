"""The paper's memory metric, the full training footprint and the per-epoch record.

Everything here is a pure function of layer shapes and batch sizes, so the paper's own numbers can be
checked by hand (see tests/test_metrics.py):

* model bytes = 4 · (weights + biases of the network as it is in that epoch); gate parameters are not
  counted (they are bookkeeping of the method, not of the trained model). For a ResNet
  (`GatedNetwork.model_bytes`): 4 · (convolution weights + batch norms' γ and β + the Linear layer);
  batch norms' running statistics are not counted (they fold into the convolutions for inference);
* batch bytes = b · a sample's bytes, 4 × the values of one full input image (4 · 784 = 3,136 for MNIST and
  Fashion-MNIST, 4 · 3,072 = 12,288 for CIFAR-10: `sample_bytes`), labels not counted;
* "MB" = bytes / 1024 / 1000 (the paper's unit; it reproduces its 1.041 for the full MLP);
* training memory "MB" = Σ over epochs of the per-epoch memory, / 1000.
"""

from __future__ import annotations

import math
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields

BYTES_PER_FLOAT = 4

LayerShape = tuple[int, int]
"""(in_features, out_features) of one Linear layer."""


def layer_shapes(sizes: Sequence[int]) -> list[LayerShape]:
    """The (in, out) shape of each Linear layer of an MLP with these layer widths."""
    return [(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]


def weight_count(shapes: Sequence[LayerShape]) -> int:
    """Weights plus biases of the layers."""
    return sum(n_in * n_out + n_out for n_in, n_out in shapes)


def model_bytes(shapes: Sequence[LayerShape]) -> int:
    """The paper's model bytes: 4 · (weights + biases); gates are not counted."""
    return BYTES_PER_FLOAT * weight_count(shapes)


def sample_bytes(input_shape: Sequence[int]) -> int:
    """The bytes of one training sample in the paper's metric: 4 × the values of a full input image (channels ×
    rows × columns), whatever the pruned input width."""
    return BYTES_PER_FLOAT * math.prod(input_shape)


def batch_bytes(batch_size: int, sample_bytes_: int) -> int:
    """The paper's batch bytes: b · a sample's bytes (4 · b · 784 for MNIST)."""
    return batch_size * sample_bytes_


# The paper's training memory ("Training Memory (MBytes)", Tables 2-3) is named and defined here once: every table,
# figure and terminal line uses these.
TRAINING_MEMORY_UNIT = "MB"
TRAINING_MEMORY_DEFINITION = (
    "Training memory (MB), the paper's: Σ over epochs of the per-epoch memory (model + batch, MB), / 1000."
)


def to_mb(n_bytes: float) -> float:
    """The paper's "MB": bytes / 1024 / 1000."""
    return n_bytes / 1024 / 1000


def memory_mb(model_bytes_: int, batch_bytes_: int) -> float:
    """Per-epoch memory occupation (MO) in the paper's MB."""
    return to_mb(model_bytes_ + batch_bytes_)


def training_memory_mb(per_epoch_memory_mb: Sequence[float]) -> float:
    """The paper's training memory (Tables 2-3): the sum of per-epoch memory over all epochs, / 1000."""
    return sum(per_epoch_memory_mb) / 1000


def batch_cap(budget_bytes: int, model_bytes_: int, sample_bytes_: int) -> int:
    """Eq. 9-10: the largest batch the memory left by the model holds, ⌊(C − N_i) / sample bytes⌋ (4·784 for
    MNIST)."""
    return max(0, (budget_bytes - model_bytes_) // sample_bytes_)


def trainable_parameters(shapes: Sequence[LayerShape], *, gated: bool) -> int:
    """Trainable parameters including the gates' log α (one per input neuron of each layer)."""
    return weight_count(shapes) + (sum(n_in for n_in, _ in shapes) if gated else 0)


def footprint_bytes(shapes: Sequence[LayerShape], batch_size: int, *, gated: bool, masked: bool = False) -> int:
    """What training really holds, which the paper's metric leaves out.

    Parameters (gates included) four times over (values, gradients, Adam's two moments), the activations
    autograd keeps for the backward pass (each layer's input and output, plus the gated input when gated),
    the batch as it is fed (pruned input width) with its int64 labels, and, with `masked`, one byte per
    weight for the pruning masks (bool).
    """
    params = trainable_parameters(shapes, gated=gated)
    per_sample_activations = sum((2 * n_in if gated else n_in) + n_out for n_in, n_out in shapes)
    batch = batch_size * (shapes[0][0] * BYTES_PER_FLOAT + 8)
    masks = sum(n_in * n_out for n_in, n_out in shapes) if masked else 0
    return BYTES_PER_FLOAT * (4 * params + batch_size * per_sample_activations) + batch + masks


def epoch_flops(shapes: Sequence[LayerShape], n_samples: int) -> int:
    """Forward + backward FLOPs of one epoch: 6 · multiply-adds per sample (2 forward, 4 backward)."""
    return 6 * n_samples * sum(n_in * n_out for n_in, n_out in shapes)


def peak_rss_bytes() -> int:
    """This process's peak resident memory as the platform reports it (0 where it reports none).

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own memory (ru_maxrss
    would carry over a parent's peak through fork and exec). Elsewhere: ru_maxrss.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass(frozen=True)
class EpochRecord:
    """One row of `epochs.csv`; the field names are the CSV columns, in this order.

    `active_k` counts the neurons physically held by gated layer k (its inputs: the input values, 784 for
    MNIST, then the hidden units; for a ResNet, the inner channels held in stage k + 1, summed over its blocks:
    `GatedNetwork.held_units`); `expected_active_k` is Σ_j a_j, the epoch's activation rates summed (SP's "virtual"
    neurons of Figure 1). Batch, model and memory columns describe the network as it was trained in
    this epoch, before the pruning at its end; `nonzero_params` counts its non-zero weights and biases
    as evaluated (unstructured sparsity, beside the held `model_bytes`). `validation_loss` is the mean
    cross-entropy on the validation split (NaN without one).
    """

    epoch: int
    strategy: str
    dataset: str
    seed: int
    batch_size: int
    train_loss: float
    train_penalty: float
    test_error_pct: float
    validation_loss: float
    active_0: int
    active_1: int
    active_2: int
    expected_active_0: float
    expected_active_1: float
    expected_active_2: float
    model_bytes: int
    batch_bytes: int
    memory_mb: float
    model_size_mb: float
    trainable_params: int
    nonzero_params: int
    footprint_bytes: int
    variance_ratio: float
    batch_cap: int | None
    steps: int
    wall_s: float
    peak_rss_bytes: int

    @classmethod
    def columns(cls) -> list[str]:
        """The CSV header."""
        return [f.name for f in fields(cls)]

    def row(self) -> list[object]:
        """The CSV row, in `columns()` order."""
        return [getattr(self, name) for name in self.columns()]


TIMING_COLUMNS = ("wall_s", "peak_rss_bytes")
"""Columns that vary between two identical runs (everything else is reproducible for a seed)."""
