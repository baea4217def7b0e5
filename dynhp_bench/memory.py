"""The paper's memory metric and the full training footprint.

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
from collections.abc import Sequence

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
