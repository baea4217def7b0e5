"""`dynhp-bench bench --inference`: the exported networks' size and speed under ONNX Runtime and PyTorch.

Each run's exports are the files `export` left in its folder (digest-checked), else the same bytes
built in memory; a dense network of the full shape runs beside them. Every call is timed on its own
and the median call is reported (with the fastest), per model and runtime, at batch 1 and batch 256.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynhp_bench.deploy.export import (
    FILE_NAMES,
    FORMATS,
    ExportedNet,
    FinalNetwork,
    fold,
    load_final_network,
    onnx_session,
    read_export,
    serialise,
    to_onnx,
    to_safetensors,
)
from dynhp_bench.models.mlp import GatedMLP
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training.run_folder import INFERENCE_FILE, write_json_atomic

INFERENCE_BATCH = 256


@dataclass(frozen=True)
class InferenceModel:
    """One model to time: a label, its export (from a file or built in memory) and its two files' sizes."""

    label: str
    strategy: str
    run_dir: Path | None
    exported: ExportedNet
    onnx_bytes: bytes
    safetensors_bytes: int
    source: str


def inference_model(run_dir: Path) -> InferenceModel:
    """A run's exports: the files in its folder where `export` wrote them (digest-checked), else built in memory."""
    final = load_final_network(run_dir)
    files = {fmt: final.run_dir / name for fmt, name in FILE_NAMES.items()}
    present = [fmt for fmt, path in files.items() if path.is_file()]
    blobs: dict[str, bytes] = {}
    built: ExportedNet | None = None
    for fmt in present:
        exported, blobs[fmt] = read_export(files[fmt])
        built = built or exported
    built = built or fold(final)
    for fmt in FORMATS:
        blobs.setdefault(fmt, serialise(built, fmt))
    source = "files" if len(present) == len(FORMATS) else "in memory" if not present else f"{present[0]} file"
    return InferenceModel(
        final.config.run_id, final.config.strategy, final.run_dir, built, blobs["onnx"], len(blobs["safetensors"]),
        source,
    )  # fmt: skip


def dense_reference(config: TrainConfig) -> InferenceModel:
    """An untrained dense network of the run's full shapes (its speed, not its weights, is what is compared)."""
    sizes = [config.shapes[0][0]] + [n_out for _, n_out in config.shapes]
    net = GatedMLP(sizes, gated=False, generator=torch.Generator().manual_seed(0))
    final = FinalNetwork(Path("."), TrainConfig(strategy="dense", dataset=config.dataset, hidden=config.hidden),
                         net, torch.arange(sizes[0]), float("nan"), {})  # fmt: skip
    exported = fold(final)
    label = "dense-" + "-".join(str(s) for s in sizes) + " (untrained)"
    return InferenceModel(label, "dense", None, exported, to_onnx(exported), len(to_safetensors(exported)), "in memory")


def time_inference(
    models: Sequence[InferenceModel],
    *,
    rounds: int = 3,
    calls_batch1: int = 300,
    calls_batch: int = 30,
    on_round: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Latency per image at batch 1 and images per second at batch 256, for every model under both runtimes.

    Every call is timed on its own and each case reports its median call (and its fastest, `_best`): on
    a shared machine a call of tens of microseconds is seldom the one preempted, where a whole round of
    them always is. Cases
    run interleaved round by round so what noise remains hits all alike. Inputs are random pixels: an
    MLP's time does not depend on them.
    """
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    n_pixels = max(m.exported.document["architecture"]["input_pixels"] for m in models)
    one = torch.randint(0, 256, (1, n_pixels), generator=generator).float()
    batch = torch.randint(0, 256, (INFERENCE_BATCH, n_pixels), generator=generator).float()
    cases: list[tuple[InferenceModel, str, Callable[[torch.Tensor], object]]] = []
    for model in models:
        session = onnx_session(model.onnx_bytes, threads=threads)
        cases.append((model, "onnxruntime", lambda x, s=session: s.run(None, {"pixels": x.numpy()})))
        cases.append((model, "pytorch", model.exported.logits))
    calls: dict[tuple[int, str], tuple[list[float], list[float]]] = {(id(m), r): ([], []) for m, r, _ in cases}
    for _, _, run in cases:  # warm-up: one-off costs (allocation, kernel choice) stay out of the timings
        for _ in range(20):
            run(one)
            run(batch)
    for round_ in range(rounds):
        for model, runtime, run in cases:
            for times, (x, n) in zip(
                calls[id(model), runtime], ((one, calls_batch1), (batch, calls_batch)), strict=True
            ):
                for _ in range(n):
                    started = time.perf_counter()
                    run(x)
                    times.append(time.perf_counter() - started)
        if on_round is not None:
            on_round(round_ + 1)
    rows = []
    for model, runtime, _ in cases:
        batch1_s, batch_s = (statistics.median(times) for times in calls[id(model), runtime])
        best1_s, best_s = (min(times) for times in calls[id(model), runtime])
        rows.append(
            {
                "model": model.label,
                "strategy": model.strategy,
                "runtime": runtime,
                "format": "onnx" if runtime == "onnxruntime" else "safetensors",
                "file_bytes": len(model.onnx_bytes) if runtime == "onnxruntime" else model.safetensors_bytes,
                "parameters": model.exported.parameters,
                "layers": " ".join(f"{i}-{o}" for i, o in model.exported.shapes),
                "latency_batch1_us": batch1_s * 1e6,
                "throughput_batch256_per_s": INFERENCE_BATCH / batch_s,
                "latency_batch1_us_best": best1_s * 1e6,
                "throughput_batch256_per_s_best": INFERENCE_BATCH / best_s,
                "threads": threads,
                "calls_batch1": rounds * calls_batch1,
                "calls_batch256": rounds * calls_batch,
                "source": model.source,
            }
        )
    return rows


def save_inference(model: InferenceModel, rows: Sequence[dict[str, Any]]) -> None:
    """Keep a run's measured rows beside its exports (RUN_DIR/inference.json), for `report`."""
    if model.run_dir is not None:
        write_json_atomic(model.run_dir / INFERENCE_FILE, [r for r in rows if r["model"] == model.label])
