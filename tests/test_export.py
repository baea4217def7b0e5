"""Exports: the shipped network computes what the run evaluated, in both formats, and broken files are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dynhp_bench.cli.commands import main
from dynhp_bench.data.datasets import load_dataset
from dynhp_bench.deploy import export
from dynhp_bench.errors import ResultsError
from dynhp_bench.models.mlp import GatedMLP
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training.trainer import Runtime, train

STRATEGIES = ("dense", "sp", "hp", "dynhp")


@pytest.fixture(scope="module")
def runs(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Smoke-trained runs of every strategy on the synthetic data (γ = 0.8 so HP / DynHP remove units)."""
    out = tmp_path_factory.mktemp("results")
    runtime = Runtime(data_dir=synthetic_root, results_root=out, threads=1, device="cpu")
    extra = {"hp": {"gamma": 0.8}, "dynhp": {"gamma": 0.8}}
    configs = {
        key: TrainConfig(strategy=key, profile="smoke", epochs=3, subset=256, batch_size=32, **extra.get(key, {}))
        for key in STRATEGIES
    }
    return {key: train(config, runtime).run_dir for key, config in configs.items()}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def _raw_test_pixels(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("mnist", root)
    return torch.round(data.test_x * 255), data.test_y


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_every_strategy_exports_and_the_round_trip_reproduces_the_evaluation(
    runs: dict[str, Path], synthetic_root: Path, strategy: str, fmt: str
) -> None:
    run_dir = runs[strategy]
    result = export.export_run(run_dir, fmt, data_dir=synthetic_root)
    assert result.path == run_dir / export.FILE_NAMES[fmt] and result.path.stat().st_size == result.file_bytes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result.verification.error_pct == summary["final_error_pct"]

    shipped, data = export.read_export(result.path)
    final = export.load_final_network(run_dir)
    pixels, labels = _raw_test_pixels(synthetic_root)
    reference = final.logits(pixels)
    if fmt == "onnx":
        session = export.onnx_session(data, threads=1)
        logits = torch.from_numpy(session.run(None, {"pixels": pixels.numpy()})[0])
    else:
        logits = shipped.logits(pixels)
    assert float((logits - reference).abs().max()) <= export.LOGIT_TOLERANCE
    wrong = int((logits.argmax(1) != labels).sum())
    assert 100.0 * wrong / len(labels) == summary["final_error_pct"]
    # The graph selects the surviving pixels itself; the metadata names them.
    kept = shipped.document["architecture"]["kept_pixels"]
    assert kept == shipped.input_index.tolist() and set(kept) <= set(final.input_index.tolist())
    assert shipped.document["provenance"]["run_id"] == run_dir.name
    assert shipped.parameters == sum(i * o + o for i, o in shipped.shapes)


def test_hard_pruned_units_are_gone_from_the_export(runs: dict[str, Path], synthetic_root: Path) -> None:
    result = export.export_run(runs["hp"], "safetensors", data_dir=synthetic_root)
    active = json.loads((runs["hp"] / "summary.json").read_text())["active_final"]
    dropped = result.exported.document["provenance"]["units_dropped_as_zero"]
    assert [i for i, _ in result.exported.shapes] == [a - d for a, d in zip(active, dropped, strict=True)]
    assert result.exported.shapes[0][0] < 784, "γ = 0.8 removes pixels within three epochs"


def _tiny_net() -> GatedMLP:
    generator = torch.Generator().manual_seed(3)
    net = GatedMLP([6, 4, 3, 2], generator=generator)
    with torch.no_grad():
        for log_alpha in net.log_alphas:
            log_alpha.fill_(1.0)  # evaluation gate sigmoid(1)·1.2 − 0.1 ≈ 0.777
        net.log_alphas[0][1] = -5.0  # pixel 1 gated to exactly 0
        net.log_alphas[1][2] = -5.0  # hidden unit 2 of layer 1 gated to exactly 0
        net.weights[0][:, 4] = 0.0
        net.weights[0][2, 4] = 1e-40  # pixel 4 feeds only hidden unit 2 (a subnormal weight)
        net.weights[0][0, 5] = 3e-39  # one subnormal weight of a live pixel
        net.weights[0][1, 5] = 4e-25  # and one negligible normal one
        net.weights[0][3, 5] = 2e-20  # folded (· 0.777), still above the threshold: kept
    return net


def test_fold_drops_exactly_the_zero_gated_units_and_what_only_they_fed() -> None:
    net = _tiny_net()
    final = export.FinalNetwork(Path("."), TrainConfig(strategy="sp"), net, torch.arange(6), math.nan, {})
    folded = export.fold(final)
    # Pixel 1 (gate 0), hidden unit 2 (gate 0), then pixel 4 (its only non-zero weight was into unit 2).
    assert folded.input_index.tolist() == [0, 2, 3, 5]
    assert folded.shapes == [(4, 3), (3, 3), (3, 2)]
    assert folded.document["provenance"]["units_dropped_as_zero"] == [2, 1, 0]
    assert folded.document["provenance"]["negligible_weights_flushed"] == [3, 0, 0]
    with torch.no_grad():
        gates = net.deterministic_gates()
        assert gates is not None and float(gates[0][1]) == 0.0 and 0.77 < float(gates[0][0]) < 0.78
        expected = net.weights[0][[0, 1, 3], :][:, [0, 2, 3, 5]] * gates[0][[0, 2, 3, 5]]
    expected[0, 3] = expected[1, 3] = 0.0  # 3e-39 · gate and 4e-25 · gate, flushed
    assert 1e-20 < float(expected[2, 3]) < 2e-20
    torch.testing.assert_close(folded.weights[0], expected, rtol=0, atol=0)
    pixels = torch.randint(0, 256, (50, 6), generator=torch.Generator().manual_seed(1)).float()
    torch.testing.assert_close(folded.logits(pixels), final.logits(pixels), rtol=0, atol=1e-6)


def test_onnx_graph_is_gather_div_and_gemm_relu_per_layer() -> None:
    import onnx

    net = _tiny_net()
    final = export.FinalNetwork(Path("."), TrainConfig(strategy="sp"), net, torch.arange(6), math.nan, {})
    model = onnx.load_from_string(export.to_onnx(export.fold(final)))
    assert [n.op_type for n in model.graph.node] == ["Gather", "Div", "Gemm", "Relu", "Gemm", "Relu", "Gemm"]
    assert [i.name for i in model.graph.input] == ["pixels"] and [o.name for o in model.graph.output] == ["logits"]


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # one byte in the middle: inside the first layer's weights in both formats
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("how", ["truncated", "tampered"])
def test_a_broken_export_is_refused_naming_the_file(
    runs: dict[str, Path], synthetic_root: Path, tmp_path: Path, fmt: str, how: str
) -> None:
    path = tmp_path / export.FILE_NAMES[fmt]
    export.export_run(runs["hp"], fmt, out=path, data_dir=synthetic_root)
    export.read_export(path)  # intact: reads
    _corrupt(path, how)
    with pytest.raises(ResultsError, match="modified after it was written" if how == "tampered" else "not a readable"):
        export.read_export(path)
    try:
        export.read_export(path)
    except ResultsError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


def test_a_tampered_export_in_a_run_folder_is_one_line_and_exit_2(
    runs: dict[str, Path], synthetic_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = runs["sp"]
    code, _, err = _run(["export", str(run_dir), "--format", "onnx", "--data-dir", str(synthetic_root)], capsys)
    assert code == 0, err
    _corrupt(run_dir / "model.onnx", "tampered")
    try:
        code, out, err = _run(["bench", "--inference", str(run_dir), "--repeats", "1", "--threads", "1"], capsys)
    finally:
        (run_dir / "model.onnx").unlink()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and str(run_dir / "model.onnx") in lines[0], err
    assert "Traceback" not in out + err


def test_a_failed_check_is_an_error_and_writes_nothing(
    runs: dict[str, Path], synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A copy of the HP run whose summary claims a test error the network does not have.
    run_dir = tmp_path / "runs" / runs["hp"].name
    run_dir.mkdir(parents=True)
    for file in runs["hp"].iterdir():
        if file.suffix in (".json", ".pt", ".csv") or file.name == "COMPLETE":
            (run_dir / file.name).write_bytes(file.read_bytes())
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["final_error_pct"] += 1.0
    (run_dir / "summary.json").write_text(json.dumps(summary))
    before = sorted(p.name for p in run_dir.iterdir())
    code, _, err = _run(["export", str(run_dir), "--format", "onnx", "--data-dir", str(synthetic_root)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "failed its check, nothing written" in lines[0], err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_an_unfinished_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text("{}")
    code, _, err = _run(["export", str(tmp_path)], capsys)
    assert code == 2 and "is not complete" in err


def test_inference_bench_times_each_model_under_both_runtimes_beside_a_dense_one(
    runs: dict[str, Path], synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = runs["hp"]
    export.export_run(run_dir, "onnx", data_dir=synthetic_root)
    code, _, err = _run(
        ["bench", "--inference", str(run_dir), "--repeats", "1", "--threads", "1", "--out", str(tmp_path)], capsys
    )
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "bench" / "inference.csv")
    assert sorted(zip(frame["strategy"], frame["runtime"], strict=True)) == [
        ("dense", "onnxruntime"), ("dense", "pytorch"), ("hp", "onnxruntime"), ("hp", "pytorch"),
    ]  # fmt: skip
    hp = frame[frame["strategy"] == "hp"].set_index("runtime")
    assert hp.loc["onnxruntime", "file_bytes"] == (run_dir / "model.onnx").stat().st_size
    shipped, _ = export.read_export(run_dir / "model.onnx")
    assert (hp["parameters"] == shipped.parameters).all()
    dense = frame[frame["strategy"] == "dense"]
    assert (dense["parameters"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10).all()
    assert (frame["latency_batch1_us"] > 0).all() and np.isfinite(frame["throughput_batch256_per_s"]).all()
    # `report` picks the measurements up from the run folder.
    code, _, err = _run(["report", "--results", str(run_dir.parent.parent), "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "r" / "inference.csv")
    assert sorted(table["runtime"]) == ["onnxruntime", "pytorch"] and set(table["run_id"]) == {run_dir.name}
