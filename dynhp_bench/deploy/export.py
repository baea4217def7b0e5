"""The final pruned network of a run, shipped: safetensors or ONNX, checked against PyTorch.

What is exported is the network as the run evaluated it last: the checkpoint's weights (the trainer
skips pruning after the last epoch, so they are the evaluated ones), each layer's deterministic
evaluation gates folded into its weights (W·diag(z)), and every input unit whose folded weights are all
zero dropped (a unit gated to exactly 0 contributes exactly 0), so SP's switched-off neurons leave the
file too. Negligible weights (|w| < 1e-20: weight decay leaves the weights of always-black pixels
decaying towards the subnormal floats) are flushed to zero first: they change no logit visibly, but
they and their subnormal products send CPU arithmetic down a slow path (tens of times slower inference
in our measurements). The graph takes the full image as raw pixel values 0..255 (float32, 784 per
MNIST image), selects the pixels that survived pruning and divides by 255 (what `data.py` does), so a
caller feeds images as they are stored.

Both formats hold the same tensors (``input_index``, ``layers.L.weight``, ``layers.L.bias``) and the
same JSON document (architecture, kept pixels, provenance), plus a SHA-256 of the export serialised
without it: a tampered or truncated file is a one-line error naming it. Loading a safetensors export
unpickles nothing. ONNX is a graph built node by node (Gather, Div, Gemm, Relu): exact, small, and in
need of no exporter (torch's default one wants `onnxscript`; its TorchScript one is deprecated).

`export_run` verifies before it writes: on the whole test set the export's logits (ONNX Runtime's for
ONNX, the safetensors tensors' through PyTorch otherwise) agree with the run's network to 1e-4 and its
test error equals the run's ``final_error_pct``; then the file is written atomically.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dynhp_bench import __version__
from dynhp_bench.data.datasets import load_dataset, resolve_data_dir
from dynhp_bench.errors import ResultsError, SettingsError
from dynhp_bench.memory import weight_count
from dynhp_bench.models.mlp import GatedMLP
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training.run_folder import CONFIG_FILE, RunFolder, write_bytes_atomic
from dynhp_bench.training.trainer import EVAL_CHUNK

FORMATS = ("safetensors", "onnx")
FILE_NAMES = {"safetensors": "model.safetensors", "onnx": "model.onnx"}
DOCUMENT_KEY = "dynhp_bench"
DIGEST_KEY = "sha256"
EXPORT_FORMAT = "dynhp-bench-export"
EXPORT_VERSION = 1
PIXEL_SCALE = 255.0
LOGIT_TOLERANCE = 1e-4
# Weight decay leaves the weights of always-black pixels decaying geometrically towards 0. Below 1e-20 a
# weight times any activation short of 1e3 is 1e-17 at most, ten orders under a float32 logit's last bit,
# but a weight under 1.2e-38 (subnormal), or one whose products are, sends CPU arithmetic down a slow path.
NEGLIGIBLE_BELOW = 1e-20
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # what opset 17 needs; older runtimes load it too
EXTRA_HINT = "pip install 'dynhp-bench[export]'"


@dataclass(frozen=True)
class FinalNetwork:
    """A complete run's network as it was last evaluated, with what identifies the run."""

    run_dir: Path
    config: TrainConfig
    net: GatedMLP
    input_index: torch.Tensor
    final_error_pct: float
    training_versions: dict[str, Any]

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The run's own evaluation (deterministic gates, test-set chunks) of raw pixels 0..255."""
        self.net.eval()
        gates = self.net.deterministic_gates()
        x = pixels.div(PIXEL_SCALE).index_select(1, self.input_index)
        return torch.cat([self.net(x[s : s + EVAL_CHUNK], gates) for s in range(0, x.shape[0], EVAL_CHUNK)])


@dataclass(frozen=True)
class ExportedNet:
    """The shipped network: kept pixel indices, folded weights and biases, and its JSON document."""

    input_index: torch.Tensor
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    document: dict[str, Any]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each layer."""
        return [(int(w.shape[1]), int(w.shape[0])) for w in self.weights]

    @property
    def parameters(self) -> int:
        """Weights plus biases."""
        return weight_count(self.shapes)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors by the names both formats use."""
        named = {"input_index": self.input_index}
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            named[f"layers.{layer}.weight"] = weight
            named[f"layers.{layer}.bias"] = bias
        return named

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits of raw pixels 0..255, shape (batch, input pixels), computed by PyTorch."""
        x = pixels.index_select(1, self.input_index).div_(PIXEL_SCALE)
        last = len(self.weights) - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = F.linear(x, weight, bias)
            if layer < last:
                x = F.relu(x)
        return x


def load_final_network(run_dir: Path) -> FinalNetwork:
    """Read a complete run's settings, summary and checkpoint (safely: tensors only) into its network."""
    folder = RunFolder(Path(run_dir))
    if not (folder.path / CONFIG_FILE).is_file():
        raise ResultsError(f"{folder.path} holds no {CONFIG_FILE}; expected a run folder OUT/runs/RUN_ID")
    if not folder.is_complete:
        raise ResultsError(f"run {folder.path} is not complete; expected a finished run (its final network)")
    document = folder.read_config()
    config = TrainConfig.from_dict(document["settings"])
    if config.arch != "mlp":
        raise ResultsError(f"run {folder.path} trained --arch {config.arch}; expected a run of --arch mlp (export "
                           "writes MLPs only)")  # fmt: skip
    if config.normalize:
        raise ResultsError(
            f"run {folder.path} normalised its images per channel (normalize = true), which an export does not "
            "hold yet; expected a run trained with --no-normalize"
        )
    summary = folder.read_summary()
    state = folder.read_checkpoint(config.run_id)
    trainer = state["trainer"]
    sizes = [config.shapes[0][0]] + [n_out for _, n_out in config.shapes]
    net = GatedMLP(sizes, gated=config.gated)
    params = list(net.parameters())
    saved = trainer["params"]
    if len(saved) != len(params) or any(s.dim() != p.dim() for s, p in zip(saved, params, strict=True)):
        raise ResultsError(f"checkpoint {folder.checkpoint_path} does not hold a {config.strategy} network")
    for param, value in zip(params, saved, strict=True):
        param.data = value.to(torch.float32)
    return FinalNetwork(
        run_dir=folder.path,
        config=config,
        net=net,
        input_index=trainer["input_index"].to(torch.int64),
        final_error_pct=float(summary["final_error_pct"]),
        training_versions=document.get("versions", {}),
    )


@torch.no_grad()
def fold(final: FinalNetwork) -> ExportedNet:
    """The evaluated network with gates folded in (W·diag(z)), negligible weights flushed to zero, and units
    whose folded weights are all zero dropped.

    Dropping runs from the last layer back: removing hidden unit j removes row j of the layer before,
    which can leave one of *its* inputs with no non-zero weight; that one goes too.
    """
    net = final.net
    gates = net.deterministic_gates()
    weights = [w * gates[i] if gates is not None else w.clone() for i, w in enumerate(net.weights)]
    negligible = [int(w.ne(0).logical_and(w.abs() < NEGLIGIBLE_BELOW).sum()) for w in weights]
    weights = [w.masked_fill(w.abs() < NEGLIGIBLE_BELOW, 0.0) for w in weights]
    biases = [b.clone() for b in net.biases]
    input_index = final.input_index.clone()
    dropped = [0] * len(weights)
    for layer in range(len(weights) - 1, -1, -1):
        keep = weights[layer].ne(0).any(0)
        dropped[layer] = int((~keep).sum())
        if dropped[layer] == 0:
            continue
        weights[layer] = weights[layer][:, keep]
        if layer == 0:
            input_index = input_index[keep]
        else:
            weights[layer - 1] = weights[layer - 1][keep]
            biases[layer - 1] = biases[layer - 1][keep]
    exported = ExportedNet(
        input_index.contiguous(),
        tuple(w.contiguous() for w in weights),
        tuple(b.contiguous() for b in biases),
        {},
    )
    document = _document(final, exported, dropped, negligible)
    return ExportedNet(exported.input_index, exported.weights, exported.biases, document)


def _document(final: FinalNetwork, exported: ExportedNet, dropped: list[int], negligible: list[int]) -> dict[str, Any]:
    config = final.config
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "architecture": {
            "kind": "mlp",
            "input": "pixels: float32 (batch, input_pixels), raw values 0..255",
            "input_pixels": int(config.shapes[0][0]),
            "pixel_scale": PIXEL_SCALE,
            "kept_pixels": [int(i) for i in exported.input_index],
            "layers": [list(s) for s in exported.shapes],
            "activation": "relu",
            "output": "logits: float32 (batch, classes)",
        },
        "provenance": {
            "run_id": config.run_id,
            "strategy": config.strategy,
            "dataset": config.dataset,
            "final_error_pct": final.final_error_pct,
            "settings": config.to_dict(),
            "gates_folded": config.gated,
            "negligible_weights_flushed": negligible,
            "units_dropped_as_zero": dropped,
            "training_versions": final.training_versions,
            "export_versions": {
                "dynhp_bench": __version__,
                "torch": torch.__version__,
                **{name: _version(name) for name in ("safetensors", "onnx")},
            },
        },
    }


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --- the two formats --------------------------------------------------------------------------------------------


def to_safetensors(exported: ExportedNet) -> bytes:
    """The safetensors file: tensors, the JSON document and the digest of the file written without it."""
    from safetensors.torch import save

    metadata = {DOCUMENT_KEY: json.dumps(exported.document, sort_keys=True)}
    digest = hashlib.sha256(save(exported.tensors(), metadata=metadata)).hexdigest()
    return save(exported.tensors(), metadata={**metadata, DIGEST_KEY: digest})


def from_safetensors(data: bytes, name: str) -> ExportedNet:
    """Read a safetensors export (no pickle); a truncated, tampered or foreign file is a ResultsError naming it."""
    from safetensors.torch import load, save

    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        tensors = load(data)
    except Exception as exc:  # struct, JSON and safetensors each raise their own type for a broken file
        raise ResultsError(f"export {name} is not a readable safetensors file ({_reason(exc)})") from None
    if DOCUMENT_KEY not in metadata or DIGEST_KEY not in metadata:
        raise ResultsError(f"export {name} is not a dynhp-bench export (no {DOCUMENT_KEY!r} metadata)")
    unsigned = save(tensors, metadata={DOCUMENT_KEY: metadata[DOCUMENT_KEY]})
    if hashlib.sha256(unsigned).hexdigest() != metadata[DIGEST_KEY]:
        raise ResultsError(f"export {name} was modified after it was written (its SHA-256 does not match)")
    return _assemble(tensors, json.loads(metadata[DOCUMENT_KEY]), name)


def to_onnx(exported: ExportedNet) -> bytes:
    """The ONNX model: Gather the kept pixels, divide by 255, then Gemm (+ Relu) per layer; digest in its metadata."""
    onnx, helper, numpy_helper = _onnx()
    initializers = [numpy_helper.from_array(t.numpy(), name) for name, t in exported.tensors().items()]
    initializers.append(numpy_helper.from_array(np.array(PIXEL_SCALE, dtype=np.float32), "pixel_scale"))
    nodes = [
        helper.make_node("Gather", ["pixels", "input_index"], ["kept"], axis=1),
        helper.make_node("Div", ["kept", "pixel_scale"], ["x0"]),
    ]
    last = len(exported.weights) - 1
    for layer in range(last + 1):
        out = "logits" if layer == last else f"h{layer}"
        nodes.append(
            helper.make_node("Gemm", [f"x{layer}", f"layers.{layer}.weight", f"layers.{layer}.bias"], [out], transB=1)
        )
        if layer < last:
            nodes.append(helper.make_node("Relu", [out], [f"x{layer + 1}"]))
    n_pixels = exported.document["architecture"]["input_pixels"]
    n_classes = exported.shapes[-1][1]
    graph = helper.make_graph(
        nodes,
        "dynhp_bench_mlp",
        [helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT, ["batch", n_pixels])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", n_classes])],
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="dynhp-bench",
        producer_version=__version__,
    )
    model.ir_version = ONNX_IR_VERSION
    helper.set_model_props(model, {DOCUMENT_KEY: json.dumps(exported.document, sort_keys=True)})
    onnx.checker.check_model(model)
    digest = hashlib.sha256(model.SerializeToString()).hexdigest()
    helper.set_model_props(model, {DOCUMENT_KEY: json.dumps(exported.document, sort_keys=True), DIGEST_KEY: digest})
    return model.SerializeToString()


def from_onnx(data: bytes, name: str) -> ExportedNet:
    """Read an ONNX export back into its tensors and document; a broken or tampered file is a ResultsError."""
    onnx, helper, numpy_helper = _onnx()
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf's DecodeError, onnx's ValidationError, …
        raise ResultsError(f"export {name} is not a readable ONNX model ({_reason(exc)})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if DOCUMENT_KEY not in props or DIGEST_KEY not in props:
        raise ResultsError(f"export {name} is not a dynhp-bench export (no {DOCUMENT_KEY!r} metadata)")
    helper.set_model_props(model, {DOCUMENT_KEY: props[DOCUMENT_KEY]})
    if hashlib.sha256(model.SerializeToString()).hexdigest() != props[DIGEST_KEY]:
        raise ResultsError(f"export {name} was modified after it was written (its SHA-256 does not match)")
    tensors = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    tensors.pop("pixel_scale", None)
    return _assemble(tensors, json.loads(props[DOCUMENT_KEY]), name)


def _assemble(tensors: dict[str, torch.Tensor], document: dict[str, Any], name: str) -> ExportedNet:
    if document.get("format") != EXPORT_FORMAT or document.get("version") != EXPORT_VERSION:
        raise ResultsError(f"export {name} has format {document.get('format')!r} version {document.get('version')!r}")
    layers = document["architecture"]["layers"]
    try:
        weights = tuple(tensors[f"layers.{i}.weight"] for i in range(len(layers)))
        biases = tuple(tensors[f"layers.{i}.bias"] for i in range(len(layers)))
        exported = ExportedNet(tensors["input_index"], weights, biases, document)
    except KeyError as exc:
        raise ResultsError(f"export {name} lacks the tensor {exc}") from None
    if exported.shapes != [tuple(s) for s in layers] or len(exported.input_index) != layers[0][0]:
        raise ResultsError(f"export {name} holds tensors whose shapes disagree with its architecture {layers}")
    return exported


def read_export(path: Path) -> tuple[ExportedNet, bytes]:
    """An export file (format from its suffix) and its bytes; anything wrong is a ResultsError naming it."""
    fmt = format_of(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ResultsError(f"cannot read export {path}: {exc.strerror or exc}") from None
    reader = from_onnx if fmt == "onnx" else from_safetensors
    return reader(data, str(path)), data


def format_of(path: Path) -> str:
    """The format of an export file, from its suffix."""
    suffix = Path(path).suffix.lstrip(".")
    if suffix not in FORMATS:
        raise SettingsError(f"{path} is not an export file; expected a name ending in .safetensors or .onnx")
    return suffix


def _onnx() -> Any:
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise SettingsError(f"the ONNX format needs the `onnx` package; {EXTRA_HINT}") from None
    return onnx, helper, numpy_helper


def onnx_session(data: bytes, *, threads: int) -> Any:
    """An ONNX Runtime CPU session of an ONNX export, with `threads` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SettingsError(f"running ONNX needs the `onnxruntime` package; {EXTRA_HINT}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


# --- verification and export ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """How an export's outputs compare with the run's network on the whole test set."""

    n_test: int
    max_abs_logit_diff: float
    error_pct: float
    final_error_pct: float

    @property
    def holds(self) -> bool:
        """Logits within `LOGIT_TOLERANCE` and the same test error as the run reported."""
        return self.max_abs_logit_diff <= LOGIT_TOLERANCE and self.error_pct == self.final_error_pct


def verify(final: FinalNetwork, data: bytes, fmt: str, pixels: torch.Tensor, labels: torch.Tensor) -> Verification:
    """Run the serialised export (ONNX Runtime for ONNX, PyTorch on the re-read tensors for safetensors)."""
    reference = final.logits(pixels)
    if fmt == "onnx":
        session = onnx_session(data, threads=torch.get_num_threads())
        chunks = [session.run(None, {"pixels": pixels[s : s + EVAL_CHUNK].numpy()})[0]
                  for s in range(0, pixels.shape[0], EVAL_CHUNK)]  # fmt: skip
        logits = torch.from_numpy(np.concatenate(chunks))
    else:
        shipped = from_safetensors(data, "the safetensors export")
        logits = torch.cat([shipped.logits(pixels[s : s + EVAL_CHUNK]) for s in range(0, pixels.shape[0], EVAL_CHUNK)])
    wrong = int((logits.argmax(1) != labels).sum())
    return Verification(
        n_test=int(labels.shape[0]),
        max_abs_logit_diff=float((logits - reference).abs().max()),
        error_pct=100.0 * wrong / labels.shape[0],
        final_error_pct=final.final_error_pct,
    )


def serialise(exported: ExportedNet, fmt: str) -> bytes:
    """The export's bytes in format `fmt`."""
    if fmt not in FORMATS:
        raise SettingsError(f"--format={fmt!r} is not known; expected one of {', '.join(FORMATS)}")
    return to_onnx(exported) if fmt == "onnx" else to_safetensors(exported)


@dataclass(frozen=True)
class ExportResult:
    """What `export_run` wrote and how it was checked."""

    path: Path
    file_bytes: int
    parameters: int
    exported: ExportedNet
    verification: Verification


def export_run(run_dir: Path, fmt: str, *, out: Path | None = None, data_dir: Path | None = None) -> ExportResult:
    """Export a complete run's final network in format `fmt`, verify it on the test set, then write it atomically.

    `out` defaults to RUN_DIR/model.safetensors or RUN_DIR/model.onnx. A failed check raises a
    ResultsError and writes nothing.
    """
    if fmt not in FORMATS:
        raise SettingsError(f"--format={fmt!r} is not known; expected one of {', '.join(FORMATS)}")
    final = load_final_network(run_dir)
    path = Path(out) if out is not None else final.run_dir / FILE_NAMES[fmt]
    exported = fold(final)
    data = serialise(exported, fmt)
    dataset = load_dataset(final.config.dataset, resolve_data_dir(data_dir))
    pixels = torch.round(dataset.test_x * PIXEL_SCALE)  # exact: data.py stores pixel / 255
    check = verify(final, data, fmt, pixels, dataset.test_y)
    if not check.holds:
        raise ResultsError(
            f"export of {final.run_dir} failed its check, nothing written: logits differ by up to "
            f"{check.max_abs_logit_diff:.3g} (allowed {LOGIT_TOLERANCE:g}) and the test error is "
            f"{check.error_pct:.2f} % where the run reported {check.final_error_pct:.2f} %"
        )
    write_bytes_atomic(path, data)
    return ExportResult(path, len(data), exported.parameters, exported, check)
