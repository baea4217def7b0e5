"""The per-epoch record of a run (one row of `epochs.csv`) and the process's peak memory it holds."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, fields


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
